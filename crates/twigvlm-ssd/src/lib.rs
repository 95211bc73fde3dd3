//! Decoders. This crate owns token selection ([`sampling`]) and the decode loops: the plain
//! autoregressive [`vanilla`] decoder now, over either [`network`] (the base model or the twig's
//! shallow network); the self-speculative decoder (draft with the twig,
//! verify with the base) joins it behind the same interface.

pub mod error;
pub mod network;
pub mod sampling;
pub mod vanilla;

pub use error::{DecodeError, Result};
pub use network::{CausalNetwork, ShallowCache, ShallowNetwork};
pub use sampling::{Sampler, Sampling};
pub use vanilla::{decode_vanilla, DecodeConfig, DecodeOutput, StopReason};
