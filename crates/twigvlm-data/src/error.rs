use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("invalid dataset spec `{spec}`: {reason}")]
    Spec { spec: String, reason: String },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not LLaVA instruction JSON: {reason}")]
    LlavaJson { path: PathBuf, reason: String },
    #[error("{what}: {reason}")]
    Fetch { what: String, reason: String },
    #[error("{path} is not an easy-VQA question file: {reason}")]
    EasyVqa { path: PathBuf, reason: String },
    #[error("cannot open image {path}: {reason}")]
    Image { path: PathBuf, reason: String },
}

pub type Result<T> = std::result::Result<T, DataError>;
