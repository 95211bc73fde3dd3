//! What a decode loop runs: a causal network that turns embedded tokens into next-token logits
//! and keeps its own KV cache. The base model is one; the twig's shallow network (base layers
//! 0..K-1, then the twig's blocks, norm and head) is the other, and the self-speculative decoder
//! drafts with it.

use burn::prelude::*;
use twigvlm_backbone::ops::DecodeOps;
use twigvlm_backbone::{KvCache, LlamaDecoder, StackRunner};
use twigvlm_twig::Twig;

pub trait CausalNetwork<'m, B: DecodeOps> {
    type Cache;

    fn new_cache(&self) -> Self::Cache;

    /// Where the network's weights live.
    fn device(&self) -> B::Device;

    /// Token embeddings `[batch, seq]` → `[batch, seq, hidden]`.
    fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3>;

    /// Runs `embeds` (`[1, seq, hidden]`, tokens at `positions`) through `runner`, appending to
    /// `cache`, and returns the logits at the last position, `[1, 1, vocab]`.
    fn last_logits(
        &self,
        runner: &dyn StackRunner<'m, B>,
        embeds: Tensor<B, 3>,
        positions: &[usize],
        cache: &mut Self::Cache,
    ) -> Tensor<B, 3>;
}

fn last_position<B: DecodeOps>(hidden: Tensor<B, 3>) -> Tensor<B, 3> {
    let seq = hidden.dims()[1];
    hidden.narrow(1, seq - 1, 1)
}

/// The base model.
impl<'m, B: DecodeOps> CausalNetwork<'m, B> for &'m LlamaDecoder<B> {
    type Cache = KvCache<B>;

    fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.num_layers())
    }

    fn device(&self) -> B::Device {
        self.embed_tokens.weight.device()
    }

    fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        LlamaDecoder::embed(self, ids)
    }

    fn last_logits(
        &self,
        runner: &dyn StackRunner<'m, B>,
        embeds: Tensor<B, 3>,
        positions: &[usize],
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        let model: &'m LlamaDecoder<B> = self;
        let rope = model.rope(positions, &embeds.device());
        let out = runner.run_stack(model.stack_call(0..model.num_layers(), embeds, &rope), cache);
        runner.run_head(model.head_call(last_position(out.hidden)).continuing(true))
    }
}

/// The twig's shallow network: the base's layers below K, then the twig.
pub struct ShallowNetwork<'a, B: Backend> {
    pub base: &'a LlamaDecoder<B>,
    pub twig: &'a Twig<B>,
}

/// The shallow network's caches: the base layers below K, and the twig's blocks.
pub struct ShallowCache<B: Backend> {
    pub base: KvCache<B>,
    pub twig: KvCache<B>,
}

impl<'m, B: DecodeOps> CausalNetwork<'m, B> for ShallowNetwork<'m, B> {
    type Cache = ShallowCache<B>;

    fn new_cache(&self) -> ShallowCache<B> {
        ShallowCache { base: KvCache::new(self.twig.config.k), twig: self.twig.new_cache() }
    }

    fn device(&self) -> B::Device {
        self.base.embed_tokens.weight.device()
    }

    fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.base.embed(ids)
    }

    fn last_logits(
        &self,
        runner: &dyn StackRunner<'m, B>,
        embeds: Tensor<B, 3>,
        positions: &[usize],
        cache: &mut ShallowCache<B>,
    ) -> Tensor<B, 3> {
        let rope = self.base.rope(positions, &embeds.device());
        let below_k = runner.run_stack(self.base.stack_call(0..self.twig.config.k, embeds, &rope), &mut cache.base);
        let twig_out = runner.run_stack(self.twig.stack_call(below_k.hidden, &rope).continuing(true), &mut cache.twig);
        runner.run_head(self.twig.head_call(last_position(twig_out.hidden), &self.base.lm_head, None).continuing(true))
    }
}
