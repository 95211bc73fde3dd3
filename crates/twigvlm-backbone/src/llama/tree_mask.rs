//! Tree attention for speculative decoding: the tokens of a draft tree sit side by side at the
//! end of the KV cache, and each may see the committed context, its ancestors and itself, never
//! another branch. Positions come from the rotary angles (a node's depth), not from this mask.

use burn::prelude::*;

/// Which of the cache's last `tail` entries each token of a forward sees; the forward's tokens
/// are the last `rows` of those entries, and every entry before the tail is visible to all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeMask {
    rows: usize,
    tail: usize,
    /// Row-major `[rows, tail]`.
    visible: Vec<bool>,
}

impl TreeMask {
    /// `parents[i]`: the tail index of tail entry `i`'s parent (`None` for a child of the
    /// committed context), always below `i`. The forward's tokens are the last `rows` entries.
    ///
    /// # Panics
    /// When a parent does not come before its child, or `rows` exceeds the tail.
    pub fn from_parents(parents: &[Option<usize>], rows: usize) -> Self {
        let tail = parents.len();
        assert!(rows <= tail, "{rows} new tokens in a tree tail of {tail}");
        let mut visible = vec![false; rows * tail];
        for row in 0..rows {
            let mut node = Some(tail - rows + row);
            while let Some(entry) = node {
                visible[row * tail + entry] = true;
                node = parents[entry];
                assert!(node.is_none_or(|parent| parent < entry), "tree entry {entry} has parent {node:?} after it");
            }
        }
        Self { rows, tail, visible }
    }

    /// `rows` new tokens in sequence after a cache, each seeing the ones before it and itself:
    /// the causal rule of a several-row forward after a cache, spelled out.
    pub fn chain(rows: usize) -> Self {
        let visible = (0..rows).flat_map(|row| (0..rows).map(move |entry| entry <= row)).collect();
        Self { rows, tail: rows, visible }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// How many of the cache's last entries the tree spans.
    pub fn tail(&self) -> usize {
        self.tail
    }

    /// Row-major `[rows, tail]`: whether each row sees each tail entry.
    pub fn visible(&self) -> &[bool] {
        &self.visible
    }

    /// `[1, 1, rows, keys]`, true where attention is masked out (burn's convention), for a cache
    /// holding `keys` entries after the forward's append.
    ///
    /// # Panics
    /// When the cache holds fewer entries than the tree's tail.
    pub fn masked<B: Backend>(&self, keys: usize, device: &B::Device) -> Tensor<B, 4, Bool> {
        assert!(keys >= self.tail, "a tree tail of {} in a cache of {keys}", self.tail);
        let context = keys - self.tail;
        let data: Vec<bool> = (0..self.rows)
            .flat_map(|row| (0..keys).map(move |key| key >= context && !self.visible[row * self.tail + key - context]))
            .collect();
        Tensor::<B, 2, Bool>::from_data(TensorData::new(data, [self.rows, keys]), device).unsqueeze::<4>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_is_the_tree_of_one_branch() {
        let parents: Vec<Option<usize>> = (0..5usize).map(|i| i.checked_sub(1)).collect();
        assert_eq!(TreeMask::chain(5), TreeMask::from_parents(&parents, 5));
    }

    #[test]
    fn each_token_sees_the_context_its_ancestors_and_itself() {
        // root(0) → a(1), b(2); a → c(3). The forward runs b and c.
        let mask = TreeMask::from_parents(&[None, Some(0), Some(0), Some(1)], 2);
        let masked: Vec<bool> =
            mask.masked::<burn::backend::Flex>(6, &Default::default()).into_data().to_vec().unwrap();
        #[rustfmt::skip]
        let expected = [
            false, false, false, true, false, true,  // b: context, root, b
            false, false, false, false, true, false, // c: context, root, a, c
        ];
        assert_eq!(masked, expected);
    }

    #[test]
    #[should_panic(expected = "after it")]
    fn a_parent_must_come_first() {
        TreeMask::from_parents(&[Some(1), None], 2);
    }
}
