//! Llama self-attention with grouped-query heads, a per-layer KV cache, and an optional probe
//! that returns the attention probabilities of chosen query rows (the full matrix is never built).

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::softmax;

use super::cache::LayerKvCache;
use super::rope::RopeAngles;
use super::tree_mask::TreeMask;
use crate::ops::reference::repeat_kv;
use crate::ops::{linear, linears, DecodeOps, KeyMask};

#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl<B: DecodeOps> SelfAttention<B> {
    /// Attends the new tokens to everything cached in this layer plus themselves: causally, or,
    /// with a `tree`, as the draft tree in the cache's tail allows. Without a tree the new tokens
    /// must come after every cached entry in sequence order. The probe follows the causal rule.
    ///
    /// # Shapes
    /// - x: `[batch, new, hidden]` → `[batch, new, hidden]`
    /// - probe (if `probe_rows` is given): `[batch, heads, rows, cached + new]`, rows index `new`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        cache: &mut LayerKvCache<B>,
        probe_rows: Option<&[usize]>,
        tree: Option<&TreeMask>,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 4>>) {
        let [batch, new, _] = x.dims();
        let heads = |t: Tensor<B, 3>, n: usize| t.reshape([batch, new, n, self.head_dim]).swap_dims(1, 2);
        let [q, k, v] = linears([&self.q_proj, &self.k_proj, &self.v_proj], x);
        let q = rope.apply(heads(q, self.num_heads));
        let k = rope.apply(heads(k, self.num_kv_heads));
        let v = heads(v, self.num_kv_heads);
        let past = cache.len();
        let (k, v) = cache.append(k, v);

        let probe = probe_rows.map(|rows| self.row_probabilities(q.clone(), k.clone(), rows, past));
        let mask = tree.map_or(KeyMask::Causal, KeyMask::Tree);
        let out = <B as DecodeOps>::attention(q, k, v, mask);
        let out = out.swap_dims(1, 2).reshape([batch, new, self.num_heads * self.head_dim]);
        (linear(&self.o_proj, out), probe)
    }

    /// Softmax rows for the chosen queries, with the same causal rule as the main path. Built from
    /// row slices and an additive mask only: a row `select` plus a broadcast boolean mask gave
    /// wrong rows on wgpu (lavapipe) for short prompts.
    fn row_probabilities(&self, q: Tensor<B, 4>, k: Tensor<B, 4>, rows: &[usize], past: usize) -> Tensor<B, 4> {
        let device = q.device();
        let head_dim = q.dims()[3];
        let total = k.dims()[2];
        let q_rows = Tensor::cat(rows.iter().map(|&r| q.clone().narrow(2, r, 1)).collect(), 2);
        let scale = (head_dim as f64).powf(-0.5);
        let scores = q_rows.matmul(repeat_kv(k, self.num_heads / self.num_kv_heads).swap_dims(2, 3)) * scale;
        let mask: Vec<f32> = rows
            .iter()
            .flat_map(|&r| (0..total).map(move |key| if key > past + r { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [rows.len(), total]), &device).unsqueeze::<4>();
        softmax(scores + mask, 3)
    }
}
