//! The multimodal projector: vision features → language-model embeddings.

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

use crate::config::{Activation, ProjectorConfig};
use crate::error::Result;
use crate::ops::{linear, DecodeOps};
use crate::weights::WeightLoader;

/// `linear_2(act(linear_1(x)))` (LLaVA-1.5 `mlp2x_gelu`) or a single `linear_1(x)`.
#[derive(Module, Debug)]
pub struct Projector<B: Backend> {
    pub linear_1: Linear<B>,
    pub linear_2: Option<Linear<B>>,
    #[module(skip)]
    pub activation: Option<Activation>,
}

impl<B: DecodeOps> Projector<B> {
    /// `prefixes` are the checkpoint names of the linear layers (one or two).
    pub fn load(loader: &WeightLoader<B>, prefixes: &[String], cfg: &ProjectorConfig) -> Result<Self> {
        let (d_in, d_out) = (cfg.vision_hidden_size, cfg.text_hidden_size);
        match (prefixes, cfg.activation) {
            ([first, second], Some(_)) => Ok(Self {
                linear_1: loader.linear(first, d_in, d_out, cfg.bias)?,
                linear_2: Some(loader.linear(second, d_out, d_out, cfg.bias)?),
                activation: cfg.activation,
            }),
            ([only], None) => {
                Ok(Self { linear_1: loader.linear(only, d_in, d_out, cfg.bias)?, linear_2: None, activation: None })
            }
            _ => Err(crate::error::BackboneError::MissingTensor {
                name: format!("{} (projector layers do not match the configured projector type)", prefixes.join(", ")),
                expected: vec![d_in, d_out],
            }),
        }
    }

    /// A randomly initialised projector of the configured type.
    pub fn init(cfg: &ProjectorConfig, device: &B::Device) -> Self {
        let (d_in, d_out) = (cfg.vision_hidden_size, cfg.text_hidden_size);
        let linear = |a: usize, b: usize| LinearConfig::new(a, b).with_bias(cfg.bias).init(device);
        Self {
            linear_1: linear(d_in, d_out),
            linear_2: cfg.activation.map(|_| linear(d_out, d_out)),
            activation: cfg.activation,
        }
    }

    /// # Shapes
    /// - features: `[batch, visual_tokens, vision_hidden]` → `[batch, visual_tokens, text_hidden]`
    pub fn forward(&self, features: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = linear(&self.linear_1, features);
        match (&self.linear_2, self.activation) {
            (Some(second), Some(act)) => linear(second, act.apply(h)),
            (Some(second), None) => linear(second, h),
            (None, _) => h,
        }
    }
}
