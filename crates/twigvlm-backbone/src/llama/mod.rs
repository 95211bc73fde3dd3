//! The Llama language model of LLaVA, split so callers can run any range of layers (the twig taps
//! layer K, token pruning changes the sequence between layers) and read logits at every position.

pub mod attention;
pub mod cache;
pub mod layer;
pub mod rope;

use std::ops::Range;

use burn::nn::{Embedding, Linear, RmsNorm};
use burn::prelude::*;

pub use attention::SelfAttention;
pub use cache::{KvCache, LayerKvCache};
pub use layer::{DecoderLayer, Mlp};
pub use rope::RopeAngles;

use crate::config::LlamaConfig;
use crate::error::Result;
use crate::weights::WeightLoader;

/// Which query rows' attention probabilities to return, and from which layers.
#[derive(Debug, Clone, Default)]
pub struct AttentionProbe {
    /// Row indices within the tokens of the current forward.
    pub rows: Vec<usize>,
    /// Absolute layer indices; empty = every layer that runs.
    pub layers: Vec<usize>,
}

impl AttentionProbe {
    /// The last of `new` tokens, in every layer.
    pub fn last_row(new: usize) -> Self {
        Self { rows: vec![new.saturating_sub(1)], layers: Vec::new() }
    }

    fn rows_for(&self, layer: usize) -> Option<&[usize]> {
        (!self.rows.is_empty() && (self.layers.is_empty() || self.layers.contains(&layer))).then_some(self.rows.as_slice())
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

#[derive(Module, Debug)]
pub struct LlamaDecoder<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    pub lm_head: Linear<B>,
    pub head_dim: usize,
    pub rope_theta: f64,
}

impl<B: Backend> LlamaDecoder<B> {
    /// Loads `{prefix}.embed_tokens`, `{prefix}.layers.{i}.*`, `{prefix}.norm` and `{head}` (or the
    /// embedding matrix when the config ties them).
    pub fn load(loader: &WeightLoader<B>, prefix: &str, head: &str, cfg: &LlamaConfig) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let q_dim = cfg.num_heads * cfg.head_dim;
        let kv_dim = cfg.num_kv_heads * cfg.head_dim;
        let layers = (0..cfg.num_layers)
            .map(|i| {
                let p = format!("{prefix}.layers.{i}");
                let attn = |name: &str, d_in, d_out| loader.linear(&format!("{p}.self_attn.{name}"), d_in, d_out, cfg.attention_bias);
                let mlp = |name: &str, d_in, d_out| loader.linear(&format!("{p}.mlp.{name}"), d_in, d_out, cfg.mlp_bias);
                Ok(DecoderLayer {
                    input_layernorm: loader.rms_norm(&format!("{p}.input_layernorm.weight"), d, eps)?,
                    self_attn: SelfAttention {
                        q_proj: attn("q_proj", d, q_dim)?,
                        k_proj: attn("k_proj", d, kv_dim)?,
                        v_proj: attn("v_proj", d, kv_dim)?,
                        o_proj: attn("o_proj", q_dim, d)?,
                        num_heads: cfg.num_heads,
                        num_kv_heads: cfg.num_kv_heads,
                        head_dim: cfg.head_dim,
                    },
                    post_attention_layernorm: loader.rms_norm(&format!("{p}.post_attention_layernorm.weight"), d, eps)?,
                    mlp: Mlp {
                        gate_proj: mlp("gate_proj", d, cfg.intermediate_size)?,
                        up_proj: mlp("up_proj", d, cfg.intermediate_size)?,
                        down_proj: mlp("down_proj", cfg.intermediate_size, d)?,
                        activation: cfg.mlp_activation,
                    },
                })
            })
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
        mut hidden: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        layers: Range<usize>,
        cache: &mut KvCache<B>,
        probe: &AttentionProbe,
    ) -> LayersOutput<B> {
        let mut attention = Vec::new();
        for index in layers {
            let (out, probs) = self.layers[index].forward(hidden, rope, cache.layer_mut(index), probe.rows_for(index));
            hidden = out;
            if let Some(probs) = probs {
                attention.push((index, probs));
            }
        }
        LayersOutput { hidden, attention }
    }

    /// Final norm and LM head at every given position.
    ///
    /// # Shapes
    /// - hidden: `[batch, seq, hidden]` → `[batch, seq, vocab]`
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        self.lm_head.forward(self.norm.forward(hidden))
    }
}
