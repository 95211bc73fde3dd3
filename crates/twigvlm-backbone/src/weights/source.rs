//! Checkpoint files as one lazily-read name → tensor map: safetensors (single or sharded with
//! `model.safetensors.index.json`) and PyTorch pickles (`pytorch_model*.bin`, sharded with
//! `pytorch_model.bin.index.json`). Data is read and converted to f32 only when a tensor is fetched.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::DType;
use safetensors::{Dtype as StDtype, SafeTensors};

use super::NamedTensor;
use crate::error::{BackboneError, Result};

type Reader = Box<dyn Fn() -> std::result::Result<Vec<f32>, String>>;

/// One tensor of a checkpoint, not yet read.
pub struct RawTensor {
    pub shape: Vec<usize>,
    /// The dtype as stored (for messages).
    pub dtype: String,
    /// The float type it is stored in: f16, bf16, or f32 for any other.
    pub float_dtype: DType,
    /// The file it lives in (for messages).
    pub file: PathBuf,
    read: Reader,
}

impl RawTensor {
    /// Reads the tensor and converts it to f32 (row-major).
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        (self.read)().map_err(|reason| {
            if reason.starts_with(UNSUPPORTED_DTYPE) {
                BackboneError::UnsupportedDtype { name: name.to_string(), dtype: self.dtype.clone() }
            } else {
                BackboneError::Checkpoint { path: self.file.clone(), reason: format!("tensor `{name}`: {reason}") }
            }
        })
    }
}

const UNSUPPORTED_DTYPE: &str = "unsupported dtype";

/// All tensors of one checkpoint (possibly several files).
#[derive(Default)]
pub struct TensorSource {
    tensors: BTreeMap<String, RawTensor>,
    /// The shard a sharded checkpoint's index names for each tensor: a copy of a tensor in
    /// another shard is not the one the checkpoint means (the demo model's tuned layers live in
    /// their own shard beside the language model's full one).
    indexed_file: HashMap<String, PathBuf>,
}

/// Weight file names, in the order they are looked for in a model directory.
const SAFETENSORS_SINGLE: &str = "model.safetensors";
const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";
const PYTORCH_SINGLE: &str = "pytorch_model.bin";
const PYTORCH_INDEX: &str = "pytorch_model.bin.index.json";

