//! Global-norm gradient clipping (PyTorch's `clip_grad_norm_`): burn's own `Norm` clipping scales
//! each tensor by its own norm, which changes the update direction.

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use twigvlm_backbone::ops::DecodeAutodiff;

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: f64,
    ids: Vec<ParamId>,
}

impl<B: DecodeAutodiff> ModuleVisitor<B> for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) {
            self.total += grad.powi_scalar(2).sum().into_scalar().elem::<f64>();
            self.ids.push(param.id);
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: DecodeAutodiff> ModuleVisitor<B> for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register::<B::InnerBackend, D>(param.id, grad.mul_scalar(self.factor));
        }
    }
}

/// The global L2 norm of the module's gradients; scales them to `max_norm` when larger.
pub fn clip_global_norm<B: DecodeAutodiff, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: Option<f32>,
) -> f64 {
    let mut norm = SquaredNorm { grads, total: 0.0, ids: Vec::new() };
    module.visit(&mut norm);
    let total = norm.total.sqrt();
    if let Some(max) = max_norm {
        const EPSILON: f64 = 1e-6;
        if total > max as f64 {
            module.visit(&mut Scale { grads, factor: max as f64 / (total + EPSILON) });
        }
    }
    total
}
