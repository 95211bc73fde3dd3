//! The hot operations of a forward pass as a backend extension: [`DecodeOps`] has a default body
//! for each operation, written in burn tensor ops ([`reference`]), so that every backend, and
//! `Autodiff<B>` for training, runs the model unchanged; a backend overrides the operations it
//! has a faster kernel for (the CPU backend: [`flex`]). Model code is generic over
//! `B: DecodeOps` and calls the operations through this trait only.
//!
//! Contract of an override: the same result as [`reference`] up to float rounding (tested per
//! operation), for any number of rows and any shapes the reference accepts.

mod flex;
#[cfg(feature = "gpu")]
mod gpu;
pub mod reference;

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::Autodiff;
use burn::nn::{Linear, RmsNorm};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::config::Activation;
use crate::llama::TreeMask;

/// A backend that runs the model's hot operations (see the module docs).
pub trait DecodeOps: Backend {
    /// `x · weight + bias` over the last dimension.
    ///
    /// # Shapes
    /// - x: `[batch, seq, d_in]`, weight: `[d_in, d_out]`, bias: `[d_out]` → `[batch, seq, d_out]`
    ///
    /// `weight` may be stored in another float type than `x` (see [`DecodeOps::linear_weight`]).
    fn linear(x: Tensor<Self, 3>, weight: Tensor<Self, 2>, bias: Option<Tensor<Self, 1>>) -> Tensor<Self, 3> {
        reference::linear(x, weight, bias)
    }

    /// [`DecodeOps::linear`] of one input by several `(weight, bias)` pairs (a layer's query, key
    /// and value projections), each result as the single product would give it.
    fn linear_many(x: Tensor<Self, 3>, layers: Vec<LinearParts<Self>>) -> Vec<Tensor<Self, 3>> {
        layers.into_iter().map(|(weight, bias)| <Self as DecodeOps>::linear(x.clone(), weight, bias)).collect()
    }

    /// `residual + x · weight + bias`: a projection added to the residual stream.
    ///
    /// # Shapes
    /// - x: `[batch, seq, d_in]`, residual: `[batch, seq, d_out]` → `[batch, seq, d_out]`
    fn linear_add(
        x: Tensor<Self, 3>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
        residual: Tensor<Self, 3>,
    ) -> Tensor<Self, 3> {
        <Self as DecodeOps>::linear(x, weight, bias) + residual
    }

    /// An MLP's gated hidden state from its two input projections `(weight, bias)`:
    /// `activation(x · gate) · (x · up)`.
    fn gated_linear(
        x: Tensor<Self, 3>,
        gate: LinearParts<Self>,
        up: LinearParts<Self>,
        activation: Activation,
    ) -> Tensor<Self, 3> {
        gated_linear_in_two_steps::<Self>(x, gate, up, activation)
    }

    /// The `[d_in, d_out]` weight of a linear layer from the checkpoint's `[d_out, d_in]`
    /// (PyTorch's layout) in the float type the caller wants it stored in, laid out as this
    /// backend's [`DecodeOps::linear`] reads it fastest. A backend that cannot compute with
    /// another float type than its own converts to its own.
    fn linear_weight(out_in: TensorData, device: &Self::Device) -> Tensor<Self, 2> {
        reference::linear_weight(out_in, device)
    }

    /// Softmax attention of new query rows over a layer's cached keys and values, which include
    /// the new rows' own (the new rows are the last `rows` keys). Each KV head serves
    /// `heads / kv_heads` consecutive query heads; scores are scaled by `1/√head_dim`.
    ///
    /// # Shapes
    /// - q: `[batch, heads, rows, head_dim]`, k and v: `[batch, kv_heads, keys, head_dim]`
    ///   → `[batch, heads, rows, head_dim]`
    fn attention(q: Tensor<Self, 4>, k: Tensor<Self, 4>, v: Tensor<Self, 4>, mask: KeyMask<'_>) -> Tensor<Self, 4> {
        reference::attention(q, k, v, mask)
    }

    /// RMSNorm over the last dimension: `x / √(mean(x²) + epsilon) · gamma`.
    ///
    /// # Shapes
    /// - x: `[batch, seq, d]`, gamma: `[d]` → `[batch, seq, d]`
    fn rms_norm(x: Tensor<Self, 3>, gamma: Tensor<Self, 1>, epsilon: f64) -> Tensor<Self, 3> {
        reference::rms_norm(x, gamma, epsilon)
    }

