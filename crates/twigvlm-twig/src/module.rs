//! The twig module and its initialisation from the base language model.

use burn::nn::{Linear, RmsNorm};
use burn::prelude::*;
use twigvlm_backbone::config::LlamaConfig;
use twigvlm_backbone::llama::chunked::prefill_stack;
use twigvlm_backbone::llama::{forward_stack, LayersOutput, RopeAngles};
use twigvlm_backbone::{
    AttentionProbe, DecoderLayer, HeadCall, Interrupted, KvCache, LlamaDecoder, PrefillSteps, StackCall,
};

use crate::config::{TwigConfig, TwigHead, TwigInit};
use crate::error::Result;
use crate::pruning_head::PruningHead;
use twigvlm_backbone::ops::DecodeOps;

#[derive(Module, Debug)]
pub struct Twig<B: Backend> {
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    /// None: the base model's head is used (`TwigHead::Shared`).
    pub lm_head: Option<Linear<B>>,
    /// The learned ranking of the `twig++` policy (`config.pruning_head`).
    pub pruning_head: Option<PruningHead<B>>,
    #[module(skip)]
    pub config: TwigConfig,
}

impl<B: DecodeOps> Twig<B> {
    /// A twig for `base` initialised as `config.init` says. Copies share nothing with the base
    /// (training changes only the twig).
    pub fn init(
        base: &LlamaDecoder<B>,
        base_config: &LlamaConfig,
        config: TwigConfig,
        device: &B::Device,
    ) -> Result<Self> {
        config.validate(base.num_layers())?;
        let layers: Vec<DecoderLayer<B>> = match config.source_layers(base.num_layers()) {
            Some(range) => base.layers[range].iter().map(deep_copy).collect(),
            None => (0..config.t).map(|_| DecoderLayer::init(base_config, device)).collect(),
        };
        let norm = match config.init {
            TwigInit::Random => {
                burn::nn::RmsNormConfig::new(base.hidden_size()).with_epsilon(base_config.rms_norm_eps).init(device)
            }
            TwigInit::Adjacent | TwigInit::Last => deep_copy(&base.norm),
        };
        let lm_head = match config.head {
            TwigHead::Trained => Some(deep_copy(&base.lm_head)),
            TwigHead::Shared => None,
        };
        let last = layers.last().expect("validated: T ≥ 1");
        let pruning_head = config.pruning_head.then(|| PruningHead::init(last, device));
        Ok(Self { layers, norm, lm_head, pruning_head, config })
    }

    /// This twig with a freshly initialised pruning head in place of its own (or none), the
    /// rest unchanged: what training a head for an existing twig starts from.
    pub fn with_new_pruning_head(self, device: &B::Device) -> Self {
        let head = PruningHead::init(self.last_block(), device);
        Self { pruning_head: Some(head), config: TwigConfig { pruning_head: true, ..self.config }, ..self }
    }

    /// The twig's last block (the one TTP reads its ranking from).
    pub fn last_block(&self) -> &DecoderLayer<B> {
        self.layers.last().expect("a twig has at least one block")
    }

