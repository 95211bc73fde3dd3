//! `--dump-tensors`: f32 tensors to a safetensors file (atomic write).

use std::path::Path;

use twigvlm_backbone::weights::{write_safetensors, NamedTensor, StorageDtype};

pub fn write_tensors(path: &Path, tensors: &[NamedTensor]) -> anyhow::Result<()> {
    Ok(write_safetensors(path, tensors, StorageDtype::F32)?)
}
