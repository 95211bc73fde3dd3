//! Twig checkpoints. Ours: `twig.safetensors` + `twig.json` (K, T, init, head, the base model's
//! identity, a training summary). The official TwigVLM layout: a directory whose
//! `model.safetensors` holds `model.layers.{0..T-1}.*`, `model.norm.weight` and `lm_head.weight`
//! in bf16; the official code takes K from its environment, so it comes from the caller or a
//! `twig.json` beside the weights. Both use the same tensor names. A twig whose MLPs stayed frozen
//! copies of base layers (`TwigMlp::Frozen`) stores none of them in our format; loading copies
//! them from the base again. A pruning head (TwigVLM++) is stored under the official twig++
//! names, `leaf_attention_module.{q_gate,k_gate}.weight`, in both.

use std::path::{Path, PathBuf};
use strum::{Display, EnumMessage, EnumString, VariantArray};

use burn::prelude::*;
use serde::{Deserialize, Serialize};
use twigvlm_backbone::config::LlamaConfig;
use twigvlm_backbone::weights::{hf_tensors, write_safetensors, StorageDtype, TensorSource, WeightLoader};
use twigvlm_backbone::{DecoderLayer, LlamaDecoder};

use crate::config::{TwigConfig, TwigHead, TwigInit, TwigMlp};
use crate::error::{Result, TwigError};
use crate::identity::BaseIdentity;
use crate::module::Twig;
use crate::pruning_head::{PruningHead, PRUNING_HEAD_PREFIX};
use twigvlm_backbone::ops::DecodeOps;

pub const OURS_WEIGHTS: &str = "twig.safetensors";
pub const OURS_META: &str = "twig.json";
pub const OFFICIAL_WEIGHTS: &str = "model.safetensors";
const LAYER_PREFIX: &str = "model.layers";
const NORM: &str = "model.norm.weight";
const HEAD: &str = "lm_head";
/// The MLP of a block, as in `model.layers.0.mlp.gate_proj.weight`.
const MLP: &str = "mlp";
const FORMAT_VERSION: u32 = 1;
/// The pruning head's field in [`Twig`], as module paths start (`pruning_head.q_gate.weight`).
const PRUNING_HEAD_FIELD: &str = "pruning_head";
/// Tensors of the official twig++ layout that this twig does not use (a projection beside the
/// pruning head whose role its checkpoints do not say); they are reported, not loaded.
const UNUSED_OFFICIAL_PREFIX: &str = "leaf_proj.";

/// The two ways a twig is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Display, EnumString, VariantArray, EnumMessage)]
#[strum(serialize_all = "lowercase")]
pub enum TwigFormat {
    /// `twig.safetensors` and `twig.json`: the config and the base it was trained for.
    Ours,
    /// The official TwigVLM layout (`model.safetensors` with `model.layers.*`; K kept beside it).
    Official,
}

/// `twig.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TwigMeta {
    pub format_version: u32,
    pub config: TwigConfig,
    pub base: BaseIdentity,
    /// What the trainer recorded (data, steps, time, final metrics); free-form.
    #[serde(default)]
    pub training: serde_json::Value,
}

/// A loaded twig and what its files said about it.
pub struct TwigCheckpoint<B: Backend> {
    pub twig: Twig<B>,
    pub format: TwigFormat,
    /// None for an official twig without a sidecar.
    pub meta: Option<TwigMeta>,
}

fn tensors<B: DecodeOps>(twig: &Twig<B>) -> Vec<twigvlm_backbone::weights::NamedTensor> {
    hf_tensors(twig, &|path| match path.strip_prefix("layers.") {
        Some(rest) => format!("{LAYER_PREFIX}.{rest}"),
        None if path.starts_with("norm.") => format!("model.{path}"),
        None => match path.strip_prefix(PRUNING_HEAD_FIELD) {
            Some(rest) => format!("{PRUNING_HEAD_PREFIX}{rest}"),
            None => path.to_string(),
        },
    })
}