    /// A cache for the twig's own blocks (they never share the base's).
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.layers.len())
    }

    /// Runs the twig blocks on the base's hidden states entering layer K. Probe layers are twig
    /// block indices (0..T).
    ///
    /// # Shapes
    /// - hidden: `[batch, new, hidden]` → `[batch, new, hidden]`
    pub fn forward(
        &self,
        hidden: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        cache: &mut KvCache<B>,
        probe: &AttentionProbe,
    ) -> LayersOutput<B> {
        forward_stack(&self.layers, 0, hidden, rope, cache, probe)
    }

    /// [`Self::forward`] that also returns the hidden states entering the last block, what the
    /// pruning head ranks from ([`Self::pruning_distribution`]).
    pub fn forward_with_last_input(
        &self,
        hidden: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        cache: &mut KvCache<B>,
        probe: &AttentionProbe,
    ) -> (LayersOutput<B>, Tensor<B, 3>) {
        let run = |layers: &[DecoderLayer<B>], first, hidden| {
            Ok::<_, std::convert::Infallible>(forward_stack(layers, first, hidden, rope, cache, probe))
        };
        let Ok(output) = self.split_at_last_block(hidden, run);
        output
    }

    /// Only the hidden states entering the last block (the blocks below it run, the last does
    /// not): what the pruning head ranks from when the twig's output is not needed.
    pub fn last_block_input(
        &self,
        hidden: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        cache: &mut KvCache<B>,
        probe: &AttentionProbe,
    ) -> Tensor<B, 3> {
        forward_stack(&self.layers[..self.layers.len() - 1], 0, hidden, rope, cache, probe).hidden
    }

    /// [`Self::forward`] over a prompt in chunks of tokens, asking `steps`' interrupt before each
    /// block of each chunk ([`twigvlm_backbone::llama::chunked`]).
    pub fn prefill<'m>(
        &'m self,
        hidden: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        cache: &mut KvCache<B>,
        probe: &AttentionProbe,
        steps: &PrefillSteps<'_, 'm, B>,
    ) -> std::result::Result<LayersOutput<B>, Interrupted> {
        prefill_stack(&self.layers, 0, hidden, rope, cache, probe, steps)
    }

    /// [`Self::prefill`] that also returns the hidden states entering the last block, what the
    /// pruning head ranks from ([`Self::pruning_distribution`]).
    pub fn prefill_with_last_input<'m>(
        &'m self,
        hidden: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        cache: &mut KvCache<B>,
        probe: &AttentionProbe,
        steps: &PrefillSteps<'_, 'm, B>,
    ) -> std::result::Result<(LayersOutput<B>, Tensor<B, 3>), Interrupted> {
        let later = steps.under_way();
        self.split_at_last_block(hidden, |layers: &'m [DecoderLayer<B>], first, hidden| {
            let steps = if first == 0 { steps } else { &later };
            prefill_stack(layers, first, hidden, rope, cache, probe, steps)
        })
    }

    /// `run` over the blocks below the last, then over the last: the output of both and the
    /// hidden states entering the last block.
    fn split_at_last_block<'m, E>(
        &'m self,
        hidden: Tensor<B, 3>,
        mut run: impl FnMut(&'m [DecoderLayer<B>], usize, Tensor<B, 3>) -> std::result::Result<LayersOutput<B>, E>,
    ) -> std::result::Result<(LayersOutput<B>, Tensor<B, 3>), E> {
        let last = self.layers.len() - 1;
        let mut below = run(&self.layers[..last], 0, hidden)?;
        let input = below.hidden.clone();
        let mut out = run(&self.layers[last..], last, below.hidden)?;
        below.attention.append(&mut out.attention);
        Ok((LayersOutput { hidden: out.hidden, attention: below.attention }, input))
    }

    /// The pruning head's distribution over the `visual` rows asked from row `query`, given the
    /// hidden states entering the last block ([`PruningHead::visual_distribution`]); `None`
    /// without a pruning head.
    pub fn pruning_distribution(
        &self,
        last_input: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        query: usize,
        visual: &std::ops::Range<usize>,
    ) -> Option<Tensor<B, 1>> {
        let head = self.pruning_head.as_ref()?;
        Some(head.visual_distribution(self.last_block(), last_input, rope, query, visual))
    }

    /// The twig's blocks over `hidden` at the positions of `rope`, as a call for a
    /// [`twigvlm_backbone::StackRunner`].
    pub fn stack_call(&self, hidden: Tensor<B, 3>, rope: &RopeAngles<B>) -> StackCall<'_, B> {
        StackCall::new(&self.layers, 0, hidden, rope)
    }

    /// The twig's norm and head (or the base's head when shared).
    ///
    /// # Shapes
    /// - hidden: `[batch, seq, hidden]` → `[batch, seq, vocab]`
    pub fn logits(&self, hidden: Tensor<B, 3>, base_head: &Linear<B>) -> Tensor<B, 3> {
        self.head_call(hidden, base_head, None).run()
    }

    /// [`Self::logits`] as a call for a [`twigvlm_backbone::StackRunner`], computing only the
    /// first `outputs` token ids when given (the head's first rows).
    pub fn head_call<'a>(
        &'a self,
        hidden: Tensor<B, 3>,
        base_head: &'a Linear<B>,
        outputs: Option<usize>,
    ) -> HeadCall<'a, B> {
        HeadCall { norm: &self.norm, head: self.head(base_head), outputs, hidden, continuation: false }
    }

    /// The twig's own head, or the base's when it shares it.
    fn head<'a>(&'a self, base_head: &'a Linear<B>) -> &'a Linear<B> {
        self.lm_head.as_ref().unwrap_or(base_head)
    }
}

/// A copy with its own parameter ids and storage: the original stays untouched by training, and
/// the copy records as a separate module.
fn deep_copy<B: DecodeOps, M: Module<B>>(module: &M) -> M {
    struct Fresh;
    impl<B: DecodeOps> burn::module::ModuleMapper<B> for Fresh {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<Tensor<B, D>>,
        ) -> burn::module::Param<Tensor<B, D>> {
            let value = param.val();
            let copy = Tensor::from_data(value.to_data(), &value.device());
            burn::module::Param::initialized(burn::module::ParamId::new(), copy)
        }
    }
    module.clone().map(&mut Fresh)
}
