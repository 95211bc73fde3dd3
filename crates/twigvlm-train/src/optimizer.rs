//! AdamW with every hyper-parameter explicit (burn's defaults, eps 1e-5 and weight decay 1e-4,
//! differ from PyTorch's); clipping is done by [`crate::clipping`] on the global norm.

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig};
use serde::{Deserialize, Serialize};
use twigvlm_backbone::ops::DecodeAutodiff;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
    /// Largest global gradient norm; larger gradients are scaled down (None: no clipping).
    pub max_grad_norm: Option<f32>,
}

impl Default for OptimizerConfig {
    /// PyTorch's AdamW with LLaVA's clipping (max norm 1.0) and no weight decay.
    fn default() -> Self {
        Self { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-8, weight_decay: 0.0, max_grad_norm: Some(1.0) }
    }
}

impl OptimizerConfig {
    pub fn adamw<B: DecodeAutodiff, M: AutodiffModule<B>>(&self) -> OptimizerAdaptor<AdamW, M, B> {
        AdamWConfig::new()
            .with_beta_1(self.beta_1)
            .with_beta_2(self.beta_2)
            .with_epsilon(self.epsilon)
            .with_weight_decay(self.weight_decay)
            .init()
    }
}
