//! Self-speculative decoding, greedy: the twig's shallow network (base layers 0..K-1, then the
//! twig) drafts a chain of tokens, and the base checks them all in one forward over its layers
//! K..L-1. Nothing is computed twice: a drafted token's layer 0..K-1 KV entries go straight into
//! the base cache (the shallow network shares those layers with the base), and its layer-K hidden
//! state is kept as the verification input. The output equals the base's greedy output.
//!
//! One round, with `t` the last emitted token (not yet run):
//! 1. draft: run `t`, then each drafted token, through layers 0..K-1 and the twig; stop at
//!    `max_draft` drafted tokens, when the twig's probability of its pick is below
//!    `draft_threshold`, after a drafted end-of-sequence token, or at the token budget;
//! 2. verify: layers K..L-1 over the `n + 1` kept hidden states give the base's pick after `t` and
//!    after every drafted token;
//! 3. emit the drafted tokens that equal the base's picks, then the base's own pick (the
//!    correction, or a bonus token when all were accepted), and crop every cache to what was
//!    emitted.

use std::ops::ControlFlow;
use std::time::Instant;

use burn::prelude::*;
use twigvlm_backbone::{AttentionProbe, KvCache, LlamaDecoder};
use twigvlm_ttp::Prefill;
use twigvlm_twig::Twig;

use crate::error::{DecodeError, Result};
use crate::sampling::{argmax, softmax};
use crate::vanilla::{logits_row, DecodeConfig, DecodeOutput, Emitter, StopReason};

/// Drafting limits (the paper's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DraftConfig {
    /// Most tokens drafted per round.
    pub max_draft: usize,
    /// Drafting stops when the twig's probability of its own pick falls below this.
    pub draft_threshold: f32,
}

impl Default for DraftConfig {
    fn default() -> Self {
        Self { max_draft: 5, draft_threshold: 0.6 }
    }
}

/// What the rounds did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SpeculativeStats {
    /// Draft-and-verify rounds (each emits at least one token).
    pub rounds: usize,
    pub drafted: usize,
    /// Drafted tokens the base agreed with.
    pub accepted: usize,
}

impl SpeculativeStats {
    /// Mean accepted drafted tokens per round.
    pub fn mean_accepted(&self) -> f64 {
        self.accepted as f64 / self.rounds.max(1) as f64
    }

    /// Share of drafted tokens accepted.
    pub fn acceptance_rate(&self) -> f64 {
        self.accepted as f64 / self.drafted.max(1) as f64
    }
}

/// The base model and its twig, with their caches.
struct Speculator<'a, B: Backend> {
    base: &'a LlamaDecoder<B>,
    twig: &'a Twig<B>,
    base_cache: KvCache<B>,
    twig_cache: KvCache<B>,
    probe: AttentionProbe,
    device: B::Device,
}

impl<B: Backend> Speculator<'_, B> {
    fn k(&self) -> usize {
        self.twig.config.k
    }

    /// Runs `embeds` at `positions` through the shared layers 0..K-1 and the twig; returns the
    /// layer-K hidden states and the twig's logits at the last position.
    fn shallow(&mut self, embeds: Tensor<B, 3>, positions: &[usize]) -> (Tensor<B, 3>, Vec<f32>) {
        let rope = self.base.rope(positions, &self.device);
        let hidden = self.base.forward_layers(embeds, &rope, 0..self.k(), &mut self.base_cache, &self.probe).hidden;
        let twig_hidden = self.twig.forward(hidden.clone(), &rope, &mut self.twig_cache, &self.probe).hidden;
        let seq = twig_hidden.dims()[1];
        (hidden, logits_row(self.twig.logits(twig_hidden.narrow(1, seq - 1, 1), &self.base.lm_head)))
    }

    /// Layers K..L-1 over layer-K hidden states at `positions`; the base's logits at every position.
    fn deep(&mut self, hidden: Tensor<B, 3>, positions: &[usize]) -> Vec<Vec<f32>> {
        let rope = self.base.rope(positions, &self.device);
        let layers = self.k()..self.base.num_layers();
        let top = self.base.forward_layers(hidden, &rope, layers, &mut self.base_cache, &self.probe).hidden;
        let rows = logits_row(self.base.logits(top));
        rows.chunks(rows.len() / positions.len()).map(<[f32]>::to_vec).collect()
    }

    fn embed(&self, token: u32) -> Tensor<B, 3> {
        self.base.embed(Tensor::from_data(TensorData::new(vec![token as i32], [1, 1]), &self.device))
    }

    /// Drops the last `count` entries of every cache (rejected drafts; every layer took the
    /// same new entries this round, whatever length pruning left it with).
    fn discard(&mut self, count: usize) -> Result<()> {
        self.base_cache.truncate_last(count)?;
        self.twig_cache.truncate_last(count)?;
        Ok(())
    }
}

