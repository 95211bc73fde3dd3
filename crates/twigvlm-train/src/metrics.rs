//! Held-out metrics the objectives share: greedy predictions from logits and exact match per task.

use std::collections::BTreeMap;

use burn::prelude::*;
use twigvlm_backbone::ops::DecodeOps;

/// The argmax class of every row of `[rows, classes]` logits.
pub fn argmax_ids<B: DecodeOps>(logits: Tensor<B, 2>) -> Vec<i64> {
    logits.argmax(1).into_data().convert::<i64>().into_vec::<i64>().expect("int argmax")
}

/// Share of answers entirely right, per task, reported as `{task}_acc`.
#[derive(Debug, Default)]
pub struct TaskAccuracy {
    /// task → (right, seen)
    tally: BTreeMap<String, (usize, usize)>,
}

impl TaskAccuracy {
    pub fn record(&mut self, task: &str, right: bool) {
        let entry = self.tally.entry(task.to_string()).or_default();
        entry.0 += right as usize;
        entry.1 += 1;
    }

    pub fn into_metrics(self) -> impl Iterator<Item = (String, f64)> {
        self.tally.into_iter().map(|(task, (right, n))| (format!("{task}_acc"), right as f64 / n.max(1) as f64))
    }
}
