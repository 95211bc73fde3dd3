//! Turning loaded (frozen) parameters into trained ones. Weights read from a checkpoint are frozen
//! (no gradient), so a part copied out of a pretrained model — the language model's upper layers
//! in LLaVA stage 2, the twig's initial blocks — must be marked trainable before it joins an
//! optimised model.

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use twigvlm_backbone::ops::DecodeAutodiff;

struct RequireGrad;

impl<B: DecodeAutodiff> ModuleMapper<B> for RequireGrad {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.map(|tensor| tensor.detach().require_grad())
    }
}

/// The module with every float parameter requiring gradients (a fresh leaf of the graph).
pub fn trainable<B: DecodeAutodiff, M: Module<B>>(module: M) -> M {
    module.map(&mut RequireGrad)
}
