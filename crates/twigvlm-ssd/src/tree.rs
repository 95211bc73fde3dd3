//! Tree drafting (beyond the paper's chain, in the manner of EAGLE-2): the twig proposes its
//! `top_k` likeliest tokens at each expanded node, the `top_k` best new nodes of each depth
//! (by the product of the twig's probabilities along their path) are expanded in turn, and the
//! best `nodes` drafted tokens overall are checked by the base in one forward with tree
//! attention. The longest path the base agrees with is accepted, plus the base's next token.
//!
//! Greedy only: every accepted token is the base's argmax after its path, so the output is the
//! base's greedy output. Sampled decoding drafts a chain (`speculative`).
//!
//! Nothing is computed twice: expanded nodes run through base layers 0..K-1 and the twig once
//! (their lower-layer KV entries are the base's), verified nodes that were never expanded run
//! through layers 0..K-1 only, and the deep layers see each verified node once. Afterwards every
//! cache keeps only the accepted path's entries.

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use burn::prelude::*;
use twigvlm_backbone::TreeMask;

use crate::sampling::argmax;
use crate::speculator::{Round, RoundTime, Speculator};
use twigvlm_backbone::ops::DecodeOps;

/// The shape of a draft tree: `top_k:depth:nodes` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DraftTree {
    /// Children proposed per expanded node, and nodes expanded per depth.
    pub top_k: usize,
    /// Most drafted tokens on one path.
    pub depth: usize,
    /// Drafted tokens verified per round.
    pub nodes: usize,
}

impl DraftTree {
    /// Most nodes a tree may draft per round: the query rows one verification step attends with
    /// (the size the decode attention kernels are written for). Larger trees cost more per round
    /// than their extra accepted tokens save.
    pub const MAX_NODES: usize = 64;
}

impl FromStr for DraftTree {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let parts: Vec<usize> = text
            .split(':')
            .map(|p| p.trim().parse::<usize>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| format!("draft tree {text:?}: expected top_k:depth:nodes, e.g. 4:5:16"))?;
        let &[top_k, depth, nodes] = parts.as_slice() else {
            return Err(format!("draft tree {text:?}: expected three numbers top_k:depth:nodes, e.g. 4:5:16"));
        };
        if top_k == 0 || depth == 0 || nodes == 0 {
            return Err(format!("draft tree {text:?}: top_k, depth and nodes must all be at least 1"));
        }
        if nodes > Self::MAX_NODES {
            return Err(format!("draft tree {text:?}: at most {} nodes", Self::MAX_NODES));
        }
        if top_k > nodes || depth > nodes {
            return Err(format!("draft tree {text:?}: top_k and depth cannot exceed the {nodes} nodes"));
        }
        Ok(Self { top_k, depth, nodes })
    }
}

impl fmt::Display for DraftTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.top_k, self.depth, self.nodes)
    }
}

/// One token of the tree; node 0 is the round's root (the last emitted token, not yet run).
struct Node<B: Backend> {
    token: u32,
    parent: Option<usize>,
    depth: usize,
    /// Sum of the twig's log-probabilities along the path from the root.
    score: f32,
    /// Index among the round's entries in base layers 0..K-1 (None: not run yet).
    lower_entry: Option<usize>,
    /// Hidden state entering layer K, `[1, 1, hidden]`, once run.
    hidden_k: Option<Tensor<B, 3>>,
    /// Ran through the twig (its children were proposed).
    expanded: bool,
}

