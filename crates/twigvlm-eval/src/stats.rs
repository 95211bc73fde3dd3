//! 95% confidence intervals for accuracies measured on a finite set of questions: Wilson's score
//! interval for one accuracy, and a paired bootstrap for the ratio of two accuracies measured on
//! the same questions (RelAcc).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// The normal quantile of a two-sided 95% interval.
const Z_95: f64 = 1.959_963_984_540_054;
/// Resamples of the paired bootstrap.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;
/// The bootstrap's seed: the same outcomes give the same interval on every run.
const BOOTSTRAP_SEED: u64 = 0x007e_1acc;
/// The share of resampled ratios left out on each side of a 95% interval.
const TAIL: f64 = 0.025;

/// A two-sided 95% interval `[low, high]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

/// Wilson's score interval of `successes` out of `trials` (the whole `[0, 1]` for no trials).
pub fn wilson(successes: usize, trials: usize) -> Interval {
    if trials == 0 {
        return Interval { low: 0.0, high: 1.0 };
    }
    let (n, p) = (trials as f64, successes as f64 / trials as f64);
    let z2 = Z_95 * Z_95;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z_95 / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Interval { low: (centre - half).max(0.0), high: (centre + half).min(1.0) }
}

/// Percentile interval of `accuracy(a) / accuracy(reference)` over questions resampled with
/// replacement, each resample taking the same questions for both (the outcomes are paired: entry
/// `i` of both is question `i`). Resamples where the reference gets nothing right are skipped;
/// `None` when every one is, or when the lengths differ or are zero.
pub fn paired_ratio(a: &[bool], reference: &[bool]) -> Option<Interval> {
    if a.len() != reference.len() || a.is_empty() {
        return None;
    }
    let n = a.len();
    let mut rng = StdRng::seed_from_u64(BOOTSTRAP_SEED);
    let mut ratios = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    for _ in 0..BOOTSTRAP_RESAMPLES {
        let (mut hits, mut reference_hits) = (0usize, 0usize);
        for _ in 0..n {
            let i = rng.random_range(0..n);
            hits += usize::from(a[i]);
            reference_hits += usize::from(reference[i]);
        }
        if reference_hits > 0 {
            ratios.push(hits as f64 / reference_hits as f64);
        }
    }
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    let at = |share: f64| ratios[((share * ratios.len() as f64) as usize).min(ratios.len() - 1)];
    Some(Interval { low: at(TAIL), high: at(1.0 - TAIL) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_published_values() {
        // 81 of 263 (Wilson 1927 as tabulated by Newcombe 1998, method 3): 0.2553–0.3662.
        let i = wilson(81, 263);
        assert!((i.low - 0.2553).abs() < 5e-4 && (i.high - 0.3662).abs() < 5e-4, "{i:?}");
        // All right stays below 1 on the low side, and inside [0, 1].
        let all = wilson(20, 20);
        assert!(all.low > 0.8 && all.low < 0.9 && all.high == 1.0, "{all:?}");
        assert_eq!(wilson(0, 0), Interval { low: 0.0, high: 1.0 });
    }

    #[test]
    fn paired_ratios_are_tight_when_the_answers_agree() {
        let reference: Vec<bool> = (0..500).map(|i| i % 10 != 0).collect();
        let same = paired_ratio(&reference, &reference).unwrap();
        assert_eq!((same.low, same.high), (1.0, 1.0));
        // One question in ten lost: RelAcc 0.889, and the interval holds it.
        let fewer: Vec<bool> = reference.iter().enumerate().map(|(i, &r)| r && i % 10 != 1).collect();
        let ratio = paired_ratio(&fewer, &reference).unwrap();
        assert!(ratio.low < 0.889 && 0.889 < ratio.high && ratio.high - ratio.low < 0.06, "{ratio:?}");
        assert!(paired_ratio(&fewer, &reference[..10]).is_none());
        assert!(paired_ratio(&[true], &[false]).is_none());
    }
}
