//! Decoders. This crate owns token selection ([`sampling`]), what every decoder shares
//! ([`decode`]: limits, stopping rules, output) and the decode loops: the plain autoregressive
//! [`vanilla`] decoder over either [`network`] (the base model or the twig's shallow network), and
//! the self-speculative decoder ([`speculative`]: draft with the twig, verify with the base,
//! sharing the layers below K and their KV cache; the round state in [`speculator`]), drafting a
//! [`chain`] or, greedy, a [`tree`]. Decoders start from a [`twigvlm_backbone::PromptState`],
//! whichever prefill (pruned or not) built it.

pub mod chain;
pub mod decode;
pub mod error;
pub mod network;
pub mod sampling;
pub mod speculative;
pub mod speculator;
pub mod tree;
pub mod vanilla;

pub use decode::{DecodeConfig, DecodeOutput, StopReason};
pub use error::{DecodeError, Result};
pub use network::{CausalNetwork, ShallowCache, ShallowNetwork};
pub use sampling::{Sampler, Sampling};
pub use speculative::{
    decode_speculative, DraftConfig, DraftLength, SpeculativeStats, ADAPTIVE_RETRY_ROUNDS, DEFAULT_DRAFT_VOCAB,
};
pub use tree::DraftTree;
pub use vanilla::{decode_vanilla, decode_vanilla_prefilled};
