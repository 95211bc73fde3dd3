//! Who runs a request's layer stacks and output heads. Decoders and prefills describe each
//! forward as a [`StackCall`] (layers over new tokens, against the request's cache) or a
//! [`HeadCall`] (final norm and LM head) and hand it to a [`StackRunner`]: [`Alone`] runs it at
//! once; a batching runner (the engine's batch) runs it side by side with other requests' calls
//! of the same layers or head ([`run_stacks`], [`run_heads`]) and returns this request's part.

use burn::nn::{Linear, RmsNorm};
use burn::prelude::*;

use super::{forward_segments, AttentionProbe, DecoderLayer, KvCache, LayersOutput, RopeAngles, Segment, TreeMask};
use crate::ops::{linear, rms_norm, DecodeOps};

/// One request's forward through a stack of layers.
#[derive(Debug, Clone)]
pub struct StackCall<'m, B: Backend> {
    /// The layers; the first is layer `first_index` of the cache and the probe.
    pub layers: &'m [DecoderLayer<B>],
    pub first_index: usize,
    /// `[1, new, hidden]` (any batch when run alone).
    pub hidden: Tensor<B, 3>,
    /// The new tokens' rotary angles.
    pub rope: RopeAngles<B>,
    pub probe: AttentionProbe,
    /// The new tokens are these nodes of a draft tree (causal without one).
    pub tree: Option<TreeMask>,
    /// The call continues a piece of work an earlier call of the caller began (a later layer of a
    /// prompt chunk, a later step of a draft): a batching runner runs continuations before
    /// anyone's new work, so that a chunk or a draft is not held up by the others, and the new
    /// work of many requests (decoding steps, verifications) lines up in the same forwards.
    pub continuation: bool,
}

impl<'m, B: DecodeOps> StackCall<'m, B> {
    /// `layers` (the first being layer `first_index`) over `hidden` at the positions of `rope`,
    /// causal, nothing probed.
    pub fn new(layers: &'m [DecoderLayer<B>], first_index: usize, hidden: Tensor<B, 3>, rope: &RopeAngles<B>) -> Self {
        Self {
            layers,
            first_index,
            hidden,
            rope: rope.clone(),
            probe: AttentionProbe::default(),
            tree: None,
            continuation: false,
        }
    }

    pub fn with_probe(self, probe: &AttentionProbe) -> Self {
        Self { probe: probe.clone(), ..self }
    }

    pub fn with_tree(self, tree: &TreeMask) -> Self {
        Self { tree: Some(tree.clone()), ..self }
    }

    /// The same, marked as a [`Self::continuation`] or not.
    pub fn continuing(self, continuation: bool) -> Self {
        Self { continuation, ..self }
    }

    /// Whether `other` runs the same layers of the same model (a batching runner puts such calls
    /// side by side).
    pub fn same_layers(&self, other: &Self) -> bool {
        std::ptr::eq(self.layers, other.layers) && self.first_index == other.first_index
    }

    /// The new tokens.
    pub fn rows(&self) -> usize {
        self.hidden.dims()[1]
    }
}

/// One request's final norm and LM head over some hidden states.
#[derive(Debug, Clone)]
pub struct HeadCall<'m, B: Backend> {
    pub norm: &'m RmsNorm<B>,
    pub head: &'m Linear<B>,
    /// Only the head's first this many outputs (token ids); `None`: all of them.
    pub outputs: Option<usize>,
    /// `[1, rows, hidden]` (any batch when run alone).
    pub hidden: Tensor<B, 3>,
    /// As [`StackCall::continuation`].
    pub continuation: bool,
}

