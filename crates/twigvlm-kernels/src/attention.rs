//! Scaled dot-product attention of a few query rows over a KV cache, read where it lies (strided
//! views of a preallocated buffer), with grouped-query heads and causal or tree visibility.
//!
//! Each (batch, head, query row) is computed on its own in one fixed order (scores over the
//! visible keys in key order, a max-subtracted softmax, the weighted sum of values in key order),
//! so a row's result does not depend on how many rows share the call.

use std::sync::Mutex;

use crate::simd::{dispatch, exp, lane_sum, LANES};
use crate::team;

/// Below this many multiply-adds the call runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 15;

/// A read-only 4-D f32 view `[batch, heads, seq, head_dim]` into `data`, element strides per
/// dimension (the last must be 1).
#[derive(Debug, Clone, Copy)]
pub struct View4<'a> {
    pub data: &'a [f32],
    pub shape: [usize; 4],
    pub strides: [usize; 4],
}

impl View4<'_> {
    fn row(&self, batch: usize, head: usize, index: usize) -> &[f32] {
        let start = batch * self.strides[0] + head * self.strides[1] + index * self.strides[2];
        &self.data[start..start + self.shape[3]]
    }
}

/// Which keys a query row sees. Rows are the last `rows` positions of the `keys` in the cache.
#[derive(Debug, Clone, Copy)]
pub enum Visibility<'a> {
    /// Row `i` of `rows` sees keys `0..=keys - rows + i`.
    Causal,
    /// Every key before the last `tail` is visible to all rows; `visible[row * tail + j]` says
    /// whether row `row` sees tail entry `j`.
    Tree { tail: usize, visible: &'a [bool] },
}

impl Visibility<'_> {
    fn sees(&self, row: usize, rows: usize, key: usize, keys: usize) -> bool {
        match *self {
            Visibility::Causal => key + rows <= keys + row,
            Visibility::Tree { tail, visible } => key + tail < keys || visible[row * tail + key + tail - keys],
        }
    }
}

/// `out[b, i, h] = softmax(q[b, h, i] · kᵀ · scale over the visible keys) · v` with KV head
/// `h / (heads / kv_heads)` serving head `h`; `out` is contiguous `[batch, rows, heads, head_dim]`
/// (the layout the output projection reads).
///
/// # Panics
/// If the shapes disagree, a last stride is not 1, or `heads` is not a multiple of `kv_heads`.
pub fn attention(q: View4<'_>, k: View4<'_>, v: View4<'_>, visibility: Visibility<'_>, scale: f32, out: &mut [f32]) {
    let [batch, heads, rows, head_dim] = q.shape;
    let [_, kv_heads, keys, _] = k.shape;
    assert_eq!(k.shape, v.shape, "keys and values differ in shape");
    assert_eq!([k.shape[0], k.shape[3]], [batch, head_dim], "queries and keys differ in batch or head size");
    assert!(kv_heads > 0 && heads % kv_heads == 0, "{heads} heads cannot share {kv_heads} KV heads");
    assert!(rows <= keys, "{rows} query rows over {keys} keys");
    assert!([q.strides[3], k.strides[3], v.strides[3]] == [1, 1, 1], "the head dimension must be contiguous");
    assert_eq!(out.len(), batch * heads * rows * head_dim, "out is not [batch, rows, heads, head_dim]");
    if let Visibility::Tree { tail, visible } = visibility {
        assert!(tail <= keys && visible.len() == rows * tail, "a tree of {tail} entries for {rows} rows, {keys} keys");
    }
    let group = heads / kv_heads;
    let one = |index: usize| {
        let (b, h) = (index / heads, index % heads);
        let mut head_out = vec![0.0f32; rows * head_dim];
        let mut scores = vec![0.0f32; keys];
        for (row, row_out) in head_out.chunks_exact_mut(head_dim).enumerate() {
            for (key, score) in scores.iter_mut().enumerate() {
                *score = if visibility.sees(row, rows, key, keys) { 0.0 } else { f32::NEG_INFINITY };
            }
            let cache = HeadCache { k: &k, v: &v, batch: b, kv_head: h / group };
            attend_row(q.row(b, h, row), &cache, scale, &mut scores, row_out);
        }
        head_out
    };
    let per_head: Vec<Mutex<Vec<f32>>> = (0..batch * heads).map(|_| Mutex::new(Vec::new())).collect();
    let fill = |index: usize| *per_head[index].lock().expect("no task panicked") = one(index);
    if batch * heads * rows * keys * head_dim < PARALLEL_MIN_MACS {
        (0..batch * heads).for_each(fill);
    } else {
        team::parallel_for(batch * heads, &fill);
    }
    let per_head: Vec<Vec<f32>> = per_head.into_iter().map(|m| m.into_inner().expect("no task panicked")).collect();
    for (index, head_out) in per_head.iter().enumerate() {
        let (b, h) = (index / heads, index % heads);
        for (row, values) in head_out.chunks_exact(head_dim).enumerate() {
            let start = ((b * rows + row) * heads + h) * head_dim;
            out[start..start + head_dim].copy_from_slice(values);
        }
    }
}

