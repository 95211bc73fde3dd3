//! Writing f32 tensors to a safetensors file in a chosen storage precision, atomically
//! (temporary file + rename).

use std::path::Path;

use strum::{Display, EnumMessage, EnumString, VariantArray};

use crate::error::{BackboneError, Result};

/// Storage precision of tensors: written to a checkpoint, or of weights held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Display, EnumString, VariantArray, EnumMessage)]
#[strum(serialize_all = "lowercase")]
pub enum StorageDtype {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// 32-bit floats.
    F32,
}

impl StorageDtype {
    /// The tensor element type.
    pub fn dtype(self) -> burn::tensor::DType {
        match self {
            Self::F16 => burn::tensor::DType::F16,
            Self::BF16 => burn::tensor::DType::BF16,
            Self::F32 => burn::tensor::DType::F32,
        }
    }

    /// The `torch_dtype` a config.json states for weights stored this way.
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F16 => "float16",
            Self::BF16 => "bfloat16",
            Self::F32 => "float32",
        }
    }
}

/// `(name, shape, row-major values)` of one tensor to write.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Writes `tensors` to `path` through a temporary file in the same directory.
pub fn write_safetensors(path: &Path, tensors: &[NamedTensor], dtype: StorageDtype) -> Result<()> {
    let encode = |values: &[f32]| -> Vec<u8> {
        match dtype {
            StorageDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            StorageDtype::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
            StorageDtype::BF16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        }
    };
    let st_dtype = match dtype {
        StorageDtype::F32 => safetensors::Dtype::F32,
        StorageDtype::F16 => safetensors::Dtype::F16,
        StorageDtype::BF16 => safetensors::Dtype::BF16,
    };
    let failed = |reason: String| BackboneError::Checkpoint { path: path.to_path_buf(), reason };
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|t| encode(&t.2)).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            safetensors::tensor::TensorView::new(st_dtype, t.1.clone(), b)
                .map(|view| (t.0.clone(), view))
                .map_err(|e| failed(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(views, None, &tmp).map_err(|e| failed(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| BackboneError::io(path, e))
}
