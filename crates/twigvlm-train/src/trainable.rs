//! Turning loaded (frozen) parameters into trained ones. Weights read from a checkpoint are frozen
//! (no gradient), so a part copied out of a pretrained model — the language model's upper layers
//! in LLaVA stage 2, the twig's initial blocks — must be marked trainable before it joins an
//! optimised model.

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::DType;
use twigvlm_backbone::ops::DecodeAutodiff;

struct RequireGrad;

impl<B: DecodeAutodiff> ModuleMapper<B> for RequireGrad {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.map(|tensor| tensor.detach().cast(DType::F32).require_grad())
    }
}

/// The module with every float parameter in f32 and requiring gradients (a fresh leaf of the
/// graph). A checkpoint may store weights in f16 or bf16 (a twig is saved in f16); optimizer
/// updates in half precision underflow (AdamW's ε is 0 in f16, so a zero gradient gives 0/0),
/// so what trains is widened first.
pub fn trainable<B: DecodeAutodiff, M: Module<B>>(module: M) -> M {
    module.map(&mut RequireGrad)
}
