//! The Llama language model of LLaVA, split so callers can run any range of layers (the twig taps
//! layer K, token pruning changes the sequence between layers) and read logits at every position.

pub mod attention;
pub mod cache;
pub mod chunked;
pub mod layer;
pub mod prompt_state;
pub mod rope;
pub mod runner;
pub mod tree_mask;

use std::ops::Range;

use crate::ops::DecodeOps;
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::prelude::*;

pub use attention::{RowGroup, SelfAttention};
pub use cache::{KvCache, LayerKvCache};
pub use chunked::{PrefillSteps, DEFAULT_PREFILL_CHUNK_TOKENS};
pub use layer::{DecoderLayer, Mlp};
pub use prompt_state::{CachedPrefix, PromptState};
pub use rope::RopeAngles;
pub use runner::{Alone, HeadCall, StackCall, StackRunner};
pub use tree_mask::TreeMask;

use crate::config::LlamaConfig;
use crate::error::Result;
use crate::interrupt::Interrupted;
use crate::weights::WeightLoader;

/// Which query rows' attention probabilities to return, and from which layers.
#[derive(Debug, Clone, Default)]
pub struct AttentionProbe {
    /// Row indices within the tokens of the current forward, ascending.
    pub rows: Vec<usize>,
    /// Absolute layer indices; empty = every layer that runs.
    pub layers: Vec<usize>,
}

impl AttentionProbe {
    /// The last of `new` tokens, in every layer.
    pub fn last_row(new: usize) -> Self {
        Self { rows: vec![new.saturating_sub(1)], layers: Vec::new() }
    }

    /// The rows in `rows` (a chunk of the forward's tokens), as indices within it.
    fn within(&self, rows: Range<usize>) -> Self {
        let inside = self.rows.iter().filter(|row| rows.contains(row)).map(|row| row - rows.start).collect();
        Self { rows: inside, layers: self.layers.clone() }
    }

    fn rows_for(&self, layer: usize) -> Option<&[usize]> {
        (!self.rows.is_empty() && (self.layers.is_empty() || self.layers.contains(&layer)))
            .then_some(self.rows.as_slice())
    }
}

/// Result of running a range of layers.
#[derive(Debug)]
pub struct LayersOutput<B: Backend> {
    /// `[batch, new, hidden]` after the last layer of the range.
    pub hidden: Tensor<B, 3>,
    /// `(layer, [batch, heads, rows, keys])` for each probed layer.
    pub attention: Vec<(usize, Tensor<B, 4>)>,
}

/// Runs a stack of decoder layers whose first one is layer `first_index` of `cache` and `probe`
/// (the base model's own layers, its tuned copies, or a twig's blocks with their own cache).
pub fn forward_stack<B: DecodeOps>(
    layers: &[DecoderLayer<B>],
    first_index: usize,
    hidden: Tensor<B, 3>,
    rope: &RopeAngles<B>,
    cache: &mut KvCache<B>,
    probe: &AttentionProbe,
) -> LayersOutput<B> {
    let segment = Segment { hidden, rope, cache, probe, tree: None };
    forward_segments(layers, first_index, vec![segment]).pop().expect("one output per segment")
}

/// One request's tokens in a forward of several requests side by side ([`forward_segments`]).
pub struct Segment<'a, B: Backend> {
    /// `[1, new, hidden]` (any batch when alone).
    pub hidden: Tensor<B, 3>,
    pub rope: &'a RopeAngles<B>,
    pub cache: &'a mut KvCache<B>,
    pub probe: &'a AttentionProbe,
    pub tree: Option<&'a TreeMask>,
}

/// [`forward_stack`] for several requests at once: their rows run side by side through every
/// norm, projection and MLP of the stack, and each segment attends only to its own cache, with
/// its own positions, probe and tree. On a backend whose linear layers round every row alike
/// (the CPU kernels), each output equals the segment's forward alone.
pub fn forward_segments<B: DecodeOps>(
    layers: &[DecoderLayer<B>],
    first_index: usize,
    mut segments: Vec<Segment<'_, B>>,
) -> Vec<LayersOutput<B>> {
    let sizes: Vec<usize> = segments.iter().map(|segment| segment.hidden.dims()[1]).collect();
    let mut hidden = match segments.len() {
        1 => segments[0].hidden.clone(),
        _ => Tensor::cat(segments.iter().map(|segment| segment.hidden.clone()).collect(), 1),
    };
    let rope = match segments.len() {
        1 => segments[0].rope.clone(),
        _ => RopeAngles::cat(segments.iter().map(|segment| segment.rope)),
    };
    let mut attention: Vec<Vec<(usize, Tensor<B, 4>)>> = segments.iter().map(|_| Vec::new()).collect();
    for (offset, layer) in layers.iter().enumerate() {
        let index = first_index + offset;
        let mut groups: Vec<RowGroup<'_, B>> = segments
            .iter_mut()
            .zip(&sizes)
            .map(|(segment, &rows)| RowGroup {
                rows,
                cache: segment.cache.layer_mut(index),
                probe_rows: segment.probe.rows_for(index),
                tree: segment.tree,
            })
            .collect();
        let (out, probes) = layer.forward_groups(hidden, &rope, &mut groups);
        hidden = out;
        for (found, probs) in attention.iter_mut().zip(probes) {
            found.extend(probs.map(|probs| (index, probs)));
        }
    }
    let mut start = 0;
    sizes
        .iter()
        .zip(attention)
        .map(|(&rows, attention)| {
            let part = if sizes.len() == 1 { hidden.clone() } else { hidden.clone().narrow(1, start, rows) };
            start += rows;
            LayersOutput { hidden: part, attention }
        })
        .collect()
}

