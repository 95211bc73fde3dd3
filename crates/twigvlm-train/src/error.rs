use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training configuration: {0}")]
    Config(String),
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error(transparent)]
    Backbone(#[from] twigvlm_backbone::BackboneError),
    #[error(transparent)]
    Data(#[from] twigvlm_data::DataError),
    #[error(transparent)]
    Twig(#[from] twigvlm_twig::TwigError),
    #[error(transparent)]
    Pruning(#[from] twigvlm_ttp::TtpError),
    #[error("the loss is not finite ({loss}) at step {step}; lower the learning rate")]
    Diverged { step: usize, loss: f32 },
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the demo model: {0}")]
    Demo(String),
}

pub type Result<T> = std::result::Result<T, TrainError>;
