//! Builds burn modules from checkpoint tensors: checks every shape, converts to the backend's
//! float type, transposes PyTorch `[out, in]` linear weights to burn's `[in, out]`, and remembers
//! which tensors were used so that the rest can be reported.

use std::cell::RefCell;
use std::collections::BTreeSet;

use burn::module::{Param, ParamId};
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear, RmsNorm};
use burn::prelude::*;

use super::source::TensorSource;
use crate::error::{BackboneError, Result};

/// Reads named tensors of one [`TensorSource`] onto a device.
pub struct WeightLoader<'a, B: Backend> {
    source: &'a TensorSource,
    device: &'a B::Device,
    used: RefCell<BTreeSet<String>>,
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

impl<'a, B: Backend> WeightLoader<'a, B> {
    pub fn new(source: &'a TensorSource, device: &'a B::Device) -> Self {
        Self { source, device, used: RefCell::new(BTreeSet::new()) }
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
        let weight = self.read(&format!("{prefix}.weight"), &[d_out, d_in])?;
        let weight = transpose(&weight, d_out, d_in);
        let weight = Tensor::from_data(TensorData::new(weight, [d_in, d_out]), self.device);
        let bias = if bias { Some(self.param(&format!("{prefix}.bias"), [d_out])?) } else { None };
        Ok(Linear { weight: Param::initialized(ParamId::new(), weight), bias })
    }

    /// An LM head that reuses an embedding matrix `[vocab, d]` (tied weights).
    pub fn tied_linear(&self, embedding_name: &str, vocab: usize, d: usize) -> Result<Linear<B>> {
        let weight = self.read(embedding_name, &[vocab, d])?;
        let weight = Tensor::from_data(TensorData::new(transpose(&weight, vocab, d), [d, vocab]), self.device);
        Ok(Linear { weight: Param::initialized(ParamId::new(), weight), bias: None })
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

/// `[rows, cols]` → `[cols, rows]`, in square tiles so that reads and writes both stay in cache
/// (a naive loop over a 7B checkpoint's matrices is dominated by cache misses).
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0.0; values.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = values[r * cols + c];
                }
            }
        }
    }
    out
}

impl LoadReport {
    pub fn merge(mut self, other: LoadReport) -> Self {
        self.used += other.used;
        self.ignored.extend(other.ignored);
        self.unexpected.extend(other.unexpected);
        self
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn transpose_moves_every_element() {
        // 3 x 70 crosses tile edges in both directions.
        let (rows, cols) = (3, 70);
        let values: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let t = super::transpose(&values, rows, cols);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(t[c * rows + r], values[r * cols + c]);
            }
        }
    }
}
