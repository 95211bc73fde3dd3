//! TwigVLM facade: pick a backend, load a model, generate. The `twigvlm` binary is a thin CLI over
//! this crate.

pub mod backend;
pub mod bench;
pub mod demo_model;
pub mod distill;
pub mod engine;
pub mod eval;
pub mod explain;
pub mod plot;
pub mod relacc;
pub mod serve;
pub mod synthetic;

pub use backend::{BackendError, BackendJob, BackendKind, FloatDtype};
pub use engine::{DecoderKind, Engine, GenerateRequest, GenerateResult, GenerateStats, Prompt};