/// One KV head's keys and values.
struct HeadCache<'a> {
    k: &'a View4<'a>,
    v: &'a View4<'a>,
    batch: usize,
    kv_head: usize,
}

dispatch! {
/// One query row: `scores` holds 0 for visible keys and −∞ for hidden ones on entry (a mark
/// only: each visible key's score is computed before it is read).
fn attend_row(q: &[f32], cache: &HeadCache<'_>, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    let mut max = f32::NEG_INFINITY;
    for (key, score) in scores.iter_mut().enumerate() {
        if *score == 0.0 {
            *score = dot(q, cache.k.row(cache.batch, cache.kv_head, key)) * scale;
            max = max.max(*score);
        }
    }
    let mut sum = 0.0f32;
    for score in scores.iter_mut() {
        *score = if *score == f32::NEG_INFINITY { 0.0 } else { exp(*score - max) };
        sum += *score;
    }
    out.fill(0.0);
    for (key, &p) in scores.iter().enumerate() {
        if p != 0.0 {
            axpy(p, cache.v.row(cache.batch, cache.kv_head, key), out);
        }
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}
}

/// `Σ a[i]·b[i]` in eight interleaved partial sums, added pairwise, then the tail.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let full = a.len() - a.len() % LANES;
    for (xs, ys) in a[..full].chunks_exact(LANES).zip(b[..full].chunks_exact(LANES)) {
        for ((lane, &x), &y) in lanes.iter_mut().zip(xs).zip(ys) {
            *lane += x * y;
        }
    }
    let tree = lane_sum(&lanes);
    a[full..].iter().zip(&b[full..]).fold(tree, |acc, (&x, &y)| acc + x * y)
}