#[derive(Module, Debug)]
pub struct LlamaDecoder<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    pub lm_head: Linear<B>,
    pub head_dim: usize,
    pub rope_theta: f64,
}

impl<B: DecodeOps> LlamaDecoder<B> {
    /// Loads `{prefix}.embed_tokens`, `{prefix}.layers.{i}.*`, `{prefix}.norm` and `{head}` (or the
    /// embedding matrix when the config ties them).
    pub fn load(loader: &WeightLoader<B>, prefix: &str, head: &str, cfg: &LlamaConfig) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let layers = (0..cfg.num_layers)
            .map(|i| DecoderLayer::load(loader, &format!("{prefix}.layers.{i}"), cfg))
            .collect::<Result<Vec<_>>>()?;
        let embedding_name = format!("{prefix}.embed_tokens.weight");
        let head_name = format!("{head}.weight");
        let lm_head = if cfg.tie_word_embeddings && !loader.contains(&head_name) {
            loader.tied_linear(&embedding_name, cfg.vocab_size, d)?
        } else {
            loader.linear(head, d, cfg.vocab_size, false)?
        };
        Ok(Self {
            embed_tokens: loader.embedding(&embedding_name, cfg.vocab_size, d)?,
            layers,
            norm: loader.rms_norm(&format!("{prefix}.norm.weight"), d, eps)?,
            lm_head,
            head_dim: cfg.head_dim,
            rope_theta: cfg.rope_theta,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn hidden_size(&self) -> usize {
        self.embed_tokens.weight.dims()[1]
    }

    pub fn vocab_size(&self) -> usize {
        self.lm_head.weight.dims()[1]
    }

    /// # Shapes
    /// - ids: `[batch, seq]` → `[batch, seq, hidden]`
    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.embed_tokens.forward(ids)
    }

    /// Rotary angles for tokens at these absolute positions.
    pub fn rope(&self, positions: &[usize], device: &B::Device) -> RopeAngles<B> {
        RopeAngles::new(positions, self.head_dim, self.rope_theta, device)
    }

    /// Runs `layers` on `hidden` (tokens at the positions `rope` was built for), appending to each
    /// layer's cache.
    pub fn forward_layers(
        &self,
        hidden: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        layers: Range<usize>,
        cache: &mut KvCache<B>,
        probe: &AttentionProbe,
    ) -> LayersOutput<B> {
        forward_stack(&self.layers[layers.clone()], layers.start, hidden, rope, cache, probe)
    }

    /// [`Self::forward_layers`] over a prompt in chunks of tokens, asking `steps`' interrupt
    /// before each layer of each chunk ([`chunked`]); the cache then holds what ran.
    pub fn prefill_layers<'m>(
        &'m self,
        hidden: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        layers: Range<usize>,
        cache: &mut KvCache<B>,
        probe: &AttentionProbe,
        steps: &PrefillSteps<'_, 'm, B>,
    ) -> std::result::Result<LayersOutput<B>, Interrupted> {
        chunked::prefill_stack(&self.layers[layers.clone()], layers.start, hidden, rope, cache, probe, steps)
    }

    /// Final norm and LM head at every given position.
    ///
    /// # Shapes
    /// - hidden: `[batch, seq, hidden]` → `[batch, seq, vocab]`
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        self.head_call(hidden).run()
    }

    /// [`Self::logits`] as a call for a [`StackRunner`].
    pub fn head_call(&self, hidden: Tensor<B, 3>) -> HeadCall<'_, B> {
        HeadCall { norm: &self.norm, head: &self.lm_head, outputs: None, hidden, continuation: false }
    }

    /// `layers` over `hidden` at the positions of `rope`, as a call for a [`StackRunner`].
    pub fn stack_call(&self, layers: Range<usize>, hidden: Tensor<B, 3>, rope: &RopeAngles<B>) -> StackCall<'_, B> {
        StackCall::new(&self.layers[layers.clone()], layers.start, hidden, rope)
    }

    /// The logits at the last of `hidden`'s positions (`[1, seq, hidden]`), on the host.
    pub fn last_position_logits(&self, hidden: Tensor<B, 3>) -> Vec<f32> {
        let seq = hidden.dims()[1];
        let logits = self.logits(hidden.narrow(1, seq - 1, 1));
        logits.into_data().convert::<f32>().into_vec::<f32>().expect("f32 logits")
    }
}
