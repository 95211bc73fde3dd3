//! Llama self-attention with grouped-query heads, a per-layer KV cache, and an optional probe
//! that returns the attention probabilities of chosen query rows (the full matrix is never built).

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::softmax;

use super::cache::LayerKvCache;
use super::rope::RopeAngles;
use super::tree_mask::TreeMask;
use crate::ops::reference::repeat_kv;
use crate::ops::{linear_add, linears, DecodeOps, KeyMask};

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

/// One request's rows in a forward that may hold several requests' rows one after another (a
/// batch of requests shares the projections; each attends only to its own cache).
pub struct RowGroup<'a, B: Backend> {
    /// How many consecutive rows of the forward are this request's.
    pub rows: usize,
    /// This layer's cache of the request.
    pub cache: &'a mut LayerKvCache<B>,
    /// Rows (within the group) whose attention probabilities to return.
    pub probe_rows: Option<&'a [usize]>,
    /// The draft tree the rows are, if they are one.
    pub tree: Option<&'a TreeMask>,
}

impl<B: DecodeOps> SelfAttention<B> {
    /// Attends each group's new tokens to everything cached in its layer cache plus themselves:
    /// causally, or, with a tree, as the draft tree in the cache's tail allows. Without a tree
    /// the new tokens must come after every cached entry in sequence order. The probe follows the
    /// causal rule. Several groups are consecutive rows of requests side by side (batch 1): the
    /// projections and the rotary embedding (`rope`: the angles of all rows) see all rows at
    /// once, and each row's result is what a forward of its group alone gives on a backend whose
    /// linear layers round every row alike. The result is added to `residual` in the output
    /// projection.
    ///
    /// # Shapes
    /// - x and residual: `[batch, Σ rows, hidden]` → `[batch, Σ rows, hidden]`
    /// - each group's probe (if it has `probe_rows`): `[batch, heads, probed, cached + rows]`
    pub fn forward_groups_add(
        &self,
        x: Tensor<B, 3>,
        residual: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        groups: &mut [RowGroup<'_, B>],
    ) -> (Tensor<B, 3>, Vec<Option<Tensor<B, 4>>>) {
        let [batch, total, _] = x.dims();
        let heads = |t: Tensor<B, 3>, n: usize| t.reshape([batch, total, n, self.head_dim]).swap_dims(1, 2);
        let [q, k, v] = linears([&self.q_proj, &self.k_proj, &self.v_proj], x);
        let q = rope.apply(heads(q, self.num_heads));
        let k = rope.apply(heads(k, self.num_kv_heads));
        let v = heads(v, self.num_kv_heads);
        let single = groups.len() == 1;
        let mut start = 0;
        let mut outs = Vec::with_capacity(groups.len());
        let mut probes = Vec::with_capacity(groups.len());
        for group in groups.iter_mut() {
            let rows = |t: &Tensor<B, 4>| if single { t.clone() } else { t.clone().narrow(2, start, group.rows) };
            let (out, probe) = self.attend([rows(&q), rows(&k), rows(&v)], group);
            outs.push(out);
            probes.push(probe);
            start += group.rows;
        }
        let out = if single { outs.remove(0) } else { Tensor::cat(outs, 1) };
        (linear_add(&self.o_proj, out, residual), probes)
    }

    /// One group's rows (`[batch, heads, rows, head_dim]`, rotated) against its cache:
    /// `[batch, rows, heads · head_dim]` before the output projection.
    fn attend(
        &self,
        [q, k, v]: [Tensor<B, 4>; 3],
        group: &mut RowGroup<'_, B>,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 4>>) {
        let [batch, _, new, _] = q.dims();
        let past = group.cache.len();
        let (k, v) = group.cache.append(k, v);

        let probe = group.probe_rows.map(|rows| self.row_probabilities(q.clone(), k.clone(), rows, past));
        let mask = group.tree.map_or(KeyMask::Causal, KeyMask::Tree);
        let out = <B as DecodeOps>::attention(q, k, v, mask);
        (out.swap_dims(1, 2).reshape([batch, new, self.num_heads * self.head_dim]), probe)
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