/// `out += p · v`.
#[inline(always)]
fn axpy(p: f32, v: &[f32], out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(v) {
        *o += p * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values::values;

    /// Every index of a `[a, b, c, d]` array.
    fn itertools(a: usize, b: usize, c: usize, d: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
        (0..a).flat_map(move |i| (0..b).flat_map(move |j| (0..c).flat_map(move |k| (0..d).map(move |l| (i, j, k, l)))))
    }

    fn contiguous(data: &[f32], shape: [usize; 4]) -> View4<'_> {
        let strides = [shape[1] * shape[2] * shape[3], shape[2] * shape[3], shape[3], 1];
        View4 { data, shape, strides }
    }

    /// f64 softmax attention, one row at a time.
    fn reference(q: &View4<'_>, k: &View4<'_>, v: &View4<'_>, vis: Visibility<'_>, scale: f32) -> Vec<f32> {
        let [batch, heads, rows, d] = q.shape;
        let (kv_heads, keys) = (k.shape[1], k.shape[2]);
        let mut out = Vec::new();
        for b in 0..batch {
            for h in 0..heads {
                let kvh = h / (heads / kv_heads);
                for r in 0..rows {
                    let s: Vec<Option<f64>> = (0..keys)
                        .map(|j| {
                            vis.sees(r, rows, j, keys).then(|| {
                                let qr = q.row(b, h, r);
                                let kr = k.row(b, kvh, j);
                                (0..d).map(|i| qr[i] as f64 * kr[i] as f64).sum::<f64>() * scale as f64
                            })
                        })
                        .collect();
                    let max = s.iter().flatten().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| x.map_or(0.0, |x| (x - max).exp())).collect();
                    let total: f64 = e.iter().sum();
                    for i in 0..d {
                        out.push((0..keys).map(|j| e[j] * v.row(b, kvh, j)[i] as f64).sum::<f64>() / total);
                    }
                }
            }
        }
        out.into_iter().map(|x| x as f32).collect()
    }

    #[test]
    fn matches_a_wide_reference_with_grouped_heads_and_both_visibilities() {
        let (batch, heads, kv_heads, d, keys) = (2, 6, 2, 13, 37);
        let kd = values(batch * kv_heads * keys * d, 1);
        let vd = values(batch * kv_heads * keys * d, 2);
        let (k, v) = (contiguous(&kd, [batch, kv_heads, keys, d]), contiguous(&vd, [batch, kv_heads, keys, d]));
        for rows in [1, 2, 5] {
            let qd = values(batch * heads * rows * d, 3 + rows as u32);
            let q = contiguous(&qd, [batch, heads, rows, d]);
            let tree: Vec<bool> = (0..rows * 7).map(|i| i % 3 != 1 || i % 7 == 6).collect();
            for vis in [Visibility::Causal, Visibility::Tree { tail: 7, visible: &tree }] {
                let mut out = vec![0.0; batch * heads * rows * d];
                attention(q, k, v, vis, 0.3, &mut out);
                let want = reference(&q, &k, &v, vis, 0.3);
                for (b, h, r, i) in itertools(batch, heads, rows, d) {
                    let (g, e) =
                        (out[((b * rows + r) * heads + h) * d + i], want[((b * heads + h) * rows + r) * d + i]);
                    assert!((g - e).abs() <= 1e-5 * (1.0 + e.abs()), "{rows} rows: {g} vs {e}");
                }
            }
        }
    }

    #[test]
    fn reads_strided_cache_views_and_rounds_each_row_as_alone() {
        // Keys and values live in a buffer with spare capacity (a preallocated cache).
        let (heads, kv_heads, d, capacity, keys, rows) = (4, 2, 16, 50, 30, 4);
        let kbuf = values(kv_heads * capacity * d, 7);
        let vbuf = values(kv_heads * capacity * d, 8);
        let view = |data| View4 { data, shape: [1, kv_heads, keys, d], strides: [0, capacity * d, d, 1] };
        let qd = values(heads * rows * d, 9);
        let mut together = vec![0.0; heads * rows * d];
        attention(
            contiguous(&qd, [1, heads, rows, d]),
            view(&kbuf),
            view(&vbuf),
            Visibility::Causal,
            0.25,
            &mut together,
        );
        for row in 0..rows {
            // Row `row` alone: the cache as it stood when that token was decoded.
            let alone_keys = keys - rows + row + 1;
            let short = |data| View4 { data, shape: [1, kv_heads, alone_keys, d], strides: [0, capacity * d, d, 1] };
            let q_row: Vec<f32> = (0..heads).flat_map(|h| qd[(h * rows + row) * d..][..d].to_vec()).collect();
            let mut alone = vec![0.0; heads * d];
            attention(
                contiguous(&q_row, [1, heads, 1, d]),
                short(&kbuf),
                short(&vbuf),
                Visibility::Causal,
                0.25,
                &mut alone,
            );
            assert_eq!(&together[row * heads * d..][..heads * d], &alone[..], "row {row}");
        }
    }
}
