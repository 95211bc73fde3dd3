//! GGUF v2/v3 reader: header, typed metadata, tensor infos, aligned data section
//! (format: ggml's docs/gguf.md). Little-endian files only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::dequant::GgmlType;
use crate::error::{BackboneError, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
const ALIGNMENT_KEY: &str = "general.alignment";

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<MetadataValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetadataValue {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            // Via the shortest decimal form, so an f32 1e-5 reads as 1e-5 and not 9.9999997e-6.
            Self::F32(v) => v.to_string().parse().ok(),
            Self::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetadataValue]> {
        match self {
            Self::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (innermost) dimension.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Row-major shape, outermost first (PyTorch order: `[rows, cols]` for a matrix).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }
}

/// An open GGUF file (memory-mapped).
pub struct GgufFile {
    path: PathBuf,
    map: memmap2::Mmap,
    pub version: u32,
    pub metadata: BTreeMap<String, MetadataValue>,
    pub tensors: Vec<GgufTensorInfo>,
    data_start: usize,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            format!(
                "truncated file: {what} needs {n} bytes at offset {} but the file has {}",
                self.at,
                self.bytes.len()
            )
        })?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        Ok(self.take(N, what)?.try_into().expect("length checked"))
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let len = self.u64(what)?;
        let len = usize::try_from(len).map_err(|_| format!("{what}: length {len} does not fit in memory"))?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }

    fn value(&mut self, kind: u32, what: &str, depth: usize) -> std::result::Result<MetadataValue, String> {
        Ok(match kind {
            0 => MetadataValue::U8(self.array::<1>(what)?[0]),
            1 => MetadataValue::I8(self.array::<1>(what)?[0] as i8),
            2 => MetadataValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => MetadataValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => MetadataValue::U32(self.u32(what)?),
            5 => MetadataValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => MetadataValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => MetadataValue::Bool(self.array::<1>(what)?[0] != 0),
            8 => MetadataValue::String(self.string(what)?),
            9 if depth == 0 => {
                let item_kind = self.u32(what)?;
                let count = self.u64(what)?;
                // Every item takes at least one byte: a count beyond the file is corrupt, not a huge allocation.
                if count > (self.bytes.len() - self.at) as u64 {
                    return Err(format!("{what}: array of {count} items is longer than the rest of the file"));
                }
                let items = (0..count)
                    .map(|_| self.value(item_kind, what, depth + 1))
                    .collect::<std::result::Result<_, _>>()?;
                MetadataValue::Array(items)
            }
            9 => return Err(format!("{what}: nested arrays are not supported")),
            10 => MetadataValue::U64(self.u64(what)?),
            11 => MetadataValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => MetadataValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => return Err(format!("{what}: unknown metadata value type {other}")),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| BackboneError::io(path, e))?;
        // SAFETY: read-only map of a file that is not modified while it is read.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| BackboneError::io(path, e))?;
        let err = |reason: String| BackboneError::Checkpoint { path: path.to_path_buf(), reason };
        let (version, metadata, tensors, data_start) = parse(&map).map_err(err)?;
        let this = Self { path: path.to_path_buf(), map, version, metadata, tensors, data_start };
        this.check_tensor_bounds()?;
        Ok(this)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.metadata.get(key)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Reads a tensor as f32 values in row-major order (shape from [`GgufTensorInfo::shape`]).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| BackboneError::MissingTensor { name: name.to_string(), expected: vec![] })?;
        let size = info.ggml_type.byte_size(info.elements()).ok_or_else(|| BackboneError::UnsupportedDtype {
            name: name.to_string(),
            dtype: format!("{} (GGUF import supports F32, F16, BF16, Q8_0, Q4_0, Q4_1)", info.ggml_type.name()),
        })?;
        let start = self.data_start + info.offset as usize;
        Ok(info.ggml_type.dequantize(&self.map[start..start + size]))
    }

    /// Every tensor of a supported type must lie inside the file.
    fn check_tensor_bounds(&self) -> Result<()> {
        for t in &self.tensors {
            if let Some(size) = t.ggml_type.byte_size(t.elements()) {
                let end = (self.data_start as u64).checked_add(t.offset).and_then(|s| s.checked_add(size as u64));
                if end.is_none_or(|end| end > self.map.len() as u64) {
                    return Err(BackboneError::Checkpoint {
                        path: self.path.clone(),
                        reason: format!(
                            "truncated file: tensor `{}` ({} bytes at data offset {}) ends past the end of the file",
                            t.name, size, t.offset
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

type Parsed = (u32, BTreeMap<String, MetadataValue>, Vec<GgufTensorInfo>, usize);

fn parse(bytes: &[u8]) -> std::result::Result<Parsed, String> {
    let mut c = Cursor { bytes, at: 0 };
    if c.take(4, "magic")? != MAGIC {
        return Err("not a GGUF file (bad magic)".into());
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(format!(
            "GGUF version {version} is not supported (2 and 3 are; version 1 and big-endian files are not)"
        ));
    }
    let tensor_count = c.u64("tensor count")?;
    let kv_count = c.u64("metadata count")?;
    let mut metadata = BTreeMap::new();
    for i in 0..kv_count {
        let key = c.string(&format!("metadata key {i}"))?;
        let kind = c.u32(&key)?;
        let value = c.value(kind, &key, 0)?;
        metadata.insert(key, value);
    }
    let mut tensors = Vec::new();
    for i in 0..tensor_count {
        let name = c.string(&format!("tensor name {i}"))?;
        let n_dims = c.u32(&name)?;
        if n_dims > 4 {
            return Err(format!("tensor `{name}` has {n_dims} dimensions (ggml allows at most 4)"));
        }
        let dims = (0..n_dims).map(|_| c.u64(&name)).collect::<std::result::Result<Vec<_>, _>>()?;
        let ggml_type = GgmlType::from_id(c.u32(&name)?);
        let offset = c.u64(&name)?;
        tensors.push(GgufTensorInfo { name, dims, ggml_type, offset });
    }
    let alignment = metadata.get(ALIGNMENT_KEY).and_then(MetadataValue::as_u64).unwrap_or(DEFAULT_ALIGNMENT);
    if alignment == 0 {
        return Err(format!("{ALIGNMENT_KEY} is 0"));
    }
    let data_start = (c.at as u64).div_ceil(alignment) * alignment;
    Ok((version, metadata, tensors, data_start as usize))
}
