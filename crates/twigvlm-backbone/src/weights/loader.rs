//! Builds burn modules from checkpoint tensors: checks every shape, converts to the backend's
//! float type (linear weights: to their storage type, see [`StorageDtype`]), turns PyTorch
//! `[out, in]` linear weights into burn's `[in, out]` the way the backend reads them fastest
//! ([`DecodeOps::linear_weight`]), and remembers which tensors were used so that the rest can be
//! reported.

use std::cell::RefCell;
use std::collections::BTreeSet;

use burn::module::{Param, ParamId};
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear, RmsNorm};
use burn::prelude::*;
use burn::tensor::DType;

use super::source::TensorSource;
use super::StorageDtype;
use crate::error::{BackboneError, Result};
use crate::ops::DecodeOps;

/// Reads named tensors of one [`TensorSource`] onto a device.
pub struct WeightLoader<'a, B: Backend> {
    source: &'a TensorSource,
    device: &'a B::Device,
    used: RefCell<BTreeSet<String>>,
    /// Storage type of linear weights; `None` keeps each one's checkpoint type.
    linear_dtype: Option<StorageDtype>,
}

/// What a load left behind.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub used: usize,
    /// Tensors the model never reads by design (e.g. CLIP's `post_layernorm`, vision layers past the feature layer).
    pub ignored: Vec<String>,
    /// Tensors nobody expected: a sign of a layout problem.
    pub unexpected: Vec<String>,
}

impl<'a, B: DecodeOps> WeightLoader<'a, B> {
    pub fn new(source: &'a TensorSource, device: &'a B::Device) -> Self {
        Self { source, device, used: RefCell::new(BTreeSet::new()), linear_dtype: None }
    }

    /// Stores linear weights in `dtype` (`None`: each one's checkpoint type).
    pub fn with_linear_dtype(mut self, dtype: Option<StorageDtype>) -> Self {
        self.linear_dtype = dtype;
        self
    }

    pub fn device(&self) -> &B::Device {
        self.device
    }

    pub fn contains(&self, name: &str) -> bool {
        self.source.contains(name)
    }

    /// Reads `name` as f32 after checking that its shape is `expected`.
    pub fn read(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let raw = self
            .source
            .get(name)
            .ok_or_else(|| BackboneError::MissingTensor { name: name.to_string(), expected: expected.to_vec() })?;
        if raw.shape != expected {
            return Err(BackboneError::ShapeMismatch {
                name: name.to_string(),
                expected: expected.to_vec(),
                found: raw.shape.clone(),
            });
        }
        let values = raw.read_f32(name)?;
        self.used.borrow_mut().insert(name.to_string());
        Ok(values)
    }

    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<B, D>> {
        let values = self.read(name, &shape)?;
        Ok(Tensor::from_data(TensorData::new(values, shape), self.device))
    }

    pub fn param<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Param<Tensor<B, D>>> {
        Ok(Param::initialized(ParamId::new(), self.tensor(name, shape)?))
    }

    /// A PyTorch `nn.Linear` at `prefix` (`{prefix}.weight` `[d_out, d_in]`, optional `{prefix}.bias`).
    pub fn linear(&self, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear<B>> {
        let weight = self.linear_weight(&format!("{prefix}.weight"), d_out, d_in)?;
        let bias = if bias { Some(self.param(&format!("{prefix}.bias"), [d_out])?) } else { None };
        Ok(Linear { weight: Param::initialized(ParamId::new(), weight), bias })
    }

    /// An LM head that reuses an embedding matrix `[vocab, d]` (tied weights).
    pub fn tied_linear(&self, embedding_name: &str, vocab: usize, d: usize) -> Result<Linear<B>> {
        let weight = self.linear_weight(embedding_name, vocab, d)?;
        Ok(Linear { weight: Param::initialized(ParamId::new(), weight), bias: None })
    }

    /// The `[d_out, d_in]` checkpoint tensor `name` as a linear weight, in its storage type.
    fn linear_weight(&self, name: &str, d_out: usize, d_in: usize) -> Result<Tensor<B, 2>> {
        let values = self.read(name, &[d_out, d_in])?;
        let stored = match self.linear_dtype {
            Some(dtype) => dtype.dtype(),
            // Widening to f32 on read was exact, so narrowing back restores the checkpoint's values.
            None => self.source.get(name).map_or(DType::F32, |raw| raw.float_dtype),
        };
        let data = TensorData::new(values, [d_out, d_in]).convert_dtype(stored);
        Ok(B::linear_weight(data, self.device))
    }

    pub fn embedding(&self, name: &str, n: usize, d: usize) -> Result<Embedding<B>> {
        Ok(Embedding { weight: self.param(name, [n, d])? })
    }

    pub fn layer_norm(&self, prefix: &str, d: usize, eps: f64) -> Result<LayerNorm<B>> {
        let mut norm = LayerNormConfig::new(d).with_epsilon(eps).init(self.device);
        norm.gamma = self.param(&format!("{prefix}.weight"), [d])?;
        norm.beta = Some(self.param(&format!("{prefix}.bias"), [d])?);
        Ok(norm)
    }

    pub fn rms_norm(&self, name: &str, d: usize, eps: f64) -> Result<RmsNorm<B>> {
        Ok(RmsNorm { gamma: self.param(name, [d])?, epsilon: eps })
    }

    /// Splits the checkpoint's unused tensors into expected and unexpected ones.
    pub fn report(&self, ignorable: impl Fn(&str) -> bool) -> LoadReport {
        let used = self.used.borrow();
        let mut report = LoadReport { used: used.len(), ..Default::default() };
        for name in self.source.names().filter(|n| !used.contains(*n)) {
            if ignorable(name) {
                report.ignored.push(name.to_string());
            } else {
                report.unexpected.push(name.to_string());
            }
        }
        report
    }
}

impl LoadReport {
    pub fn merge(mut self, other: LoadReport) -> Self {
        self.used += other.used;
        self.ignored.extend(other.ignored);
        self.unexpected.extend(other.unexpected);
        self
    }
}
