//! One Llama decoder layer: pre-norm attention and SwiGLU MLP with residuals.

use burn::nn::{Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::prelude::*;

use super::attention::{RowGroup, SelfAttention};
use super::rope::RopeAngles;
use crate::config::{Activation, LlamaConfig};
use crate::error::Result;
use crate::ops::{gated_linear, linear_add, rms_norm, DecodeOps};
use crate::weights::WeightLoader;

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
    #[module(skip)]
    pub activation: Activation,
}

impl<B: DecodeOps> Mlp<B> {
    /// `residual + down(activation(gate(x)) · up(x))`: the residual added in the last projection.
    pub fn forward_add(&self, x: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        let hidden = gated_linear(&self.gate_proj, &self.up_proj, x, self.activation);
        linear_add(&self.down_proj, hidden, residual)
    }
}

#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: SelfAttention<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub mlp: Mlp<B>,
}

impl<B: DecodeOps> DecoderLayer<B> {
    /// Loads `{prefix}.input_layernorm`, `{prefix}.self_attn.*`, `{prefix}.post_attention_layernorm`
    /// and `{prefix}.mlp.*`.
    pub fn load(loader: &WeightLoader<B>, prefix: &str, cfg: &LlamaConfig) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let (q_dim, kv_dim) = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim);
        let attn = |name: &str, d_in, d_out| {
            loader.linear(&format!("{prefix}.self_attn.{name}"), d_in, d_out, cfg.attention_bias)
        };
        let mlp = |name: &str, d_in, d_out| loader.linear(&format!("{prefix}.mlp.{name}"), d_in, d_out, cfg.mlp_bias);
        Ok(Self {
            input_layernorm: loader.rms_norm(&format!("{prefix}.input_layernorm.weight"), d, eps)?,
            self_attn: SelfAttention {
                q_proj: attn("q_proj", d, q_dim)?,
                k_proj: attn("k_proj", d, kv_dim)?,
                v_proj: attn("v_proj", d, kv_dim)?,
                o_proj: attn("o_proj", q_dim, d)?,
                num_heads: cfg.num_heads,
                num_kv_heads: cfg.num_kv_heads,
                head_dim: cfg.head_dim,
            },
            post_attention_layernorm: loader.rms_norm(&format!("{prefix}.post_attention_layernorm.weight"), d, eps)?,
            mlp: Mlp {
                gate_proj: mlp("gate_proj", d, cfg.intermediate_size)?,
                up_proj: mlp("up_proj", d, cfg.intermediate_size)?,
                down_proj: mlp("down_proj", cfg.intermediate_size, d)?,
                activation: cfg.mlp_activation,
            },
        })
    }

    /// A randomly initialised layer of this shape (burn's default initialisers, unit norms).
    pub fn init(cfg: &LlamaConfig, device: &B::Device) -> Self {
        let (d, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let (q_dim, kv_dim) = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim);
        let linear =
            |d_in: usize, d_out: usize, bias: bool| LinearConfig::new(d_in, d_out).with_bias(bias).init(device);
        let norm = || RmsNormConfig::new(d).with_epsilon(eps).init(device);
        Self {
            input_layernorm: norm(),
            self_attn: SelfAttention {
                q_proj: linear(d, q_dim, cfg.attention_bias),
                k_proj: linear(d, kv_dim, cfg.attention_bias),
                v_proj: linear(d, kv_dim, cfg.attention_bias),
                o_proj: linear(q_dim, d, cfg.attention_bias),
                num_heads: cfg.num_heads,
                num_kv_heads: cfg.num_kv_heads,
                head_dim: cfg.head_dim,
            },
            post_attention_layernorm: norm(),
            mlp: Mlp {
                gate_proj: linear(d, cfg.intermediate_size, cfg.mlp_bias),
                up_proj: linear(d, cfg.intermediate_size, cfg.mlp_bias),
                down_proj: linear(cfg.intermediate_size, d, cfg.mlp_bias),
                activation: cfg.mlp_activation,
            },
        }
    }

    /// The layer over consecutive groups of rows, each a request with its own cache (one group:
    /// a single request, any batch), `rope` holding the angles of all rows; norms, projections
    /// and the MLP see all rows at once, the attention is [`SelfAttention::forward_groups_add`].
    ///
    /// # Shapes
    /// - x: `[batch, Σ rows, hidden]` → `[batch, Σ rows, hidden]`, one probe (or none) per group
    pub fn forward_groups(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        groups: &mut [RowGroup<'_, B>],
    ) -> (Tensor<B, 3>, Vec<Option<Tensor<B, 4>>>) {
        let normed = rms_norm(&self.input_layernorm, x.clone());
        let (x, probes) = self.self_attn.forward_groups_add(normed, x, rope, groups);
        let x = self.mlp.forward_add(rms_norm(&self.post_attention_layernorm, x.clone()), x);
        (x, probes)
    }
}