impl<B: DecodeOps> HeadCall<'_, B> {
    /// The same, marked as a continuation or not.
    pub fn continuing(self, continuation: bool) -> Self {
        Self { continuation, ..self }
    }

    /// Runs the head on its hidden states alone.
    ///
    /// # Shapes
    /// - hidden: `[batch, rows, hidden]` → `[batch, rows, outputs]`
    pub fn run(self) -> Tensor<B, 3> {
        let normed = rms_norm(self.norm, self.hidden);
        match self.outputs {
            None => linear(self.head, normed),
            Some(outputs) => {
                let weight = self.head.weight.val().narrow(1, 0, outputs);
                let bias = self.head.bias.as_ref().map(|bias| bias.val().narrow(0, 0, outputs));
                <B as DecodeOps>::linear(normed, weight, bias)
            }
        }
    }

    /// Whether `other` is the same head with the same outputs (a batching runner puts such
    /// calls side by side).
    pub fn same_head(&self, other: &Self) -> bool {
        std::ptr::eq(self.norm, other.norm) && std::ptr::eq(self.head, other.head) && self.outputs == other.outputs
    }

    /// The rows the head runs on.
    pub fn rows(&self) -> usize {
        self.hidden.dims()[1]
    }
}

/// Runs the forwards of one request (see the module docs). `'m` is how long the model's layers
/// are borrowed.
pub trait StackRunner<'m, B: DecodeOps> {
    /// Runs `call` against `cache`, appending the new tokens' keys and values.
    fn run_stack(&self, call: StackCall<'m, B>, cache: &mut KvCache<B>) -> LayersOutput<B>;

    /// Runs the head `call`: `[1, rows, outputs]` logits.
    fn run_head(&self, call: HeadCall<'m, B>) -> Tensor<B, 3>;
}

/// Runs every call at once on the calling thread: a request by itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Alone;

impl<'m, B: DecodeOps> StackRunner<'m, B> for Alone {
    fn run_stack(&self, call: StackCall<'m, B>, cache: &mut KvCache<B>) -> LayersOutput<B> {
        run_stacks(vec![(call, cache)]).pop().expect("one output per call")
    }

    fn run_head(&self, call: HeadCall<'m, B>) -> Tensor<B, 3> {
        call.run()
    }
}

/// Several requests' calls of the same layers ([`StackCall::same_layers`]) as one forward
/// ([`forward_segments`]); one output per call, in order.
///
/// # Panics
/// When the calls run different layers.
pub fn run_stacks<'m, B: DecodeOps>(calls: Vec<(StackCall<'m, B>, &mut KvCache<B>)>) -> Vec<LayersOutput<B>> {
    let (calls, caches): (Vec<StackCall<'m, B>>, Vec<&mut KvCache<B>>) = calls.into_iter().unzip();
    let first = calls.first().expect("at least one call");
    assert!(calls.iter().all(|call| call.same_layers(first)), "calls side by side run the same layers");
    let (layers, first_index) = (first.layers, first.first_index);
    let segments = calls
        .iter()
        .zip(caches)
        .map(|(call, cache)| Segment {
            hidden: call.hidden.clone(),
            rope: &call.rope,
            cache,
            probe: &call.probe,
            tree: call.tree.as_ref(),
        })
        .collect();
    forward_segments(layers, first_index, segments)
}

/// Several requests' calls of the same head ([`HeadCall::same_head`]) as one: their rows side by
/// side through the norm and the head. One output per call, in order; on a backend whose linear
/// layers round every row alike each equals the call run alone.
///
/// # Panics
/// When the calls use different heads.
pub fn run_heads<B: DecodeOps>(calls: Vec<HeadCall<'_, B>>) -> Vec<Tensor<B, 3>> {
    let first = calls.first().expect("at least one call").clone();
    assert!(calls.iter().all(|call| call.same_head(&first)), "calls side by side use the same head");
    if calls.len() == 1 {
        return vec![first.run()];
    }
    let sizes: Vec<usize> = calls.iter().map(HeadCall::rows).collect();
    let hidden = Tensor::cat(calls.into_iter().map(|call| call.hidden).collect(), 1);
    let logits = HeadCall { hidden, ..first }.run();
    let mut start = 0;
    sizes
        .into_iter()
        .map(|rows| {
            let part = logits.clone().narrow(1, start, rows);
            start += rows;
            part
        })
        .collect()
}
