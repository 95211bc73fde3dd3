//! Turning one query's attention into a ranking of visual tokens, and keeping the best.

use std::cmp::Ordering;
use std::ops::Range;

use burn::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The head-mean attention that one query row pays to each key in `keys`: what TTP ranks by
/// (and what a twig's attention term trains), as a tensor `[keys]`.
///
/// # Shapes
/// - probs: `[1, heads, 1, all_keys]`
pub fn head_mean_scores<B: Backend>(probs: Tensor<B, 4>, keys: &Range<usize>) -> Tensor<B, 1> {
    probs.mean_dim(1).narrow(3, keys.start, keys.len()).reshape([keys.len()])
}

/// [`head_mean_scores`] read back.
pub fn head_mean_row<B: Backend>(probs: Tensor<B, 4>, keys: Range<usize>) -> Vec<f32> {
    head_mean_scores(probs, &keys).into_data().convert::<f32>().into_vec::<f32>().expect("f32 attention")
}

/// Seeded uniform scores: their top-k is a uniformly random subset.
pub fn random_scores(count: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count).map(|_| rng.random::<f32>()).collect()
}

/// Indices of the `keep` highest scores, ascending (the tokens keep their order). Ties go to the
/// earlier token; NaN ranks last.
pub fn top_indices(scores: &[f32], keep: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| match (scores[a].is_nan(), scores[b].is_nan()) {
        (false, false) => scores[b].partial_cmp(&scores[a]).unwrap_or(Ordering::Equal),
        (nan_a, nan_b) => nan_a.cmp(&nan_b),
    });
    order.truncate(keep);
    order.sort_unstable();
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_best_in_order() {
        assert_eq!(top_indices(&[0.1, 0.5, 0.2, 0.9, 0.5], 3), [1, 3, 4]);
        assert_eq!(top_indices(&[0.3, f32::NAN, 0.1], 2), [0, 2]);
        assert_eq!(top_indices(&[0.3, 0.1], 5), [0, 1]);
        assert!(top_indices(&[0.3, 0.1], 0).is_empty());
    }

    #[test]
    fn random_scores_depend_on_the_seed_only() {
        assert_eq!(random_scores(16, 3), random_scores(16, 3));
        assert_ne!(top_indices(&random_scores(16, 3), 4), top_indices(&random_scores(16, 4), 4));
    }
}
