//! The twig: T decoder blocks + their own RMSNorm + an LM head (+ optionally a pruning head,
//! TwigVLM++), attached after base layer K. The
//! shallow network is the base's layers 0..K-1 (run by the backbone, never duplicated) followed by
//! the twig. This crate owns the module, its initialisation from the base model, and its two
//! checkpoint formats (ours and the official TwigVLM layout).

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod identity;
pub mod module;
pub mod prefill;
pub mod pruning_head;

pub use checkpoint::{load_twig, save_official, save_twig, TwigCheckpoint, TwigFormat};
pub use config::{TwigConfig, TwigHead, TwigInit, TwigMlp};
pub use error::{Result, TwigError};
pub use identity::BaseIdentity;
pub use module::Twig;
pub use prefill::{prefill_unpruned, prefill_unpruned_after};
pub use pruning_head::PruningHead;
