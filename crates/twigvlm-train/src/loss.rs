//! Cross-entropy with per-row weights (0 = ignored), computed in one pass over a `[rows, classes]` block.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use twigvlm_backbone::ops::DecodeOps;

/// Weighted mean of `-log p(target)` over rows; `weights` may hold zeros for rows to skip.
///
/// # Shapes
/// - logits: `[rows, classes]`; targets, weights: `rows` values
pub fn weighted_cross_entropy<B: DecodeOps>(logits: Tensor<B, 2>, targets: &[i64], weights: &[f32]) -> Tensor<B, 1> {
    let device = logits.device();
    let rows = targets.len();
    debug_assert_eq!(logits.dims()[0], rows);
    let total_weight: f32 = weights.iter().sum();
    let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(targets.to_vec(), [rows, 1]), &device);
    let picked = log_softmax(logits, 1).gather(1, targets).reshape([rows]);
    let weights = Tensor::<B, 1>::from_data(TensorData::new(weights.to_vec(), [rows]), &device);
    (picked * weights).sum().neg() / total_weight.max(f32::MIN_POSITIVE)
}

/// Cross-entropy summed over a batch of sequences and averaged over all their target tokens (so a
/// long answer weighs by its tokens, as in one padded batch).
pub struct TokenMeanLoss<B: Backend> {
    sums: Vec<Tensor<B, 1>>,
    tokens: usize,
}

impl<B: DecodeOps> Default for TokenMeanLoss<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: DecodeOps> TokenMeanLoss<B> {
    pub fn new() -> Self {
        Self { sums: Vec::new(), tokens: 0 }
    }

    /// Adds one sequence's logits `[targets, vocab]` at its target positions.
    pub fn add(&mut self, logits: Tensor<B, 2>, targets: &[i64]) {
        self.add_padded(logits, targets, targets.len());
    }

    /// Adds logits `[rows, vocab]` whose first `real` rows are target tokens and whose other rows
    /// are padding (any valid target, counted with weight zero).
    pub fn add_padded(&mut self, logits: Tensor<B, 2>, targets: &[i64], real: usize) {
        if real == 0 {
            return;
        }
        let weights: Vec<f32> = (0..targets.len()).map(|row| if row < real { 1.0 } else { 0.0 }).collect();
        self.sums.push(weighted_cross_entropy(logits, targets, &weights).mul_scalar(real as f64));
        self.tokens += real;
    }

    /// The mean over every added token and the token count (None: no tokens were added).
    pub fn finish(self) -> Option<(Tensor<B, 1>, usize)> {
        (self.tokens > 0).then(|| (Tensor::cat(self.sums, 0).sum().div_scalar(self.tokens as f64), self.tokens))
    }
}
