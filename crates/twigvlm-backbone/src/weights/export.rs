//! Module → Hugging Face tensors: the inverse of [`super::WeightLoader`], for the parts this project
//! trains (vision tower, projector, twig). Names follow burn's module paths, renamed by the caller;
//! burn's `Linear` weights `[in, out]` are transposed back to PyTorch's `[out, in]`, LayerNorm's
//! `gamma`/`beta` become `weight`/`bias` and RmsNorm's `gamma` becomes `weight`.

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;

use super::writer::NamedTensor;
use crate::ops::DecodeOps;

const LINEAR: &str = "Struct:Linear";
const LAYER_NORM: &str = "Struct:LayerNorm";
const RMS_NORM: &str = "Struct:RmsNorm";

struct Exporter<'a> {
    /// (field name, type of the struct holding the field) of the fields entered so far.
    path: Vec<(String, String)>,
    rename: &'a dyn Fn(&str) -> String,
    tensors: Vec<NamedTensor>,
}

impl<B: DecodeOps> ModuleVisitor<B> for Exporter<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some((field, parent)) = self.path.last() else { return };
        let parent = parent.as_str();
        let mut names: Vec<&str> = self.path.iter().map(|(name, _)| name.as_str()).collect();
        let renamed_field = match (parent, field.as_str()) {
            (LAYER_NORM | RMS_NORM, "gamma") => "weight",
            (LAYER_NORM, "beta") => "bias",
            (_, other) => other,
        };
        *names.last_mut().expect("non-empty") = renamed_field;
        let tensor =
            if parent == LINEAR && field == "weight" && D == 2 { param.val().transpose() } else { param.val() };
        let shape = tensor.dims().to_vec();
        let values = tensor.into_data().convert::<f32>().into_vec::<f32>().expect("f32 after convert");
        self.tensors.push(((self.rename)(&names.join(".")), shape, values));
    }
}

/// The module's parameters as PyTorch-layout tensors; `rename` maps burn paths
/// (`layers.0.fc1.weight`) to checkpoint names.
pub fn hf_tensors<B: DecodeOps, M: Module<B>>(module: &M, rename: &dyn Fn(&str) -> String) -> Vec<NamedTensor> {
    let mut exporter = Exporter { path: Vec::new(), rename, tensors: Vec::new() };
    module.visit(&mut exporter);
    exporter.tensors
}