/// Greedy self-speculative decoding after `prefill` (run under any pruning policy, with the
/// twig's cache kept): the base's greedy tokens, produced in draft-and-verify rounds.
pub fn decode_speculative<B: Backend>(
    base: &LlamaDecoder<B>,
    twig: &Twig<B>,
    prefill: Prefill<B>,
    config: &DecodeConfig,
    draft: &DraftConfig,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<(DecodeOutput, SpeculativeStats)> {
    let Prefill { base_cache, twig_cache, last_logits: prompt_logits, prompt_len, time: prefill_time, .. } = prefill;
    config.check_prompt(prompt_len)?;
    let twig_cache = twig_cache.ok_or(DecodeError::MissingTwigCache)?;
    let device = base.embed_tokens.weight.device();
    let mut run = Speculator { base, twig, base_cache, twig_cache, probe: AttentionProbe::default(), device };

    let started = Instant::now();
    let mut stats = SpeculativeStats::default();
    let mut emitter = Emitter::new(config, &mut on_token);
    let stop = 'rounds: {
        if let Some(stop) = emitter.budget_spent() {
            break 'rounds stop;
        }
        let mut next = argmax(&prompt_logits);
        loop {
            if let Some(stop) = emitter.emit(next) {
                break 'rounds stop;
            }
            // `next` is emitted but not yet run; it sits at `start`.
            let start = prompt_len + emitter.tokens.len() - 1;
            if start + 1 >= config.context_length {
                break 'rounds StopReason::ContextFull;
            }
            // Drafted tokens run at start+1.. and must leave room for the token after them.
            let limit = draft.max_draft.min(emitter.budget()).min(config.context_length - start - 2);

            let (mut kept, mut drafted, mut token) = (Vec::new(), Vec::new(), next);
            loop {
                let (hidden, twig_logits) = run.shallow(run.embed(token), &[start + drafted.len()]);
                kept.push(hidden);
                if drafted.len() == limit || (!drafted.is_empty() && config.eos_token_ids.contains(&token)) {
                    break;
                }
                let pick = argmax(&twig_logits);
                if softmax(&twig_logits, 1.0)[pick as usize] < draft.draft_threshold {
                    break;
                }
                drafted.push(pick);
                token = pick;
            }

            let positions: Vec<usize> = (start..start + kept.len()).collect();
            let base_picks: Vec<u32> = run.deep(Tensor::cat(kept, 1), &positions).iter().map(|row| argmax(row)).collect();
            let accepted = drafted.iter().zip(&base_picks).take_while(|(d, b)| d == b).count();
            stats.rounds += 1;
            stats.drafted += drafted.len();
            stats.accepted += accepted;
            run.discard(positions.len() - accepted - 1)?;
            for &token in &drafted[..accepted] {
                if let Some(stop) = emitter.emit(token) {
                    break 'rounds stop;
                }
            }
            next = base_picks[accepted];
        }
    };
    Ok((DecodeOutput { tokens: emitter.tokens, stop, prompt_logits, prefill_time, decode_time: started.elapsed() }, stats))
}
