//! Per-layer key/value cache. Layers may hold different lengths (token pruning drops visual
//! entries from some layers only); every layer can be cropped, which speculative decoding needs.

use burn::prelude::*;

use crate::error::{BackboneError, Result};

/// Initial room, in positions, reserved on the first append beyond the appended length.
const INITIAL_SPARE: usize = 64;

/// Keys and values of one decoder layer, stored in a growable preallocated buffer.
#[derive(Debug, Clone)]
pub struct LayerKvCache<B: Backend> {
    /// `[batch, kv_heads, capacity, head_dim]`
    keys: Option<Tensor<B, 4>>,
    values: Option<Tensor<B, 4>>,
    len: usize,
}

impl<B: Backend> Default for LayerKvCache<B> {
    fn default() -> Self {
        Self { keys: None, values: None, len: 0 }
    }
}

impl<B: Backend> LayerKvCache<B> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The cached keys and values, `[batch, kv_heads, len, head_dim]` each (`None` while empty).
    pub fn entries(&self) -> Option<(Tensor<B, 4>, Tensor<B, 4>)> {
        let (keys, values) = (self.keys.as_ref()?, self.values.as_ref()?);
        (self.len > 0).then(|| (keys.clone().narrow(2, 0, self.len), values.clone().narrow(2, 0, self.len)))
    }

    /// Appends `[batch, kv_heads, new, head_dim]` keys/values and returns all cached ones.
    pub fn append(&mut self, keys: Tensor<B, 4>, values: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [batch, heads, new, head_dim] = keys.dims();
        let needed = self.len + new;
        let capacity = self.keys.as_ref().map_or(0, |k| k.dims()[2]);
        if needed > capacity {
            let capacity = (capacity * 2).max(needed + INITIAL_SPARE);
            let grow = |old: Option<Tensor<B, 4>>| {
                let fresh = Tensor::<B, 4>::zeros([batch, heads, capacity, head_dim], &keys.device());
                match old {
                    Some(old) if self.len > 0 => {
                        fresh.slice_assign([0..batch, 0..heads, 0..self.len, 0..head_dim], old.narrow(2, 0, self.len))
                    }
                    _ => fresh,
                }
            };
            self.keys = Some(grow(self.keys.take()));
            self.values = Some(grow(self.values.take()));
        }
        let range = [0..batch, 0..heads, self.len..needed, 0..head_dim];
        let k = self.keys.take().expect("allocated above").slice_assign(range.clone(), keys);
        let v = self.values.take().expect("allocated above").slice_assign(range, values);
        self.len = needed;
        let view = (k.clone().narrow(2, 0, needed), v.clone().narrow(2, 0, needed));
        self.keys = Some(k);
        self.values = Some(v);
        view
    }

    /// A cache whose batch entry `i` is this cache's entry `entries[i]` (several continuations
    /// of each prefix in one forward).
    pub fn select_batch(&self, entries: &Tensor<B, 1, Int>) -> Self {
        let select =
            |t: &Option<Tensor<B, 4>>| t.as_ref().map(|t| t.clone().narrow(2, 0, self.len).select(0, entries.clone()));
        match self.len {
            0 => Self::default(),
            len => Self { keys: select(&self.keys), values: select(&self.values), len },
        }
    }

    /// Of the last `tail` entries keeps those at `keep` (ascending indices into the tail), moved
    /// to follow the entries before the tail: the accepted path of a draft tree.
    pub fn keep_tail(&mut self, tail: usize, keep: &[usize]) -> Result<()> {
        let start = self
            .len
            .checked_sub(tail)
            .ok_or_else(|| BackboneError::Cache(format!("a tail of {tail} in a layer cache of length {}", self.len)))?;
        if keep.iter().any(|&i| i >= tail) || keep.windows(2).any(|w| w[0] >= w[1]) {
            return Err(BackboneError::Cache(format!(
                "cannot keep entries {keep:?} of a tail of {tail}: they must be ascending and inside it"
            )));
        }
        if keep.iter().enumerate().all(|(j, &i)| i == j) {
            return self.crop(start + keep.len());
        }
        let indices: Vec<i64> = keep.iter().map(|&i| (start + i) as i64).collect();
        let compact = |t: Tensor<B, 4>| {
            let [batch, heads, _, head_dim] = t.dims();
            let indices = Tensor::<B, 1, Int>::from_data(TensorData::new(indices.clone(), [keep.len()]), &t.device());
            let kept = t.clone().select(2, indices);
            t.slice_assign([0..batch, 0..heads, start..start + keep.len(), 0..head_dim], kept)
        };
        self.keys = self.keys.take().map(compact);
        self.values = self.values.take().map(compact);
        self.len = start + keep.len();
        Ok(())
    }

    /// Keeps only the first `len` entries.
    pub fn crop(&mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Err(BackboneError::Cache(format!("cannot crop a layer cache of length {} to {len}", self.len)));
        }
        self.len = len;
        Ok(())
    }
}