impl TensorSource {
    /// Opens every weight file of a model directory.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let mut source = Self::default();
        if dir.join(SAFETENSORS_INDEX).is_file() {
            for shard in source.read_index(dir, SAFETENSORS_INDEX)? {
                source.add_safetensors(&shard)?;
            }
        } else if dir.join(SAFETENSORS_SINGLE).is_file() {
            source.add_safetensors(&dir.join(SAFETENSORS_SINGLE))?;
        } else if dir.join(PYTORCH_INDEX).is_file() {
            for shard in source.read_index(dir, PYTORCH_INDEX)? {
                source.add_pytorch(&shard)?;
            }
        } else if dir.join(PYTORCH_SINGLE).is_file() {
            source.add_pytorch(&dir.join(PYTORCH_SINGLE))?;
        } else {
            return Err(BackboneError::NoWeights { dir: dir.to_path_buf() });
        }
        tracing::debug!(tensors = source.len(), dir = %dir.display(), "opened checkpoint");
        Ok(source)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&RawTensor> {
        self.tensors.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Adds one safetensors file (memory-mapped; tensors are copied out on read).
    pub fn add_safetensors(&mut self, path: &Path) -> Result<()> {
        let file = std::fs::File::open(path).map_err(|e| BackboneError::io(path, e))?;
        // SAFETY: the map is read-only and the checkpoint is not expected to change while loading.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| BackboneError::io(path, e))?;
        let map = Arc::new(map);
        let (header_len, metadata) = SafeTensors::read_metadata(&map[..])
            .map_err(|e| BackboneError::Checkpoint { path: path.to_path_buf(), reason: e.to_string() })?;
        let data_start = header_len + 8;
        for (name, info) in metadata.tensors() {
            let (begin, end) = info.data_offsets;
            let (map, dtype) = (Arc::clone(&map), info.dtype);
            let count: usize = info.shape.iter().product();
            let read: Reader = Box::new(move || {
                let bytes = map
                    .get(data_start + begin..data_start + end)
                    .ok_or_else(|| "data offsets point past the end of the file (truncated?)".to_string())?;
                decode_le(bytes, st_dtype(dtype)?, count)
            });
            let float_dtype = st_dtype(info.dtype).map_or(DType::F32, FloatKind::dtype);
            self.insert(name, info.shape.clone(), format!("{:?}", info.dtype), float_dtype, path, read);
        }
        Ok(())
    }

    /// Adds one safetensors file whose tensors replace those of the same names already added (an
    /// index naming another file for them included): trained replacements of a checkpoint's parts.
    pub fn override_with_safetensors(&mut self, path: &Path) -> Result<()> {
        let mut replacements = Self::default();
        replacements.add_safetensors(path)?;
        for (name, tensor) in replacements.tensors {
            self.indexed_file.remove(&name);
            self.tensors.insert(name, tensor);
        }
        Ok(())
    }

    /// Adds tensors held in memory (a module's parameters, as [`super::hf_tensors`] exports them);
    /// `origin` names where they came from in messages.
    pub fn add_in_memory(&mut self, tensors: Vec<NamedTensor>, origin: &Path) {
        for (name, shape, values) in tensors {
            let values = Arc::new(values);
            let read: Reader = Box::new(move || Ok(values.as_ref().clone()));
            self.insert(name, shape, "F32".to_string(), DType::F32, origin, read);
        }
    }

    /// Adds one PyTorch pickle checkpoint through burn-store's reader.
    pub fn add_pytorch(&mut self, path: &Path) -> Result<()> {
        let reader = burn_store::pytorch::PytorchReader::new(path)
            .map_err(|e| BackboneError::Checkpoint { path: path.to_path_buf(), reason: e.to_string() })?;
        for (name, snapshot) in reader.into_tensors() {
            let shape = snapshot.shape.to_vec();
            let (dtype, snapshot_dtype) = (format!("{:?}", snapshot.dtype), snapshot.dtype);
            let read: Reader = Box::new(move || {
                let data = snapshot.to_data().map_err(|e| e.to_string())?;
                match data.dtype {
                    DType::F32 | DType::F16 | DType::BF16 | DType::F64 => {
                        data.convert_dtype(DType::F32).into_vec::<f32>().map_err(|e| format!("{e:?}"))
                    }
                    other => Err(format!("{UNSUPPORTED_DTYPE} {other:?}")),
                }
            });
            let float_dtype = match snapshot_dtype {
                DType::F16 | DType::BF16 => snapshot_dtype,
                _ => DType::F32,
            };
            self.insert(name, shape, dtype, float_dtype, path, read);
        }
        Ok(())
    }

    fn insert(
        &mut self,
        name: String,
        shape: Vec<usize>,
        dtype: String,
        float_dtype: DType,
        file: &Path,
        read: Reader,
    ) {
        if self.indexed_file.get(&name).is_some_and(|indexed| indexed != file) {
            return;
        }
        if self.tensors.contains_key(&name) {
            tracing::warn!(tensor = %name, file = %file.display(), "tensor appears in more than one shard; the last one wins");
        }
        self.tensors.insert(name, RawTensor { shape, dtype, float_dtype, file: file.to_path_buf(), read });
    }
}

#[derive(Clone, Copy)]
enum FloatKind {
    F32,
    F16,
    BF16,
}

impl FloatKind {
    fn dtype(self) -> DType {
        match self {
            FloatKind::F32 => DType::F32,
            FloatKind::F16 => DType::F16,
            FloatKind::BF16 => DType::BF16,
        }
    }
}

fn st_dtype(dtype: StDtype) -> std::result::Result<FloatKind, String> {
    match dtype {
        StDtype::F32 => Ok(FloatKind::F32),
        StDtype::F16 => Ok(FloatKind::F16),
        StDtype::BF16 => Ok(FloatKind::BF16),
        other => Err(format!("{UNSUPPORTED_DTYPE} {other:?}")),
    }
}

fn decode_le(bytes: &[u8], kind: FloatKind, count: usize) -> std::result::Result<Vec<f32>, String> {
    let width = match kind {
        FloatKind::F32 => 4,
        FloatKind::F16 | FloatKind::BF16 => 2,
    };
    if bytes.len() != count * width {
        return Err(format!("{} bytes of data for {count} elements of width {width}", bytes.len()));
    }
    Ok(match kind {
        FloatKind::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        FloatKind::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        FloatKind::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
    })
}

impl TensorSource {
    /// Reads `dir/index_name` (a `weight_map` of tensor → shard file): remembers each tensor's
    /// shard and returns the shard paths, deduplicated, in order.
    fn read_index(&mut self, dir: &Path, index_name: &str) -> Result<Vec<PathBuf>> {
        let map = weight_map(&dir.join(index_name))?;
        let mut files: Vec<PathBuf> = Vec::new();
        for (tensor, file) in map {
            let path = dir.join(file);
            if !files.contains(&path) {
                files.push(path.clone());
            }
            self.indexed_file.insert(tensor, path);
        }
        Ok(files)
    }
}

/// The `weight_map` of a `*.index.json`: tensor name → shard file name.
fn weight_map(index: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(index).map_err(|e| BackboneError::io(index, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| BackboneError::Json { path: index.to_path_buf(), source })?;
    let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| BackboneError::Checkpoint {
        path: index.to_path_buf(),
        reason: "no `weight_map` object".into(),
    })?;
    Ok(map.iter().filter_map(|(tensor, file)| Some((tensor.clone(), file.as_str()?.to_string()))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::writer::{write_safetensors, StorageDtype};

    #[test]
    fn a_sharded_checkpoint_takes_each_tensor_from_the_shard_its_index_names() {
        let tmp = twigvlm_testkit::temp_dir("index");
        let dir = tmp.path();
        let tensor = |value: f32| ("w".to_string(), vec![1], vec![value]);
        // Both shards hold `w`; the index names the one that sorts and loads first.
        write_safetensors(
            &dir.join("a.safetensors"),
            &[tensor(1.0), ("only_a".to_string(), vec![1], vec![3.0])],
            StorageDtype::F32,
        )
        .unwrap();
        write_safetensors(&dir.join("b.safetensors"), &[tensor(2.0)], StorageDtype::F32).unwrap();
        let index =
            serde_json::json!({"weight_map": {"w": "a.safetensors", "only_a": "a.safetensors", "x": "b.safetensors"}});
        std::fs::write(dir.join(SAFETENSORS_INDEX), index.to_string()).unwrap();
        let source = TensorSource::open_dir(dir).unwrap();
        assert_eq!(source.get("w").unwrap().read_f32("w").unwrap(), vec![1.0]);
        assert_eq!(source.get("only_a").unwrap().read_f32("only_a").unwrap(), vec![3.0]);
    }

    #[test]
    fn a_replacement_file_wins_over_the_index_and_leaves_the_other_tensors() {
        let tmp = twigvlm_testkit::temp_dir("replace");
        let dir = tmp.path();
        let tensor = |name: &str, value: f32| (name.to_string(), vec![1], vec![value]);
        write_safetensors(&dir.join("a.safetensors"), &[tensor("w", 1.0), tensor("kept", 3.0)], StorageDtype::F32)
            .unwrap();
        let index = serde_json::json!({"weight_map": {"w": "a.safetensors", "kept": "a.safetensors"}});
        std::fs::write(dir.join(SAFETENSORS_INDEX), index.to_string()).unwrap();
        let replacement = dir.join("tuned.safetensors");
        write_safetensors(&replacement, &[tensor("w", 2.0)], StorageDtype::F32).unwrap();
        let mut source = TensorSource::open_dir(dir).unwrap();
        source.override_with_safetensors(&replacement).unwrap();
        assert_eq!(source.get("w").unwrap().read_f32("w").unwrap(), vec![2.0]);
        assert_eq!(source.get("kept").unwrap().read_f32("kept").unwrap(), vec![3.0]);
    }
}