fn write_meta(dir: &Path, meta: &TwigMeta) -> Result<()> {
    let path = dir.join(OURS_META);
    let failed = |reason: String| TwigError::Write { path: path.clone(), reason };
    let text = serde_json::to_string_pretty(meta).map_err(|e| failed(e.to_string()))?;
    let staging = dir.join(format!(".{OURS_META}.tmp"));
    std::fs::write(&staging, text).map_err(|e| failed(e.to_string()))?;
    std::fs::rename(&staging, &path).map_err(|e| failed(e.to_string()))
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TwigError::Write { path: dir.to_path_buf(), reason: e.to_string() })
}

/// Whether `name` is a weight of a block's MLP.
fn is_mlp(name: &str) -> bool {
    name.strip_prefix(LAYER_PREFIX).is_some_and(|rest| rest.split('.').nth(2) == Some(MLP))
}

/// Writes our format: weights in `dtype` (frozen MLPs left out), then `twig.json` (each file
/// atomically).
pub fn save_twig<B: DecodeOps>(
    dir: &Path,
    twig: &Twig<B>,
    base: &LlamaDecoder<B>,
    training: serde_json::Value,
    dtype: StorageDtype,
) -> Result<()> {
    create_dir(dir)?;
    let mut named = tensors(twig);
    if twig.config.mlp == TwigMlp::Frozen {
        named.retain(|(name, _, _)| !is_mlp(name));
    }
    write_safetensors(&dir.join(OURS_WEIGHTS), &named, dtype)?;
    write_meta(
        dir,
        &TwigMeta { format_version: FORMAT_VERSION, config: twig.config, base: BaseIdentity::of(base), training },
    )
}

/// Writes the official layout (bf16 `model.safetensors`; the head is written even when shared, as
/// the official loader expects one) and our `twig.json` beside it so that K travels with it.
pub fn save_official<B: DecodeOps>(
    dir: &Path,
    twig: &Twig<B>,
    base: &LlamaDecoder<B>,
    training: serde_json::Value,
) -> Result<()> {
    create_dir(dir)?;
    let mut named = tensors(twig);
    if twig.lm_head.is_none() {
        named.extend(hf_tensors(&base.lm_head, &|path| format!("{HEAD}.{path}")));
    }
    write_safetensors(&dir.join(OFFICIAL_WEIGHTS), &named, StorageDtype::BF16)?;
    let config = TwigConfig { head: TwigHead::Trained, mlp: TwigMlp::Trained, ..twig.config };
    write_meta(dir, &TwigMeta { format_version: FORMAT_VERSION, config, base: BaseIdentity::of(base), training })
}

fn read_meta(path: &Path) -> Result<Option<TwigMeta>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            serde_json::from_str(&text).map(Some).map_err(|source| TwigError::Json { path: path.to_path_buf(), source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TwigError::Read { path: path.to_path_buf(), source }),
    }
}

/// Number of `model.layers.N` blocks in a twig file.
fn count_layers(source: &TensorSource) -> usize {
    let mut indices: Vec<usize> = source
        .names()
        .filter_map(|name| name.strip_prefix(&format!("{LAYER_PREFIX}."))?.split('.').next()?.parse().ok())
        .collect();
    indices.sort_unstable();
    indices.dedup();
    indices.len()
}