    /// The gated product of a SwiGLU-style MLP: `activation(gate) · up`.
    fn gated(gate: Tensor<Self, 3>, up: Tensor<Self, 3>, activation: Activation) -> Tensor<Self, 3> {
        reference::gated(gate, up, activation)
    }

    /// Rotary embedding (`rotate_half` convention): `x·cos + rotate_half(x)·sin`.
    ///
    /// # Shapes
    /// - x: `[batch, heads, seq, head_dim]`, cos and sin: `[1, 1, seq, head_dim]` → like x
    fn rope(x: Tensor<Self, 4>, cos: Tensor<Self, 4>, sin: Tensor<Self, 4>) -> Tensor<Self, 4> {
        reference::rope(x, cos, sin)
    }
}

/// A linear layer's `[d_in, d_out]` weight and its bias, if it has one, as [`DecodeOps`] takes them.
pub type LinearParts<B> = (Tensor<B, 2>, Option<Tensor<B, 1>>);

/// `layer`'s weight and bias as [`DecodeOps`] takes them.
fn parts<B: Backend>(layer: &Linear<B>) -> LinearParts<B> {
    (layer.weight.val(), layer.bias.as_ref().map(|bias| bias.val()))
}

/// Which keys each new query row of [`DecodeOps::attention`] sees.
#[derive(Debug, Clone, Copy)]
pub enum KeyMask<'a> {
    /// Every key up to its own position (the rows follow every cached key in sequence order).
    Causal,
    /// The committed context and its own ancestors in a draft tree.
    Tree(&'a TreeMask),
}

/// [`DecodeOps`] on both sides of an autodiff backend: what training code is generic over.
pub trait DecodeAutodiff: AutodiffBackend<InnerBackend: DecodeOps> + DecodeOps {}

impl<B: AutodiffBackend<InnerBackend: DecodeOps> + DecodeOps> DecodeAutodiff for B {}

/// Training differentiates the default bodies.
impl<B: DecodeOps, C: CheckpointStrategy> DecodeOps for Autodiff<B, C> {}

/// `layer(x)` through [`DecodeOps::linear`].
pub fn linear<B: DecodeOps>(layer: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let (weight, bias) = parts(layer);
    <B as DecodeOps>::linear(x, weight, bias)
}

/// `[layer(x) for layer in layers]` through [`DecodeOps::linear_many`].
pub fn linears<B: DecodeOps, const N: usize>(layers: [&Linear<B>; N], x: Tensor<B, 3>) -> [Tensor<B, 3>; N] {
    let pairs = layers.iter().map(|layer| parts(layer)).collect();
    B::linear_many(x, pairs).try_into().unwrap_or_else(|_| unreachable!("one result per layer"))
}

/// `residual + layer(x)` through [`DecodeOps::linear_add`].
pub fn linear_add<B: DecodeOps>(layer: &Linear<B>, x: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
    let (weight, bias) = parts(layer);
    B::linear_add(x, weight, bias, residual)
}

/// `activation(gate(x)) · up(x)` through [`DecodeOps::gated_linear`].
pub fn gated_linear<B: DecodeOps>(
    gate: &Linear<B>,
    up: &Linear<B>,
    x: Tensor<B, 3>,
    activation: Activation,
) -> Tensor<B, 3> {
    B::gated_linear(x, parts(gate), parts(up), activation)
}

/// [`DecodeOps::gated_linear`] as the two projections ([`DecodeOps::linear_many`]) and then
/// [`DecodeOps::gated`]: the default body, and the way back for an override.
pub fn gated_linear_in_two_steps<B: DecodeOps>(
    x: Tensor<B, 3>,
    gate: LinearParts<B>,
    up: LinearParts<B>,
    activation: Activation,
) -> Tensor<B, 3> {
    let [gate, up] = B::linear_many(x, vec![gate, up]).try_into().unwrap_or_else(|_| unreachable!("two products"));
    B::gated(gate, up, activation)
}

/// `norm(x)` through [`DecodeOps::rms_norm`].
pub fn rms_norm<B: DecodeOps>(norm: &RmsNorm<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    B::rms_norm(x, norm.gamma.val(), norm.epsilon)
}
