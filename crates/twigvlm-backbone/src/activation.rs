//! The activation functions named in configs, applied to burn tensors.

use burn::prelude::*;
use burn::tensor::activation::{gelu, gelu_approximate, sigmoid, silu};

use crate::config::Activation;

/// CLIP's quick GELU constant: `x * sigmoid(1.702 x)`.
const QUICK_GELU_SLOPE: f64 = 1.702;

impl Activation {
    pub fn apply<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Activation::Gelu => gelu(x),
            Activation::GeluTanh => gelu_approximate(x),
            Activation::QuickGelu => x.clone() * sigmoid(x * QUICK_GELU_SLOPE),
            Activation::Silu => silu(x),
        }
    }
}