/// Loads a twig in either format from `dir` for `base`. `k` overrides (and is required for an
/// official twig without `twig.json`). A twig recorded for another base model is refused.
pub fn load_twig<B: DecodeOps>(
    dir: &Path,
    base: &LlamaDecoder<B>,
    base_config: &LlamaConfig,
    k: Option<usize>,
    device: &B::Device,
) -> Result<TwigCheckpoint<B>> {
    let (format, weights) = if dir.join(OURS_WEIGHTS).is_file() {
        (TwigFormat::Ours, dir.join(OURS_WEIGHTS))
    } else if dir.join(OFFICIAL_WEIGHTS).is_file() {
        (TwigFormat::Official, dir.join(OFFICIAL_WEIGHTS))
    } else {
        return Err(TwigError::NotATwig { path: dir.to_path_buf() });
    };
    let meta = read_meta(&dir.join(OURS_META))?;
    if format == TwigFormat::Ours && meta.is_none() {
        return Err(TwigError::NotATwig { path: dir.to_path_buf() });
    }
    if let Some(meta) = &meta {
        let found = BaseIdentity::of(base);
        if meta.base != found {
            return Err(TwigError::WrongBase {
                path: dir.to_path_buf(),
                expected: meta.base.to_string(),
                found: found.to_string(),
            });
        }
    }
    let mut source = TensorSource::default();
    source.add_safetensors(&weights)?;
    let t = count_layers(&source);
    let k = k.or(meta.as_ref().map(|m| m.config.k)).ok_or_else(|| TwigError::MissingK { path: dir.to_path_buf() })?;
    let has_head = source.contains(&format!("{HEAD}.weight"));
    let init = meta.as_ref().map_or(TwigInit::Adjacent, |m| m.config.init);
    let has_mlp = source.names().any(is_mlp);
    let mlp = match (has_mlp, meta.as_ref().map(|m| m.config.mlp)) {
        (true, _) => TwigMlp::Trained,
        (false, Some(TwigMlp::Frozen)) => TwigMlp::Frozen,
        (false, _) => return Err(TwigError::MissingMlp { path: weights }),
    };
    let head = if has_head { TwigHead::Trained } else { TwigHead::Shared };
    let final_wipe = meta.as_ref().and_then(|m| m.config.final_wipe);
    let pruning_head = source.contains(&format!("{PRUNING_HEAD_PREFIX}.q_gate.weight"));
    let unused: Vec<&str> = source.names().filter(|name| name.starts_with(UNUSED_OFFICIAL_PREFIX)).collect();
    if !unused.is_empty() {
        tracing::warn!(path = %weights.display(), tensors = ?unused, "twig tensors not used");
    }
    let config = TwigConfig { k, t, init, head, mlp, final_wipe, pruning_head };
    config.validate(base.num_layers())?;
    if mlp == TwigMlp::Frozen {
        let sources = config.source_layers(base.num_layers()).expect("validated: frozen MLPs copy base layers");
        for (i, layer) in sources.enumerate() {
            let copies = hf_tensors(&base.layers[layer].mlp, &|path| format!("{LAYER_PREFIX}.{i}.{MLP}.{path}"));
            source.add_in_memory(copies, &dir.join(format!("(base layer {layer})")));
        }
    }
    let loader = WeightLoader::new(&source, device);
    let layers = (0..t)
        .map(|i| DecoderLayer::load(&loader, &format!("{LAYER_PREFIX}.{i}"), base_config))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let norm = loader.rms_norm(NORM, base.hidden_size(), base_config.rms_norm_eps)?;
    let lm_head =
        if has_head { Some(loader.linear(HEAD, base.hidden_size(), base.vocab_size(), false)?) } else { None };
    let pruning_head =
        if pruning_head { Some(PruningHead::load(&loader, layers.last().expect("validated: T ≥ 1"))?) } else { None };
    Ok(TwigCheckpoint { twig: Twig { layers, norm, lm_head, pruning_head, config }, format, meta })
}

/// Rewrites a twig from one format to the other (`twigvlm twig convert`).
pub fn convert<B: DecodeOps>(
    from: &Path,
    to: &Path,
    target: TwigFormat,
    base: &LlamaDecoder<B>,
    base_config: &LlamaConfig,
    k: Option<usize>,
    device: &B::Device,
) -> Result<PathBuf> {
    let loaded = load_twig(from, base, base_config, k, device)?;
    let training = loaded.meta.map(|m| m.training).unwrap_or_default();
    match target {
        TwigFormat::Ours => save_twig(to, &loaded.twig, base, training, StorageDtype::F16)?,
        TwigFormat::Official => save_official(to, &loaded.twig, base, training)?,
    }
    Ok(to.to_path_buf())
}
