//! Learning rate: linear warm-up from `peak / warmup_steps` to `peak`, then cosine decay to
//! `peak * final_fraction` at the last step (no restart).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub peak: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub final_fraction: f64,
}

impl LrSchedule {
    /// Warm-up over `warmup_fraction` of the steps (at least one), cosine to zero.
    pub fn warmup_cosine(peak: f64, total_steps: usize, warmup_fraction: f64) -> Self {
        let warmup_steps = ((total_steps as f64 * warmup_fraction).ceil() as usize).max(1);
        Self { peak, warmup_steps, total_steps, final_fraction: 0.0 }
    }

    /// The rate of 0-based `step`.
    pub fn at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let floor = self.peak * self.final_fraction;
        floor + (self.peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}
