//! Choosing the next token from logits: greedy, or temperature + nucleus (top-p) sampling with a
//! seeded RNG so that a run can be repeated.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{DecodeError, Result};

/// How tokens are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Always the most likely token (the first on ties, as `torch.argmax`).
    Greedy,
    /// Softmax of `logits / temperature`, restricted to the smallest set of most likely tokens
    /// whose probability reaches `top_p`.
    TopP { temperature: f32, top_p: f32 },
}

impl Sampling {
    /// Greedy when `temperature` is 0, as most engines treat it.
    pub fn new(temperature: f32, top_p: f32) -> Result<Self> {
        if !(temperature >= 0.0 && temperature.is_finite()) {
            return Err(DecodeError::InvalidSampling(format!("temperature must be ≥ 0, got {temperature}")));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(DecodeError::InvalidSampling(format!("top-p must be in (0, 1], got {top_p}")));
        }
        Ok(if temperature == 0.0 { Self::Greedy } else { Self::TopP { temperature, top_p } })
    }
}

/// A [`Sampling`] rule with its random state.
#[derive(Debug, Clone)]
pub struct Sampler {
    pub sampling: Sampling,
    rng: StdRng,
}

impl Sampler {
    pub fn new(sampling: Sampling, seed: u64) -> Self {
        Self { sampling, rng: StdRng::seed_from_u64(seed) }
    }

    /// Picks a token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        match self.sampling {
            Sampling::Greedy => argmax(logits),
            Sampling::TopP { .. } => self.draw(&self.distribution(logits)),
        }
    }

    /// The distribution tokens are drawn from: one-hot on the argmax when greedy, else the
    /// tempered softmax restricted to the nucleus and renormalised (zero elsewhere).
    pub fn distribution(&self, logits: &[f32]) -> Vec<f32> {
        let mut probs = vec![0.0; logits.len()];
        match self.sampling {
            Sampling::Greedy => probs[argmax(logits) as usize] = 1.0,
            Sampling::TopP { temperature, top_p } => {
                let kept = nucleus(&softmax(logits, temperature), top_p);
                let total: f32 = kept.iter().map(|(_, p)| p).sum();
                for (id, p) in kept {
                    probs[id as usize] = p / total;
                }
            }
        }
        probs
    }

    /// Draws a token from (possibly unnormalised) non-negative weights; the largest one when
    /// greedy (no randomness is used then).
    pub fn draw(&mut self, weights: &[f32]) -> u32 {
        if self.sampling == Sampling::Greedy {
            return argmax(weights);
        }
        let mut left = self.uniform() * weights.iter().sum::<f32>();
        let mut last = 0;
        for (id, &w) in weights.iter().enumerate().filter(|(_, &w)| w > 0.0) {
            if left < w {
                return id as u32;
            }
            left -= w;
            last = id;
        }
        last as u32
    }

    /// A uniform draw in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        self.rng.random::<f32>()
    }
}

/// Index of the largest value, the first one on ties.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Numerically stable softmax of `logits / temperature`.
pub fn softmax(logits: &[f32], temperature: f32) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&l| ((l - max) / temperature).exp()).collect();
    let total: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / total).collect()
}

/// The most likely tokens whose cumulative probability first reaches `top_p` (at least one),
/// most likely first, with their (unnormalised) probabilities.
pub fn nucleus(probs: &[f32], top_p: f32) -> Vec<(u32, f32)> {
    let mut sorted: Vec<(u32, f32)> = probs.iter().enumerate().map(|(i, &p)| (i as u32, p)).collect();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut cumulative = 0.0;
    let mut keep = 0;
    for &(_, p) in &sorted {
        keep += 1;
        cumulative += p;
        if cumulative >= top_p {
            break;
        }
    }
    sorted.truncate(keep.max(1));
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn softmax_matches_hand_computation() {
        // e^0, e^1, e^2 normalised: 0.09003057, 0.24472847, 0.66524096
        let p = softmax(&[0.0, 1.0, 2.0], 1.0);
        for (got, want) in p.iter().zip([0.090_030_57, 0.244_728_47, 0.665_240_96]) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        // Temperature 2 halves the logits: softmax(0, 0.5, 1) = 0.18632372, 0.30719589, 0.50648039
        let p = softmax(&[0.0, 1.0, 2.0], 2.0);
        assert!((p[2] - 0.506_480_4).abs() < 1e-6);
    }

    #[test]
    fn nucleus_keeps_smallest_set_reaching_top_p() {
        let kept = nucleus(&[0.1, 0.5, 0.15, 0.25], 0.7);
        assert_eq!(kept.iter().map(|k| k.0).collect::<Vec<_>>(), vec![1, 3]);
        let kept = nucleus(&[0.1, 0.5, 0.15, 0.25], 0.76);
        assert_eq!(kept.iter().map(|k| k.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        assert_eq!(nucleus(&[0.1, 0.9], 0.01).len(), 1);
    }

    #[test]
    fn sampling_is_seeded_and_follows_the_distribution() {
        let logits = [0.0f32, (3.0f32).ln(), f32::NEG_INFINITY];
        let mut a = Sampler::new(Sampling::TopP { temperature: 1.0, top_p: 1.0 }, 42);
        let mut b = Sampler::new(Sampling::TopP { temperature: 1.0, top_p: 1.0 }, 42);
        let draws: Vec<u32> = (0..4000).map(|_| a.sample(&logits)).collect();
        assert_eq!(draws, (0..4000).map(|_| b.sample(&logits)).collect::<Vec<_>>());
        assert!(!draws.contains(&2));
        // P(token 1) = 3/4; 4000 draws give a standard error of about 0.007.
        let share = draws.iter().filter(|&&t| t == 1).count() as f32 / draws.len() as f32;
        assert!((share - 0.75).abs() < 0.03, "share {share}");
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        assert!(Sampling::new(-1.0, 0.9).is_err());
        assert!(Sampling::new(0.7, 0.0).is_err());
        assert!(Sampling::new(0.7, 1.5).is_err());
        assert_eq!(Sampling::new(0.0, 0.9).unwrap(), Sampling::Greedy);
    }
}
