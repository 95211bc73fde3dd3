//! The pruning head (TwigVLM++'s "P-Head"): a learned ranking of the visual tokens on top of the
//! twig's last block. Two gates, each a `d × d` linear map of the block's normed input, modulate
//! that block's rotated queries and keys feature by feature; the ranking is the head mean of the
//! softmax, over the visual tokens only, of the last prompt token's gated query against their
//! gated keys. The gate function is the logistic `σ(x·W)`: every gate lies in `(0, 1)`. With every
//! gate at ½, each attention head ranks the visual tokens as the block's own head does (a uniform
//! scale changes a softmax's temperature, not its order) and only the head mean weighs them a
//! little differently: the head starts from the `twig` policy's ranking (its small random
//! initial weights keep it there within a few percent) and learns away from it. TwigVLM++
//! describes its gates with a ReLU and a sigmoid; ours is the logistic alone, which can close a
//! feature as well as open it and has no region without gradient.
//!
//! Checkpoint keys (ours and the official layout alike): `leaf_attention_module.q_gate.weight`
//! `[heads·head_dim, d]` and `leaf_attention_module.k_gate.weight` `[kv_heads·head_dim, d]`, no
//! bias.

use std::ops::Range;

use burn::module::{Param, ParamId};
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::Distribution;
use twigvlm_backbone::llama::RopeAngles;
use twigvlm_backbone::ops::reference::repeat_kv;
use twigvlm_backbone::ops::{linear, rms_norm, DecodeOps};
use twigvlm_backbone::weights::WeightLoader;
use twigvlm_backbone::DecoderLayer;

use crate::error::Result;

/// Checkpoint prefix of the pruning head's tensors.
pub const PRUNING_HEAD_PREFIX: &str = "leaf_attention_module";
/// Initial gate weights are drawn with this standard deviation times `1/√d`: the gates start
/// within a few percent of ½ (the block's own ranking), each with a gradient.
const INIT_SCALE: f64 = 0.1;

#[derive(Module, Debug)]
pub struct PruningHead<B: Backend> {
    /// `d → heads · head_dim`: the query's gate.
    pub q_gate: Linear<B>,
    /// `d → kv_heads · head_dim`: each key's gate.
    pub k_gate: Linear<B>,
}

impl<B: DecodeOps> PruningHead<B> {
    /// A head for the twig's last `block`, starting (nearly) as the block's own ranking.
    pub fn init(block: &DecoderLayer<B>, device: &B::Device) -> Self {
        let attention = &block.self_attn;
        let d = attention.q_proj.weight.dims()[0];
        let gate = |d_out: usize| {
            let std = INIT_SCALE / (d as f64).sqrt();
            let weight = Tensor::random([d, d_out], Distribution::Normal(0.0, std), device);
            Linear { weight: Param::initialized(ParamId::new(), weight), bias: None }
        };
        Self {
            q_gate: gate(attention.num_heads * attention.head_dim),
            k_gate: gate(attention.num_kv_heads * attention.head_dim),
        }
    }

    /// Loads `{PRUNING_HEAD_PREFIX}.{q_gate,k_gate}.weight` for the twig's last `block`.
    pub fn load(loader: &WeightLoader<B>, block: &DecoderLayer<B>) -> Result<Self> {
        let attention = &block.self_attn;
        let d = attention.q_proj.weight.dims()[0];
        let gate = |name: &str, d_out: usize| loader.linear(&format!("{PRUNING_HEAD_PREFIX}.{name}"), d, d_out, false);
        Ok(Self {
            q_gate: gate("q_gate", attention.num_heads * attention.head_dim)?,
            k_gate: gate("k_gate", attention.num_kv_heads * attention.head_dim)?,
        })
    }

    /// The ranking distribution over the `visual` rows of a prompt: `block_input` is the hidden
    /// states entering the twig's last `block` (`[1, seq, d]`, the rows `rope` was built for),
    /// `query` the row that asks (the last prompt token). Differentiable in the gates.
    ///
    /// # Shapes
    /// - block_input: `[1, seq, d]` → `[visual.len()]`, summing to 1
    pub fn visual_distribution(
        &self,
        block: &DecoderLayer<B>,
        block_input: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        query: usize,
        visual: &Range<usize>,
    ) -> Tensor<B, 1> {
        let attention = &block.self_attn;
        let (heads, kv_heads, head_dim) = (attention.num_heads, attention.num_kv_heads, attention.head_dim);
        let x = rms_norm(&block.input_layernorm, block_input);
        let rows = |range: Range<usize>| x.clone().narrow(1, range.start, range.len());
        let split = |t: Tensor<B, 3>, n: usize| {
            let seq = t.dims()[1];
            t.reshape([1, seq, n, head_dim]).swap_dims(1, 2)
        };
        let gate = |layer: &Linear<B>, x: Tensor<B, 3>| sigmoid(linear(layer, x));
        let (x_q, x_k) = (rows(query..query + 1), rows(visual.clone()));
        let q = rope.rows(query..query + 1).apply(split(linear(&attention.q_proj, x_q.clone()), heads));
        let k = rope.rows(visual.clone()).apply(split(linear(&attention.k_proj, x_k.clone()), kv_heads));
        let q = q * split(gate(&self.q_gate, x_q), heads);
        let k = repeat_kv(k * split(gate(&self.k_gate, x_k), kv_heads), heads / kv_heads);
        let scores = q.matmul(k.swap_dims(2, 3)) * (head_dim as f64).powf(-0.5);
        softmax(scores, 3).mean_dim(1).reshape([visual.len()])
    }
}
