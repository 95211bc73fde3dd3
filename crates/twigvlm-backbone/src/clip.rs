//! CLIP ViT vision tower, run up to the hidden state LLaVA selects (`vision_feature_layer`).

use burn::module::{Initializer, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use crate::config::{Activation, ClipVisionConfig};
use crate::error::Result;
use crate::ops::{linear, DecodeOps};
use crate::weights::WeightLoader;

/// Multi-head self-attention of one CLIP encoder layer (no mask: every patch sees every patch).
#[derive(Module, Debug)]
pub struct ClipAttention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub out_proj: Linear<B>,
    pub num_heads: usize,
}

impl<B: DecodeOps> ClipAttention<B> {
    /// # Shapes
    /// - x: `[batch, positions, hidden]` → `[batch, positions, hidden]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, seq, hidden] = x.dims();
        let head_dim = hidden / self.num_heads;
        let split = |t: Tensor<B, 3>| t.reshape([batch, seq, self.num_heads, head_dim]).swap_dims(1, 2);
        let q = split(linear(&self.q_proj, x.clone()));
        let k = split(linear(&self.k_proj, x.clone()));
        let v = split(linear(&self.v_proj, x));
        let out = attention(q, k, v, None, None, AttentionModuleOptions::default());
        linear(&self.out_proj, out.swap_dims(1, 2).reshape([batch, seq, hidden]))
    }
}

/// Pre-LN transformer block of the CLIP encoder.
#[derive(Module, Debug)]
pub struct ClipEncoderLayer<B: Backend> {
    pub layer_norm1: LayerNorm<B>,
    pub self_attn: ClipAttention<B>,
    pub layer_norm2: LayerNorm<B>,
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
    #[module(skip)]
    pub activation: Activation,
}

impl<B: DecodeOps> ClipEncoderLayer<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x));
        let h = self.activation.apply(linear(&self.fc1, self.layer_norm2.forward(x.clone())));
        x + linear(&self.fc2, h)
    }
}

/// The vision tower: patch + class + position embeddings, `pre_layrnorm`, and the encoder layers
/// needed for the selected hidden state (later layers are never built).
#[derive(Module, Debug)]
pub struct ClipVisionTower<B: Backend> {
    pub patch_embedding: Conv2d<B>,
    pub class_embedding: Param<Tensor<B, 1>>,
    pub position_embedding: Param<Tensor<B, 2>>,
    pub pre_layrnorm: LayerNorm<B>,
    pub layers: Vec<ClipEncoderLayer<B>>,
}

