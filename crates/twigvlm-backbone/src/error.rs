//! Typed errors of the backbone crate. Every message names what was wrong and where.

use std::path::PathBuf;

/// Errors raised while loading or running the LLaVA backbone.
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid JSON in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("unsupported model configuration in {path}: {reason}")]
    UnsupportedConfig { path: PathBuf, reason: String },

    #[error("no weights found in {dir}: expected model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json")]
    NoWeights { dir: PathBuf },

    #[error("cannot parse checkpoint file {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },

    #[error("tensor `{name}` is missing from the checkpoint (expected shape {expected:?})")]
    MissingTensor { name: String, expected: Vec<usize> },

    #[error("tensor `{name}` has shape {found:?} in the checkpoint, but the model expects {expected:?}")]
    ShapeMismatch { name: String, expected: Vec<usize>, found: Vec<usize> },

    #[error("tensor `{name}` has unsupported dtype {dtype}; supported: f32, f16, bf16")]
    UnsupportedDtype { name: String, dtype: String },

    #[error("cannot recognise the checkpoint layout: none of the known LLaVA key layouts (llava-hf transformers 4.x / 5.x, original LLaVA) matches; first keys: {sample:?}")]
    UnknownLayout { sample: Vec<String> },

    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    #[error("cannot decode image {source_name}: {reason}")]
    Image { source_name: String, reason: String },

    #[error("cannot preprocess a {width}x{height} image: {reason}")]
    UnsupportedImage { width: u32, height: u32, reason: String },

    #[error("invalid prompt: {0}")]
    Prompt(String),

    #[error("KV cache misuse: {0}")]
    Cache(String),
}

pub type Result<T, E = BackboneError> = std::result::Result<T, E>;

impl BackboneError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}