/// One [`LayerKvCache`] per decoder layer.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<LayerKvCache<B>>,
}

impl<B: Backend> KvCache<B> {
    pub fn new(num_layers: usize) -> Self {
        Self { layers: (0..num_layers).map(|_| LayerKvCache::default()).collect() }
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn layer(&self, index: usize) -> &LayerKvCache<B> {
        &self.layers[index]
    }

    pub fn layer_mut(&mut self, index: usize) -> &mut LayerKvCache<B> {
        &mut self.layers[index]
    }

    /// Lengths of every layer, in layer order.
    pub fn lengths(&self) -> Vec<usize> {
        self.layers.iter().map(LayerKvCache::len).collect()
    }

    /// Every layer with batch entry `i` taken from this cache's entry `entries[i]`.
    pub fn select_batch(&self, entries: &[usize]) -> Self {
        let device = self.layers.iter().find_map(|layer| layer.keys.as_ref().map(Tensor::device));
        let Some(device) = device else { return Self::new(self.layers.len()) };
        let indices: Vec<i64> = entries.iter().map(|&e| e as i64).collect();
        let entries = Tensor::<B, 1, Int>::from_data(TensorData::new(indices, [entries.len()]), &device);
        Self { layers: self.layers.iter().map(|layer| layer.select_batch(&entries)).collect() }
    }

    /// Bytes of the buffers the layers hold (their room for later entries included).
    pub fn stored_bytes(&self) -> usize {
        let bytes = |t: &Option<Tensor<B, 4>>| t.as_ref().map_or(0, |t| t.shape().num_elements() * t.dtype().size());
        self.layers.iter().map(|layer| bytes(&layer.keys) + bytes(&layer.values)).sum()
    }

    /// Keeps the first `len` entries of every layer (e.g. the accepted prefix after a draft).
    pub fn crop(&mut self, len: usize) -> Result<()> {
        self.layers.iter_mut().try_for_each(|layer| layer.crop(len))
    }

    /// [`LayerKvCache::keep_tail`] on each of `layers`.
    pub fn keep_tail(&mut self, layers: std::ops::Range<usize>, tail: usize, keep: &[usize]) -> Result<()> {
        self.layers[layers].iter_mut().try_for_each(|layer| layer.keep_tail(tail, keep))
    }

    /// Drops the last `count` entries of every layer (e.g. rejected draft tokens).
    pub fn truncate_last(&mut self, count: usize) -> Result<()> {
        for layer in &mut self.layers {
            let len = layer.len().checked_sub(count).ok_or_else(|| {
                BackboneError::Cache(format!("cannot drop {count} entries from a layer holding {}", layer.len()))
            })?;
            layer.crop(len)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    /// A one-head cache whose entry `i` holds the value `i` (keys) and `-i` (values).
    fn numbered(len: usize) -> LayerKvCache<Flex> {
        let mut cache = LayerKvCache::default();
        let device = Default::default();
        let entries = |sign: f32| {
            Tensor::<Flex, 1>::from_data(
                TensorData::new((0..len).map(|i| sign * i as f32).collect::<Vec<_>>(), [len]),
                &device,
            )
            .reshape([1, 1, len, 1])
        };
        cache.append(entries(1.0), entries(-1.0));
        cache
    }

    fn contents(cache: &mut LayerKvCache<Flex>) -> (Vec<f32>, Vec<f32>) {
        let device = Default::default();
        let empty = Tensor::<Flex, 4>::zeros([1, 1, 0, 1], &device);
        let (k, v) = cache.append(empty.clone(), empty);
        (k.into_data().to_vec().unwrap(), v.into_data().to_vec().unwrap())
    }

    #[test]
    fn keep_tail_moves_the_kept_entries_up_behind_the_context() {
        let mut cache = numbered(8);
        cache.keep_tail(5, &[0, 2, 4]).unwrap();
        assert_eq!(
            contents(&mut cache),
            (vec![0.0, 1.0, 2.0, 3.0, 5.0, 7.0], vec![-0.0, -1.0, -2.0, -3.0, -5.0, -7.0])
        );
        let mut prefix = numbered(8);
        prefix.keep_tail(5, &[0, 1]).unwrap();
        assert_eq!(contents(&mut prefix).0, vec![0.0, 1.0, 2.0, 3.0, 4.0]);
        assert!(numbered(8).keep_tail(9, &[]).is_err());
        assert!(numbered(8).keep_tail(5, &[2, 1]).is_err());
        assert!(numbered(8).keep_tail(5, &[5]).is_err());
    }
}