impl<B: DecodeOps> ClipVisionTower<B> {
    /// Loads the tower from `{prefix}.embeddings...`, `{prefix}.pre_layrnorm`, `{prefix}.encoder.layers.{i}`.
    pub fn load(loader: &WeightLoader<B>, prefix: &str, cfg: &ClipVisionConfig, layers_needed: usize) -> Result<Self> {
        let d = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let emb = format!("{prefix}.embeddings");
        let mut patch_embedding = Conv2dConfig::new([cfg.num_channels, d], [cfg.patch_size, cfg.patch_size])
            .with_stride([cfg.patch_size, cfg.patch_size])
            .with_bias(false)
            .init(loader.device());
        patch_embedding.weight = loader
            .param(&format!("{emb}.patch_embedding.weight"), [d, cfg.num_channels, cfg.patch_size, cfg.patch_size])?;
        let layers = (0..layers_needed)
            .map(|i| {
                let p = format!("{prefix}.encoder.layers.{i}");
                let attn = |name: &str| loader.linear(&format!("{p}.self_attn.{name}"), d, d, true);
                Ok(ClipEncoderLayer {
                    layer_norm1: loader.layer_norm(&format!("{p}.layer_norm1"), d, eps)?,
                    self_attn: ClipAttention {
                        q_proj: attn("q_proj")?,
                        k_proj: attn("k_proj")?,
                        v_proj: attn("v_proj")?,
                        out_proj: attn("out_proj")?,
                        num_heads: cfg.num_heads,
                    },
                    layer_norm2: loader.layer_norm(&format!("{p}.layer_norm2"), d, eps)?,
                    fc1: loader.linear(&format!("{p}.mlp.fc1"), d, cfg.intermediate_size, true)?,
                    fc2: loader.linear(&format!("{p}.mlp.fc2"), cfg.intermediate_size, d, true)?,
                    activation: cfg.activation,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_embedding,
            class_embedding: loader.param(&format!("{emb}.class_embedding"), [d])?,
            position_embedding: loader.param(&format!("{emb}.position_embedding.weight"), [cfg.num_positions(), d])?,
            pre_layrnorm: loader.layer_norm(&format!("{prefix}.pre_layrnorm"), d, eps)?,
            layers,
        })
    }

    /// A randomly initialised tower (for training from scratch), with `layers` encoder layers;
    /// embeddings as CLIP initialises them (normal, std 0.02).
    pub fn init(cfg: &ClipVisionConfig, layers: usize, device: &B::Device) -> Self {
        const EMBEDDING_STD: f64 = 0.02;
        let d = cfg.hidden_size;
        let normal = Initializer::Normal { mean: 0.0, std: EMBEDDING_STD };
        let norm = || LayerNormConfig::new(d).with_epsilon(cfg.layer_norm_eps).init(device);
        let linear = |d_in: usize, d_out: usize| LinearConfig::new(d_in, d_out).init(device);
        let layers = (0..layers)
            .map(|_| ClipEncoderLayer {
                layer_norm1: norm(),
                self_attn: ClipAttention {
                    q_proj: linear(d, d),
                    k_proj: linear(d, d),
                    v_proj: linear(d, d),
                    out_proj: linear(d, d),
                    num_heads: cfg.num_heads,
                },
                layer_norm2: norm(),
                fc1: linear(d, cfg.intermediate_size),
                fc2: linear(cfg.intermediate_size, d),
                activation: cfg.activation,
            })
            .collect();
        Self {
            patch_embedding: Conv2dConfig::new([cfg.num_channels, d], [cfg.patch_size, cfg.patch_size])
                .with_stride([cfg.patch_size, cfg.patch_size])
                .with_bias(false)
                .init(device),
            class_embedding: normal.init([d], device),
            position_embedding: normal.init([cfg.num_positions(), d], device),
            pre_layrnorm: norm(),
            layers,
        }
    }

    /// Checkpoint names of a burn parameter path, under `prefix` (e.g. `vision_tower.vision_model`).
    pub fn hf_name(prefix: &str, burn_path: &str) -> String {
        let embedding = ["patch_embedding.", "class_embedding", "position_embedding"];
        if let Some(rest) = burn_path.strip_prefix("layers.") {
            let rest = rest.replacen(".fc1.", ".mlp.fc1.", 1).replacen(".fc2.", ".mlp.fc2.", 1);
            format!("{prefix}.encoder.layers.{rest}")
        } else if burn_path == "position_embedding" {
            format!("{prefix}.embeddings.position_embedding.weight")
        } else if embedding.iter().any(|e| burn_path.starts_with(e)) {
            format!("{prefix}.embeddings.{burn_path}")
        } else {
            format!("{prefix}.{burn_path}")
        }
    }

    /// # Shapes
    /// - pixels: `[batch, channels, image_size, image_size]` → `[batch, 1 + patches, hidden]`
    ///   (the hidden state after the last built layer; position 0 is CLS)
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        let patches = self.patch_embedding.forward(pixels);
        let [batch, d, gh, gw] = patches.dims();
        let patches = patches.reshape([batch, d, gh * gw]).swap_dims(1, 2);
        let cls = self.class_embedding.val().reshape([1, 1, d]).expand([batch, 1, d]);
        let x = Tensor::cat(vec![cls, patches], 1) + self.position_embedding.val().unsqueeze_dim(0);
        let mut x = self.pre_layrnorm.forward(x);
        for layer in &self.layers {
            x = layer.forward(x);
        }
        x
    }
}
