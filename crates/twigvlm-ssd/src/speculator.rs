//! The state of self-speculative decoding between rounds: the base model and its twig with their
//! caches, and the forwards every kind of round is made of (the shared layers 0..K-1, the twig,
//! the deep layers K..L-1), so that chain ([`crate::chain`]) and tree ([`crate::tree`]) rounds
//! compute nothing twice.

use std::time::{Duration, Instant};

use burn::prelude::*;
use twigvlm_backbone::llama::RopeAngles;
use twigvlm_backbone::{KvCache, LlamaDecoder, StackRunner, TreeMask};
use twigvlm_twig::Twig;

use crate::decode::logits_row;
use crate::error::Result;
use twigvlm_backbone::ops::DecodeOps;

/// What one draft-and-verify round decided.
pub(crate) struct Round {
    /// Drafted tokens the base checked.
    pub drafted: usize,
    /// The accepted drafted tokens, in order.
    pub accepted: Vec<u32>,
    /// The base's token after them.
    pub correction: u32,
    pub time: RoundTime,
}

/// Where a round's time went (see [`SpeculativeStats`]).
pub(crate) struct RoundTime {
    pub draft: Duration,
    pub verify: Duration,
}

impl RoundTime {
    /// Splits the time since `began` at `drafted` (drafting done) and now (verification done).
    pub(crate) fn since(began: Instant, drafted: Instant) -> Self {
        Self { draft: drafted - began, verify: drafted.elapsed() }
    }
}

/// The base model and its twig, with their caches, and who runs their forwards.
pub(crate) struct Speculator<'a, 'm, B: Backend> {
    pub(crate) base: &'m LlamaDecoder<B>,
    pub(crate) twig: &'m Twig<B>,
    pub(crate) runner: &'a dyn StackRunner<'m, B>,
    pub(crate) base_cache: KvCache<B>,
    pub(crate) twig_cache: KvCache<B>,
    /// Layer-K hidden states (and positions) of rounds without drafting, or of a tree round's
    /// last accepted token, which the twig has not run on yet.
    pub(crate) twig_behind: Vec<(Tensor<B, 3>, usize)>,
    pub(crate) device: B::Device,
    /// The twig drafts among the first this many token ids ([`crate::DraftConfig::vocab`]).
    pub(crate) draft_vocab: Option<usize>,
    /// Whether the next forward continues the round's drafting (see
    /// [`twigvlm_backbone::StackCall::continuation`]): false for a round's first forward and for
    /// its verification, which a batching runner lines up with other requests' new work.
    pub(crate) drafting: bool,
}

impl<'m, B: DecodeOps> Speculator<'_, 'm, B> {
    pub(crate) fn k(&self) -> usize {
        self.twig.config.k
    }

    /// Whether the coming forward continues the round's drafting; every later one of the round
    /// does, until [`Self::deep`] verifies.
    pub(crate) fn continues_draft(&mut self) -> bool {
        std::mem::replace(&mut self.drafting, true)
    }

    /// Runs `embed` at `position` through the shared layers 0..K-1 only (a round without
    /// drafting); the twig catches up on it before it next drafts.
    pub(crate) fn lower(&mut self, embed: Tensor<B, 3>, position: usize) -> Tensor<B, 3> {
        let rope = self.base.rope(&[position], &self.device);
        let hidden = self.shared_layers(embed, &rope);
        self.twig_behind.push((hidden.clone(), position));
        hidden
    }

    /// The base's layers 0..K-1, which the twig shares (filling the base cache).
    pub(crate) fn shared_layers(&mut self, embeds: Tensor<B, 3>, rope: &RopeAngles<B>) -> Tensor<B, 3> {
        let call = self.base.stack_call(0..self.k(), embeds, rope).continuing(self.continues_draft());
        self.runner.run_stack(call, &mut self.base_cache).hidden
    }

    /// Runs the twig's layers over the positions it missed, in one forward, so that its cache
    /// covers every position again.
    pub(crate) fn twig_catch_up(&mut self) {
        if self.twig_behind.is_empty() {
            return;
        }
        let (hidden, positions): (Vec<_>, Vec<_>) = self.twig_behind.drain(..).unzip();
        let rope = self.base.rope(&positions, &self.device);
        let call = self.twig.stack_call(Tensor::cat(hidden, 1), &rope).continuing(self.continues_draft());
        self.runner.run_stack(call, &mut self.twig_cache);
    }

    /// Runs `embeds` at `positions` through the shared layers 0..K-1 and the twig's layers
    /// (filling both caches); returns the layer-K and the twig's last hidden states.
    pub(crate) fn shallow_hidden(&mut self, embeds: Tensor<B, 3>, positions: &[usize]) -> (Tensor<B, 3>, Tensor<B, 3>) {
        self.twig_catch_up();
        let rope = self.base.rope(positions, &self.device);
        let hidden = self.shared_layers(embeds, &rope);
        let call = self.twig.stack_call(hidden.clone(), &rope).continuing(self.continues_draft());
        let twig_hidden = self.runner.run_stack(call, &mut self.twig_cache).hidden;
        (hidden, twig_hidden)
    }

    /// [`Self::shallow_hidden`] plus the twig's logits at the last position, over the whole
    /// vocabulary (`−∞` past the draft vocabulary).
    pub(crate) fn shallow(&mut self, embeds: Tensor<B, 3>, positions: &[usize]) -> (Tensor<B, 3>, Vec<f32>) {
        let (hidden, twig_hidden) = self.shallow_hidden(embeds, positions);
        let seq = twig_hidden.dims()[1];
        let mut logits = self.draft_logits(twig_hidden.narrow(1, seq - 1, 1));
        logits.resize(self.base.vocab_size(), f32::NEG_INFINITY);
        (hidden, logits)
    }

    /// The twig's logits for every row of `twig_hidden`, flattened, over the draft vocabulary
    /// (each row that long).
    pub(crate) fn draft_logits(&self, twig_hidden: Tensor<B, 3>) -> Vec<f32> {
        let call = self.twig.head_call(twig_hidden, &self.base.lm_head, self.draft_vocab).continuing(true);
        logits_row(self.runner.run_head(call))
    }

    /// Layers K..L-1 over layer-K hidden states at `positions` (a draft tree's nodes when
    /// `tree` is given), then the base's head: the round's verification, after which the next
    /// round begins. Returns the logits of every position, flattened.
    pub(crate) fn deep(&mut self, hidden: Tensor<B, 3>, positions: &[usize], tree: Option<&TreeMask>) -> Vec<f32> {
        let rope = self.base.rope(positions, &self.device);
        let layers = self.k()..self.base.num_layers();
        let call = self.base.stack_call(layers, hidden, &rope);
        let call = match tree {
            Some(tree) => call.with_tree(tree),
            None => call,
        };
        self.drafting = false;
        let top = self.runner.run_stack(call, &mut self.base_cache).hidden;
        logits_row(self.runner.run_head(self.base.head_call(top).continuing(true)))
    }

    pub(crate) fn embed(&self, token: u32) -> Tensor<B, 3> {
        self.base.embed(Tensor::from_data(TensorData::new(vec![token as i32], [1, 1]), &self.device))
    }

    /// Drops the last `count` entries of every cache (rejected drafts; every layer took the
    /// same new entries this round, whatever length pruning left it with).
    pub(crate) fn discard(&mut self, count: usize) -> Result<()> {
        debug_assert!(count == 0 || self.twig_behind.is_empty(), "only drafting rounds discard, and they run the twig");
        self.base_cache.truncate_last(count)?;
        self.twig_cache.truncate_last(count)?;
        Ok(())
    }
}