impl<B: DecodeOps> Speculator<'_, '_, B> {
    /// One greedy round from `root` (emitted, not yet run) at `start`, drafting at most
    /// `max_depth` tokens on any path; `eos` tokens are drafted but never expanded.
    pub(crate) fn tree_round(
        &mut self,
        root: u32,
        start: usize,
        max_depth: usize,
        shape: &DraftTree,
        eos: &[u32],
    ) -> Round {
        let began = Instant::now();
        self.twig_catch_up();
        let mut nodes = vec![Node {
            token: root,
            parent: None,
            depth: 0,
            score: 0.0,
            lower_entry: None,
            hidden_k: None,
            expanded: false,
        }];
        // Parent of each of the round's entries in base layers 0..K-1 (and, for the expanded
        // ones, which come first, in the twig's cache).
        let mut lower_parents: Vec<Option<usize>> = Vec::new();
        let mut frontier = vec![0];
        for _ in 0..max_depth {
            if frontier.is_empty() {
                break;
            }
            let (hidden, twig_hidden) = self.run_lower(&mut nodes, &frontier, &mut lower_parents, start, true);
            let twig_logits = self.draft_logits(twig_hidden.expect("the twig ran"));
            let vocab = twig_logits.len() / frontier.len();
            let mut children = Vec::new();
            for (row, &parent) in frontier.iter().enumerate() {
                nodes[parent].expanded = true;
                nodes[parent].hidden_k = Some(hidden.clone().narrow(1, row, 1));
                for (token, log_prob) in top_log_probs(&twig_logits[row * vocab..(row + 1) * vocab], shape.top_k) {
                    let (depth, score) = (nodes[parent].depth + 1, nodes[parent].score + log_prob);
                    children.push(nodes.len());
                    nodes.push(Node {
                        token,
                        parent: Some(parent),
                        depth,
                        score,
                        lower_entry: None,
                        hidden_k: None,
                        expanded: false,
                    });
                }
            }
            children.retain(|&c| !eos.contains(&nodes[c].token));
            frontier = best(&nodes, children, shape.top_k);
            frontier.sort_unstable();
        }

        let mut verified = best(&nodes, (1..nodes.len()).collect(), shape.nodes);
        verified.push(0);
        verified.sort_unstable();
        let unrun: Vec<usize> = verified.iter().copied().filter(|&n| nodes[n].hidden_k.is_none()).collect();
        if !unrun.is_empty() {
            let (hidden, _) = self.run_lower(&mut nodes, &unrun, &mut lower_parents, start, false);
            for (row, &n) in unrun.iter().enumerate() {
                nodes[n].hidden_k = Some(hidden.clone().narrow(1, row, 1));
            }
        }

        let slot = |n: usize| verified.binary_search(&n).expect("a verified node");
        let deep_parents: Vec<Option<usize>> = verified.iter().map(|&n| nodes[n].parent.map(slot)).collect();
        let positions: Vec<usize> = verified.iter().map(|&n| start + nodes[n].depth).collect();
        let hidden = Tensor::cat(verified.iter().map(|&n| nodes[n].hidden_k.clone().expect("run above")).collect(), 1);
        let layers = self.k()..self.base.num_layers();
        let drafted_at = Instant::now();
        let logits = self.deep(hidden, &positions, Some(&TreeMask::from_parents(&deep_parents, verified.len())));
        let time = RoundTime::since(began, drafted_at);
        let vocab = logits.len() / verified.len();
        let base_pick = |slot: usize| argmax(&logits[slot * vocab..(slot + 1) * vocab]);

        let mut path = vec![0];
        let mut correction = base_pick(0);
        while let Some(&child) =
            verified.iter().find(|&&n| nodes[n].parent == path.last().copied() && nodes[n].token == correction)
        {
            path.push(child);
            correction = base_pick(slot(child));
        }

        let lower_keep: Vec<usize> =
            path.iter().map(|&n| nodes[n].lower_entry.expect("every verified node ran")).collect();
        let expanded = nodes.iter().filter(|n| n.expanded).count();
        let twig_keep: Vec<usize> =
            path.iter().filter(|&&n| nodes[n].expanded).map(|&n| nodes[n].lower_entry.expect("expanded")).collect();
        let deep_keep: Vec<usize> = path.iter().map(|&n| slot(n)).collect();
        self.base_cache.keep_tail(0..self.k(), lower_parents.len(), &lower_keep).expect("the round's own entries");
        self.base_cache.keep_tail(layers, verified.len(), &deep_keep).expect("the round's own entries");
        self.twig_cache.keep_tail(0..self.twig.config.t, expanded, &twig_keep).expect("the round's own entries");
        let last = *path.last().expect("the root");
        if !nodes[last].expanded {
            // Only a path's last node can be unexpanded; the twig catches up on it next round.
            self.twig_behind.push((nodes[last].hidden_k.clone().expect("verified"), start + nodes[last].depth));
        }
        Round {
            drafted: verified.len() - 1,
            accepted: path[1..].iter().map(|&n| nodes[n].token).collect(),
            correction,
            time,
        }
    }

