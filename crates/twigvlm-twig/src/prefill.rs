//! The prefill without token pruning: the prompt through the base model and, when a twig is
//! given, through the twig too, which shares the base's layers below K (they run once).

use std::time::Instant;

use burn::prelude::*;
use twigvlm_backbone::{AttentionProbe, CachedPrefix, Interrupted, KvCache, LlamaDecoder, PrefillSteps, PromptState};

use crate::module::Twig;
use twigvlm_backbone::ops::DecodeOps;

/// Runs the prompt `embeds` (`[1, prompt_len, hidden]`, positions `0..prompt_len`) through every
/// base layer, and through `twig` on the layer-K hidden states so that its cache covers the whole
/// prompt (what the self-speculative decoder drafts from), in chunks of `steps` tokens, asking
/// its interrupt before every layer of every chunk.
pub fn prefill_unpruned<'m, B: DecodeOps>(
    base: &'m LlamaDecoder<B>,
    twig: Option<&'m Twig<B>>,
    embeds: Tensor<B, 3>,
    steps: &PrefillSteps<'_, 'm, B>,
) -> Result<PromptState<B>, Interrupted> {
    prefill_unpruned_after(base, twig, None, embeds, steps)
}

/// [`prefill_unpruned`] of a prompt whose first `prefix.len` tokens are already in `prefix`'s
/// caches: `embeds` are the tokens after them (positions from `prefix.len` on). The prefix must
/// hold the twig's cache when `twig` is given.
///
/// # Panics
/// When `twig` is given and the prefix has no twig cache.
pub fn prefill_unpruned_after<'m, B: DecodeOps>(
    base: &'m LlamaDecoder<B>,
    twig: Option<&'m Twig<B>>,
    prefix: Option<CachedPrefix<B>>,
    embeds: Tensor<B, 3>,
    steps: &PrefillSteps<'_, 'm, B>,
) -> Result<PromptState<B>, Interrupted> {
    let started = Instant::now();
    let num_layers = base.num_layers();
    let (start, mut base_cache, twig_cache) = match prefix {
        Some(prefix) => (prefix.len, prefix.base_cache, prefix.twig_cache),
        None => (0, KvCache::new(num_layers), None),
    };
    let prompt_len = start + embeds.dims()[1];
    let positions: Vec<usize> = (start..prompt_len).collect();
    let rope = base.rope(&positions, &embeds.device());
    let no_probe = AttentionProbe::default();
    let split = twig.map_or(num_layers, |t| t.config.k);
    let low = base.prefill_layers(embeds, &rope, 0..split, &mut base_cache, &no_probe, steps)?.hidden;
    let steps = &steps.under_way();
    let twig_cache = match twig {
        Some(twig) => {
            let mut cache = match (start, twig_cache) {
                (0, _) => twig.new_cache(),
                (_, Some(cache)) => cache,
                (_, None) => panic!("a prefix continued with the twig holds the twig's cache"),
            };
            twig.prefill(low.clone(), &rope, &mut cache, &no_probe, steps)?;
            Some(cache)
        }
        None => None,
    };
    let top = base.prefill_layers(low, &rope, split..num_layers, &mut base_cache, &no_probe, steps)?.hidden;
    let last_logits = base.last_position_logits(top);
    Ok(PromptState { base_cache, twig_cache, last_logits, prompt_len, time: started.elapsed() })
}
