//! The parts of a LLaVA model that this project trains (the CLIP vision tower and the projector),
//! written and read back under the names llava-hf's `save_pretrained` gives them, so that a model
//! directory's index can list their files beside any language model's.

use std::path::Path;

use super::export::hf_tensors;
use super::layout::{SAVED_PROJECTOR_PREFIX, SAVED_VISION_PREFIX};
use super::loader::WeightLoader;
use super::source::TensorSource;
use super::writer::{write_safetensors, StorageDtype};
use crate::clip::ClipVisionTower;
use crate::config::LlavaConfig;
use crate::error::{BackboneError, Result};
use crate::ops::DecodeOps;
use crate::projector::Projector;

/// Writes `tower` to the safetensors file `path` (f32).
pub fn save_vision_tower<B: DecodeOps>(tower: &ClipVisionTower<B>, path: &Path) -> Result<()> {
    let tensors = hf_tensors(tower, &|burn_path| ClipVisionTower::<B>::hf_name(SAVED_VISION_PREFIX, burn_path));
    write_safetensors(path, &tensors, StorageDtype::F32)
}

/// Reads a vision tower written by [`save_vision_tower`], with the layers `config` uses.
pub fn load_vision_tower<B: DecodeOps>(
    path: &Path,
    config: &LlavaConfig,
    device: &B::Device,
) -> Result<ClipVisionTower<B>> {
    let mut source = TensorSource::default();
    source.add_safetensors(path)?;
    let layers = config
        .vision_layers_needed()
        .map_err(|reason| BackboneError::UnsupportedConfig { path: path.to_path_buf(), reason })?;
    ClipVisionTower::load(&WeightLoader::new(&source, device), SAVED_VISION_PREFIX, &config.vision, layers)
}

/// Writes `projector` to the safetensors file `path` (f32).
pub fn save_projector<B: DecodeOps>(projector: &Projector<B>, path: &Path) -> Result<()> {
    let tensors = hf_tensors(projector, &|burn_path| format!("{SAVED_PROJECTOR_PREFIX}.{burn_path}"));
    write_safetensors(path, &tensors, StorageDtype::F32)
}

/// Reads a projector written by [`save_projector`], shaped as `config` says.
pub fn load_projector<B: DecodeOps>(path: &Path, config: &LlavaConfig, device: &B::Device) -> Result<Projector<B>> {
    let mut source = TensorSource::default();
    source.add_safetensors(path)?;
    let linears = [format!("{SAVED_PROJECTOR_PREFIX}.linear_1"), format!("{SAVED_PROJECTOR_PREFIX}.linear_2")];
    let layers = if config.projector.activation.is_some() { &linears[..] } else { &linears[..1] };
    Projector::load(&WeightLoader::new(&source, device), layers, &config.projector)
}
