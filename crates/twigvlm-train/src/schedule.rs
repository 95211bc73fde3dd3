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

    /// The same shape over `total_steps` steps: warm-up keeps its share of the run.
    pub fn refit(&self, total_steps: usize) -> Self {
        if total_steps == self.total_steps {
            return *self;
        }
        let share = self.warmup_steps as f64 / self.total_steps.max(1) as f64;
        let warmup_steps = ((total_steps as f64 * share).ceil() as usize).clamp(1, total_steps.max(1));
        Self { warmup_steps, total_steps, ..*self }
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

#[cfg(test)]
mod tests {
    use super::LrSchedule;

    #[test]
    fn refit_keeps_the_warmup_share_and_decays_to_the_new_end() {
        let schedule = LrSchedule::warmup_cosine(1e-3, 1000, 0.05);
        assert_eq!(schedule.refit(1000), schedule);
        let short = schedule.refit(200);
        assert_eq!((short.warmup_steps, short.total_steps), (10, 200));
        assert!((short.at(9) - 1e-3).abs() < 1e-12, "warm-up ends at the peak");
        assert!(short.at(199) < 1e-6, "the last step is near the floor: {}", short.at(199));
    }
}
