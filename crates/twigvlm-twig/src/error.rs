use std::path::PathBuf;

use twigvlm_backbone::BackboneError;

#[derive(Debug, thiserror::Error)]
pub enum TwigError {
    #[error("invalid twig shape: {0}")]
    Shape(String),

    #[error("the twig in {path} was trained for another base model: it expects {expected}, this base is {found}")]
    WrongBase { path: PathBuf, expected: String, found: String },

    #[error("{path} is an official TwigVLM twig, which does not record K: pass it explicitly (--twig-k) or put a twig.json beside it")]
    MissingK { path: PathBuf },

    #[error("{path} holds no twig: expected twig.safetensors + twig.json (ours) or model.safetensors with model.layers.* (official TwigVLM)")]
    NotATwig { path: PathBuf },

    #[error("{path} holds no MLP weights and no twig.json says they are frozen copies of base layers")]
    MissingMlp { path: PathBuf },

    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },

    #[error("invalid twig.json in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error(transparent)]
    Backbone(#[from] BackboneError),
}

pub type Result<T> = std::result::Result<T, TwigError>;
