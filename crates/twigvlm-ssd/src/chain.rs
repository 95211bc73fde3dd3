//! A chain round of self-speculative decoding: the twig drafts one token after another while it
//! is confident, the base checks them all in one forward, and speculative sampling decides which
//! stay (greedy: the prefix the base agrees with).

use std::time::Instant;

use burn::prelude::*;

use crate::error::Result;
use crate::sampling::{argmax, softmax, Sampler, Sampling};
use crate::speculator::{Round, RoundTime, Speculator};
use twigvlm_backbone::ops::DecodeOps;

impl<B: DecodeOps> Speculator<'_, '_, B> {
    /// One chain round from `token` (emitted, not yet run) at `start`: drafts up to `limit`
    /// tokens while the twig is confident, verifies them in one deep forward with speculative
    /// sampling (greedy: the matching prefix), and drops the rejected entries.
    pub(crate) fn chain_round(
        &mut self,
        mut token: u32,
        start: usize,
        limit: usize,
        threshold: f32,
        sampler: &mut Sampler,
        eos: &[u32],
    ) -> Result<Round> {
        let began = Instant::now();
        let (mut kept, mut drafted, mut draft_probs) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            let position = [start + drafted.len()];
            if drafted.len() == limit || (!drafted.is_empty() && eos.contains(&token)) {
                // Nothing more is drafted after this token: the twig needs only its cache
                // entry, and none now in a round that drafts nothing.
                let hidden = if limit == 0 {
                    self.lower(self.embed(token), position[0])
                } else {
                    self.shallow_hidden(self.embed(token), &position).0
                };
                kept.push(hidden);
                break;
            }
            let (hidden, twig_logits) = self.shallow(self.embed(token), &position);
            kept.push(hidden);
            if draft_confidence(sampler, &twig_logits) < threshold {
                break;
            }
            let q = sampler.distribution(&twig_logits);
            let pick = sampler.draw(&q);
            drafted.push(pick);
            draft_probs.push(q);
            token = pick;
        }

        let positions: Vec<usize> = (start..start + kept.len()).collect();
        let drafted_at = Instant::now();
        let logits = self.deep(Tensor::cat(kept, 1), &positions, None);
        let deep_logits: Vec<&[f32]> = logits.chunks(logits.len() / positions.len()).collect();
        let time = RoundTime::since(began, drafted_at);
        let targets: Vec<Vec<f32>> = deep_logits.iter().map(|row| sampler.distribution(row)).collect();
        let (accepted, correction) = verify(&targets, &draft_probs, &drafted, sampler);
        self.discard(positions.len() - accepted - 1)?;
        drafted.truncate(accepted);
        Ok(Round { drafted: draft_probs.len(), accepted: drafted, correction, time })
    }
}

/// The twig's top probability at the next position, known before anything is drawn: at
/// temperature 1 when greedy, else under the sampling rule.
fn draft_confidence(sampler: &Sampler, twig_logits: &[f32]) -> f32 {
    match sampler.sampling {
        Sampling::Greedy => softmax(twig_logits, 1.0)[argmax(twig_logits) as usize],
        Sampling::TopP { .. } => sampler.distribution(twig_logits).into_iter().fold(0.0, f32::max),
    }
}

/// Speculative sampling over one round: `targets[i]` is the base's distribution where
/// `drafted[i]` (drawn from `drafts[i]`) was proposed; `targets` has one more row, after the
/// last drafted token. Returns how many drafted tokens are accepted and the token after them.
pub fn verify(targets: &[Vec<f32>], drafts: &[Vec<f32>], drafted: &[u32], sampler: &mut Sampler) -> (usize, u32) {
    for (i, &token) in drafted.iter().enumerate() {
        let (p, q) = (&targets[i], &drafts[i]);
        let ratio = p[token as usize] / q[token as usize];
        if ratio >= 1.0 || sampler.uniform() < ratio {
            continue;
        }
        let residual: Vec<f32> = p.iter().zip(q).map(|(p, q)| (p - q).max(0.0)).collect();
        // p ≤ q everywhere only when p = q up to rounding, and then nothing is rejected in exact
        // arithmetic; draw from p itself.
        let correction = if residual.iter().any(|&r| r > 0.0) { sampler.draw(&residual) } else { sampler.draw(p) };
        return (i, correction);
    }
    (drafted.len(), sampler.draw(&targets[drafted.len()]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draft x ~ q, verify against p: the first emitted token must be distributed as p.
    #[test]
    fn speculative_sampling_emits_the_target_distribution() {
        let sampling = Sampling::TopP { temperature: 1.0, top_p: 1.0 };
        let mut sampler = Sampler::new(sampling, 7);
        let p = vec![0.5, 0.3, 0.15, 0.05, 0.0];
        let q = vec![0.1, 0.6, 0.1, 0.0, 0.2];
        let trials = 200_000;
        let mut counts = [0usize; 5];
        let mut accepted_total = 0;
        for _ in 0..trials {
            let x = sampler.draw(&q);
            let (accepted, correction) = verify(&[p.clone(), p.clone()], std::slice::from_ref(&q), &[x], &mut sampler);
            accepted_total += accepted;
            counts[if accepted == 1 { x } else { correction } as usize] += 1;
        }
        for (token, &count) in counts.iter().enumerate() {
            let share = count as f64 / trials as f64;
            // 200k draws: standard error ≤ 0.0012.
            assert!((share - p[token] as f64).abs() < 0.006, "token {token}: {share} vs {}", p[token]);
        }
        // Acceptance rate = Σ min(p, q) = 0.1 + 0.3 + 0.1 = 0.5.
        assert!((accepted_total as f64 / trials as f64 - 0.5).abs() < 0.01);
    }

    #[test]
    fn greedy_verification_accepts_the_matching_prefix() {
        let mut sampler = Sampler::new(Sampling::Greedy, 0);
        let one_hot = |i: usize| (0..4).map(|j| if i == j { 1.0 } else { 0.0 }).collect::<Vec<f32>>();
        let targets = [one_hot(2), one_hot(1), one_hot(3)];
        let drafts = [one_hot(2), one_hot(0)];
        assert_eq!(verify(&targets, &drafts, &[2, 0], &mut sampler), (1, 1));
        assert_eq!(verify(&targets, &[one_hot(2), one_hot(1)], &[2, 1], &mut sampler), (2, 3));
    }
}
