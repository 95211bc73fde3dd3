//! What a decoder continues from once the prompt has run: every layer's cache, the logits at the
//! last prompt position and where generated tokens start. Prefills build it (with or without
//! token pruning), decoders consume it, so neither needs to know the other.

use std::time::Duration;

use burn::prelude::*;

use super::cache::KvCache;

/// The state after a prefill.
#[derive(Debug)]
pub struct PromptState<B: Backend> {
    /// One cache per base layer, each with its own length (token pruning shortens some).
    pub base_cache: KvCache<B>,
    /// The cache of a shallow network's own blocks over the whole prompt (the twig's), when one
    /// ran: the self-speculative decoder drafts from it.
    pub twig_cache: Option<KvCache<B>>,
    /// The base model's logits at the last prompt position.
    pub last_logits: Vec<f32>,
    /// Prompt tokens; generated tokens take positions from here on.
    pub prompt_len: usize,
    /// Wall time of the prefill, logits on the host included.
    pub time: Duration,
}

/// The caches of a prompt's first `len` tokens, kept from an earlier prefill of a prompt that
/// began with the same tokens (and image): a prefill continues from it instead of running them
/// again.
#[derive(Debug, Clone)]
pub struct CachedPrefix<B: Backend> {
    /// Tokens the caches hold (every base layer and the twig's blocks alike: nothing pruned).
    pub len: usize,
    pub base_cache: KvCache<B>,
    /// The twig's cache over the same tokens, when the twig ran.
    pub twig_cache: Option<KvCache<B>>,
}
