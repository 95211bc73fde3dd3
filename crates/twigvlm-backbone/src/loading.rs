//! Loading a model directory: config, weights (any supported layout and file format), tokenizer,
//! preprocessing parameters and chat template.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use serde::de::DeserializeOwned;

use crate::chat_template::ChatTemplate;
use crate::clip::ClipVisionTower;
use crate::config::hf::{HfClipDirConfig, HfLlamaConfig, HfLlavaConfig, HfOriginalLlavaExtras, HfPreprocessorConfig};
use crate::config::LlavaConfig;
use crate::error::{BackboneError, Result};
use crate::llama::LlamaDecoder;
use crate::llava::LlavaModel;
use crate::ops::DecodeOps;
use crate::preprocess::{ImageAspect, ImagePreprocessor};
use crate::projector::Projector;
use crate::prompt::PromptTokenizer;
use crate::weights::layout::{find_vision, ignorable, LayoutKind};
use crate::weights::{CheckpointLayout, LoadReport, StorageDtype, TensorSource, WeightLoader};

/// Options that a model directory cannot answer by itself.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// CLIP directory for original-layout LLaVA checkpoints whose `mm_vision_tower` is a hub id.
    pub vision_tower_dir: Option<PathBuf>,
    /// Storage type of linear weights; `None` keeps each weight's checkpoint type (see
    /// [`crate::ops::DecodeOps::linear_weight`] for backends that compute in one type only).
    pub weights_dtype: Option<StorageDtype>,
    /// How images that are not square are fitted to the vision tower; `None` follows the
    /// checkpoint's own preprocessing (`preprocessor_config.json`, or an original checkpoint's
    /// `image_aspect_ratio`).
    pub image_aspect: Option<ImageAspect>,
}

/// Everything needed to run a LLaVA model.
pub struct LoadedLlava<B: Backend> {
    pub config: LlavaConfig,
    pub model: LlavaModel<B>,
    pub tokenizer: PromptTokenizer,
    pub preprocessor: ImagePreprocessor,
    pub template: ChatTemplate,
    pub layout: CheckpointLayout,
    pub report: LoadReport,
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| BackboneError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| BackboneError::Json { path: path.to_path_buf(), source })
}

/// Loads a LLaVA-1.5 model directory (llava-hf 4.x/5.x or original layout).
pub fn load_llava<B: DecodeOps>(dir: &Path, options: &LoadOptions, device: &B::Device) -> Result<LoadedLlava<B>> {
    let config_path = dir.join("config.json");
    let raw: serde_json::Value = read_json(&config_path)?;
    let unsupported = |reason: String| BackboneError::UnsupportedConfig { path: config_path.clone(), reason };
    let source = TensorSource::open_dir(dir)?;
    let layout = CheckpointLayout::detect(&source)?;

    let (config, clip_dir, pad_default) = if layout.kind == LayoutKind::Original {
        let extras: HfOriginalLlavaExtras = serde_json::from_value(raw.clone())
            .map_err(|e| unsupported(format!("not an original LLaVA config: {e}")))?;
        let llama: HfLlamaConfig = serde_json::from_value(raw).map_err(|e| unsupported(e.to_string()))?;
        let pad = extras.image_aspect_ratio.as_deref() == Some("pad");
        // The original config carries no vision hyper-parameters: they come from the CLIP directory.
        let clip_dir = resolve_vision_dir(dir, &extras.mm_vision_tower, options)?;
        let config = extras.to_llava(&llama, &clip_vision_config(&clip_dir)?).map_err(unsupported)?;
        (config, Some(clip_dir), pad)
    } else {
        let hf: HfLlavaConfig = serde_json::from_value(raw).map_err(|e| unsupported(e.to_string()))?;
        (hf.to_llava().map_err(unsupported)?, None, false)
    };
    // Vision weights come from the checkpoint itself when it has them (llava-hf, or an original
    // checkpoint with a tuned tower), else from the CLIP directory.
    let separate_vision = match (&layout.vision, &clip_dir) {
        (Some(_), _) => None,
        (None, Some(clip_dir)) => Some(TensorSource::open_dir(clip_dir)?),
        (None, None) => return Err(BackboneError::MissingTensor {
            name:
                "vision_tower.vision_model.embeddings.patch_embedding.weight (no vision tower under any known prefix)"
                    .into(),
            expected: vec![
                config.vision.hidden_size,
                config.vision.num_channels,
                config.vision.patch_size,
                config.vision.patch_size,
            ],
        }),
    };
    let vision_prefix = match &separate_vision {
        Some(clip) => find_vision(clip)
            .ok_or_else(|| BackboneError::UnknownLayout { sample: clip.names().take(8).map(String::from).collect() })?,
        None => layout.vision.clone().expect("checked above"),
    };
    let vision_layers = config.vision_layers_needed().map_err(unsupported)?;

    let main = WeightLoader::<B>::new(&source, device).with_linear_dtype(options.weights_dtype);
    let vision_loader =
        separate_vision.as_ref().map(|s| WeightLoader::<B>::new(s, device).with_linear_dtype(options.weights_dtype));
    let vision_tower =
        ClipVisionTower::load(vision_loader.as_ref().unwrap_or(&main), &vision_prefix, &config.vision, vision_layers)?;
    let projector = Projector::load(&main, &layout.projector, &config.projector)?;
    let language_model = LlamaDecoder::load(&main, &layout.language_model, &layout.lm_head, &config.text)?;
    let model = LlavaModel { vision_tower, projector, language_model, feature_select: config.feature_select };

    let skip = |name: &str| ignorable(name, &vision_prefix, vision_layers);
    let mut report = main.report(skip);
    if let Some(loader) = &vision_loader {
        report = report.merge(loader.report(skip));
    }
    if !report.unexpected.is_empty() {
        tracing::warn!(count = report.unexpected.len(), tensors = ?report.unexpected, "checkpoint tensors not used by the model");
    }
    tracing::debug!(used = report.used, ignored = report.ignored.len(), "weights loaded");

    let tokenizer = PromptTokenizer::from_file(&dir.join("tokenizer.json"))?;
    let mut preprocessor = preprocessor_for(dir, clip_dir.as_deref(), &config, pad_default)?;
    if let Some(aspect) = options.image_aspect {
        preprocessor = preprocessor.with_aspect(aspect);
    }
    // LLaVA-1.5 checkpoints carry no template of their own and were trained with vicuna_v1.
    let template = ChatTemplate::from_model_dir(dir)?.unwrap_or(ChatTemplate::VicunaV1);
    Ok(LoadedLlava { config, model, tokenizer, preprocessor, template, layout, report })
}