    /// Runs `rows` (nodes in index order) through base layers 0..K-1 with tree attention,
    /// appending their entries, and through the twig too when `with_twig`; returns the layer-K
    /// hidden states `[1, rows, hidden]` and the twig's output.
    fn run_lower(
        &mut self,
        nodes: &mut [Node<B>],
        rows: &[usize],
        lower_parents: &mut Vec<Option<usize>>,
        start: usize,
        with_twig: bool,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 3>>) {
        for &n in rows {
            nodes[n].lower_entry = Some(lower_parents.len());
            lower_parents
                .push(nodes[n].parent.map(|p| nodes[p].lower_entry.expect("a parent runs before its children")));
        }
        let mask = TreeMask::from_parents(lower_parents, rows.len());
        let ids: Vec<i32> = rows.iter().map(|&n| nodes[n].token as i32).collect();
        let embeds = self.base.embed(Tensor::from_data(TensorData::new(ids, [1, rows.len()]), &self.device));
        let positions: Vec<usize> = rows.iter().map(|&n| start + nodes[n].depth).collect();
        let rope = self.base.rope(&positions, &self.device);
        let lower = self.base.stack_call(0..self.k(), embeds, &rope).with_tree(&mask);
        let hidden = self.runner.run_stack(lower.continuing(self.continues_draft()), &mut self.base_cache).hidden;
        let twig = with_twig.then(|| {
            let call = self.twig.stack_call(hidden.clone(), &rope).with_tree(&mask).continuing(self.continues_draft());
            self.runner.run_stack(call, &mut self.twig_cache).hidden
        });
        (hidden, twig)
    }
}

/// The `k` likeliest tokens of a logit row with their log-probabilities, likeliest first.
fn top_log_probs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(ids.len());
    let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    if k < ids.len() {
        ids.select_nth_unstable_by(k, by_logit);
        ids.truncate(k);
    }
    ids.sort_unstable_by(by_logit);
    ids.into_iter().map(|id| (id, logits[id as usize] - log_sum)).collect()
}

/// The `count` best of `candidates` by path score (ties: the earlier node), so a node's parent,
/// whose score is never lower, is chosen before it.
fn best<B: DecodeOps>(nodes: &[Node<B>], mut candidates: Vec<usize>, count: usize) -> Vec<usize> {
    candidates.sort_unstable_by(|&a, &b| nodes[b].score.total_cmp(&nodes[a].score).then(a.cmp(&b)));
    candidates.truncate(count);
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_log_probs_are_the_likeliest_tokens_in_order() {
        let top = top_log_probs(&[0.0, 3.0, 1.0, 3.0, -2.0], 3);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        let total: f32 = [0.0f32, 3.0, 1.0, 3.0, -2.0].iter().map(|l| l.exp()).sum();
        assert!((top[0].1 - (3.0f32.exp() / total).ln()).abs() < 1e-6);
        assert_eq!(top_log_probs(&[1.0, 2.0], 5).len(), 2);
    }

    #[test]
    fn draft_tree_parses_and_rejects_bad_shapes() {
        assert_eq!("4:5:16".parse::<DraftTree>(), Ok(DraftTree { top_k: 4, depth: 5, nodes: 16 }));
        assert_eq!("4:5:16".parse::<DraftTree>().unwrap().to_string(), "4:5:16");
        assert!("64:64:64".parse::<DraftTree>().is_ok());
        for bad in ["4:5", "4:0:16", "a:5:16", "4:5:16:1", "64:64:100000", "4:5:65", "32:2:16", "2:17:16"] {
            assert!(bad.parse::<DraftTree>().is_err(), "{bad}");
        }
    }
}
