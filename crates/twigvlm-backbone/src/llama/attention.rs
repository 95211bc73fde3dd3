//! Llama self-attention with grouped-query heads, a per-layer KV cache, and an optional probe
//! that returns the attention probabilities of chosen query rows (the full matrix is never built).

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use super::cache::LayerKvCache;
use super::rope::RopeAngles;
use super::tree_mask::TreeMask;
use crate::ops::{linear, DecodeOps};

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
        let q = rope.apply(heads(linear(&self.q_proj, x.clone()), self.num_heads));
        let k = rope.apply(heads(linear(&self.k_proj, x.clone()), self.num_kv_heads));
        let v = heads(linear(&self.v_proj, x), self.num_kv_heads);
        let past = cache.len();
        let (k, v) = cache.append(k, v);

        let probe = probe_rows.map(|rows| self.row_probabilities(q.clone(), k.clone(), rows, past));
        let out = match tree {
            Some(tree) => {
                let mask = tree.masked(k.dims()[2], &k.device());
                attention(q, self.repeat_kv(k), self.repeat_kv(v), Some(mask), None, AttentionModuleOptions::default())
            }
            None if new == 1 => self.attend_single_query(q, k, v),
            None => {
                let (k, v) = (self.repeat_kv(k), self.repeat_kv(v));
                attention(q, k, v, None, None, AttentionModuleOptions { is_causal: true, ..Default::default() })
            }
        };
        let out = out.swap_dims(1, 2).reshape([batch, new, self.num_heads * self.head_dim]);
        (linear(&self.o_proj, out), probe)
    }

    fn group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// One query per head needs no mask; grouping the heads that share a KV head as that head's
    /// "queries" avoids copying the cache `group_size` times.
    fn attend_single_query(&self, q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, _, _, head_dim] = q.dims();
        let grouped = q.reshape([batch, self.num_kv_heads, self.group_size(), head_dim]);
        let out = attention(grouped, k, v, None, None, AttentionModuleOptions::default());
        out.reshape([batch, self.num_heads, 1, head_dim])
    }

    /// `[batch, kv_heads, len, d]` → `[batch, heads, len, d]`, each KV head serving its group.
    fn repeat_kv(&self, t: Tensor<B, 4>) -> Tensor<B, 4> {
        let group = self.group_size();
        if group == 1 {
            return t;
        }
        let [batch, kv_heads, len, d] = t.dims();
        t.unsqueeze_dim::<5>(2).expand([batch, kv_heads, group, len, d]).reshape([batch, kv_heads * group, len, d])
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
        let scores = q_rows.matmul(self.repeat_kv(k).swap_dims(2, 3)) * scale;
        let mask: Vec<f32> = rows
            .iter()
            .flat_map(|&r| (0..total).map(move |key| if key > past + r { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [rows.len(), total]), &device).unsqueeze::<4>();
        softmax(scores + mask, 3)
    }
}
