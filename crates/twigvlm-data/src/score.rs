//! Scoring answers: exact match after normalisation for short answers, object-level precision and
//! recall for descriptions.

use std::collections::HashSet;

use serde::Serialize;

use crate::shapes::parse_description;

/// Lower case, inner whitespace collapsed, surrounding whitespace and trailing `.`/`!` removed.
pub fn normalise_answer(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    words.join(" ").trim_end_matches(['.', '!']).trim().to_lowercase()
}

pub fn exact_match(prediction: &str, reference: &str) -> bool {
    normalise_answer(prediction) == normalise_answer(reference)
}

/// Object-level counts of descriptions, summed over a dataset (micro average).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DescribeCounts {
    pub true_positives: usize,
    pub false_positives: usize,
    pub false_negatives: usize,
}

impl DescribeCounts {
    /// Adds one description: an object counts when colour, shape, row and column all match.
    pub fn add(&mut self, prediction: &str, reference: &str) {
        let predicted: HashSet<_> = parse_description(prediction).into_iter().collect();
        let truth: HashSet<_> = parse_description(reference).into_iter().collect();
        let hits = predicted.intersection(&truth).count();
        self.true_positives += hits;
        self.false_positives += predicted.len() - hits;
        self.false_negatives += truth.len() - hits;
    }

    pub fn precision(&self) -> f64 {
        ratio(self.true_positives, self.true_positives + self.false_positives)
    }

    pub fn recall(&self) -> f64 {
        ratio(self.true_positives, self.true_positives + self.false_negatives)
    }

    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}
