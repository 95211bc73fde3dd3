//! One Llama decoder layer: pre-norm attention and SwiGLU MLP with residuals.

use burn::nn::{Linear, RmsNorm};
use burn::prelude::*;

use super::attention::SelfAttention;
use super::cache::LayerKvCache;
use super::rope::RopeAngles;
use crate::config::Activation;

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
    #[module(skip)]
    pub activation: Activation,
}

impl<B: Backend> Mlp<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = self.activation.apply(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}

#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: SelfAttention<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub mlp: Mlp<B>,
}

impl<B: Backend> DecoderLayer<B> {
    /// # Shapes
    /// - x: `[batch, new, hidden]` → `[batch, new, hidden]` (plus the probe of [`SelfAttention::forward`])
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        cache: &mut LayerKvCache<B>,
        probe_rows: Option<&[usize]>,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 4>>) {
        let (attn, probe) = self.self_attn.forward(self.input_layernorm.forward(x.clone()), rope, cache, probe_rows);
        let x = x + attn;
        let x = x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x));
        (x, probe)
    }
}