/// The LLaVA config and image preprocessing of a llava-hf model directory, without its weights
/// (what training a model's parts from scratch starts from).
pub fn read_llava_spec(dir: &Path) -> Result<(LlavaConfig, ImagePreprocessor)> {
    let config_path = dir.join("config.json");
    let hf: HfLlavaConfig = read_json(&config_path)?;
    let config = hf.to_llava().map_err(|reason| BackboneError::UnsupportedConfig { path: config_path, reason })?;
    let preprocessor = preprocessor_for(dir, None, &config, false)?;
    Ok((config, preprocessor))
}

fn preprocessor_for(
    dir: &Path,
    clip_dir: Option<&Path>,
    config: &LlavaConfig,
    pad_default: bool,
) -> Result<ImagePreprocessor> {
    const FILE: &str = "preprocessor_config.json";
    let candidates = std::iter::once(dir.join(FILE)).chain(clip_dir.map(|d| d.join(FILE)));
    for path in candidates {
        if path.is_file() {
            return Ok(ImagePreprocessor::from_hf(&read_json::<HfPreprocessorConfig>(&path)?, pad_default));
        }
    }
    tracing::warn!(dir = %dir.display(), "no {FILE}; using LLaVA-1.5's CLIP preprocessing");
    Ok(ImagePreprocessor::llava_default(config.vision.image_size))
}

fn clip_vision_config(clip_dir: &Path) -> Result<crate::config::hf::HfClipVisionConfig> {
    let cfg: HfClipDirConfig = read_json(&clip_dir.join("config.json"))?;
    Ok(cfg.vision_config.unwrap_or(cfg.top_level))
}

/// The CLIP directory of an original LLaVA checkpoint: the explicit option, else `mm_vision_tower`
/// read as a path (absolute or relative to the model directory).
fn resolve_vision_dir(dir: &Path, mm_vision_tower: &str, options: &LoadOptions) -> Result<PathBuf> {
    if let Some(explicit) = &options.vision_tower_dir {
        return Ok(explicit.clone());
    }
    let candidate = dir.join(mm_vision_tower);
    if candidate.join("config.json").is_file() {
        return Ok(candidate);
    }
    Err(BackboneError::UnsupportedConfig {
        path: dir.join("config.json"),
        reason: format!(
            "mm_vision_tower `{mm_vision_tower}` is not a directory next to the model; pass the CLIP checkpoint directory explicitly (--vision-tower DIR)"
        ),
    })
}

/// A text-only Llama (`LlamaForCausalLM` directory, e.g. one written by `twigvlm import gguf`).
pub struct LoadedLanguageModel<B: Backend> {
    pub config: crate::config::LlamaConfig,
    pub model: LlamaDecoder<B>,
    pub tokenizer: PromptTokenizer,
    /// The model's own template, else the text as given.
    pub template: ChatTemplate,
    pub report: LoadReport,
}

/// Checkpoint prefix of a `LlamaForCausalLM`'s decoder (`model.layers.0.…`).
pub const CAUSAL_LM_BODY: &str = "model";

/// Loads a `LlamaForCausalLM` directory (`model.*` and `lm_head` keys, or tied embeddings), with
/// f32 weights: what training differentiates through.
pub fn load_language_model<B: DecodeOps>(dir: &Path, device: &B::Device) -> Result<LoadedLanguageModel<B>> {
    load_language_model_with(dir, &[], device)
}

/// [`load_language_model`] with the tensors of each safetensors file in `replacements` (such as
/// tuned layers from an earlier training run) in place of the checkpoint's own.
pub fn load_language_model_with<B: DecodeOps>(
    dir: &Path,
    replacements: &[PathBuf],
    device: &B::Device,
) -> Result<LoadedLanguageModel<B>> {
    const HEAD: &str = "lm_head";
    let config_path = dir.join("config.json");
    let hf: HfLlamaConfig = read_json(&config_path)?;
    let config =
        hf.to_llama(None).map_err(|reason| BackboneError::UnsupportedConfig { path: config_path.clone(), reason })?;
    let mut source = TensorSource::open_dir(dir)?;
    for file in replacements {
        source.override_with_safetensors(file)?;
    }
    let loader = WeightLoader::<B>::new(&source, device).with_linear_dtype(Some(StorageDtype::F32));
    let model = LlamaDecoder::load(&loader, CAUSAL_LM_BODY, HEAD, &config)?;
    let report = loader.report(|name| ignorable(name, "", 0));
    if !report.unexpected.is_empty() {
        tracing::warn!(tensors = ?report.unexpected, "checkpoint tensors not used by the model");
    }
    let tokenizer = PromptTokenizer::from_file(&dir.join("tokenizer.json"))?;
    let template = ChatTemplate::from_model_dir(dir)?.unwrap_or(ChatTemplate::Raw);
    Ok(LoadedLanguageModel { config, model, tokenizer, template, report })
}
