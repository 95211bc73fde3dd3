//! Attention of a few new query rows over a layer's KV cache, one cube per (row, head, batch):
//! the row's query waits in shared memory; the cube walks the keys a tile at a time (a unit per
//! key scores it), keeps the running maximum and sum of the softmax in f32 (online softmax) and
//! accumulates the values into an f32 row in shared memory, each unit owning a strided share of
//! the head dimension. KV heads are read where they are (grouped-query heads share them, nothing
//! is copied), and the causal rule aligns the rows with the end of the cache: row `r` of `rows`
//! sees the keys up to `keys − rows + r`, whatever `rows` is.

use burn::tensor::Shape;
use burn::tensor::TensorMetadata;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;

/// Keys scored per tile, one per unit.
const TILE: u32 = 64;

/// The score of a key the row does not see: finite, as WGSL has no infinity literal.
const HIDDEN: f32 = -1.0e30;

#[cube(launch)]
// Nested conditions: a kernel's `&&` evaluates both sides, and the visibility read is only in
// bounds inside the tree's tail.
#[allow(clippy::too_many_arguments, clippy::collapsible_if)]
fn attention_kernel<F: Float>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    visible: &Tensor<F>,
    out: &mut Tensor<F>,
    scale: f32,
    tail: u32,
    #[comptime] head_dim: u32,
    #[comptime] tile: u32,
    #[define(F)] _dtype: StorageType,
) {
    let dim = head_dim as usize;
    let width = tile as usize;
    let row = CUBE_POS_X as usize;
    let head = CUBE_POS_Y as usize;
    let batch = CUBE_POS_Z as usize;
    let unit = UNIT_POS_X as usize;
    let rows = q.shape(2);
    let keys = k.shape(2);
    let kv_head = head / (q.shape(1) / k.shape(1));
    let tail = tail as usize;
    // Without a tree (tail 0) the causal rule; with one, every key, the tree's tail masked.
    let mut limit = keys;
    if tail == 0 {
        limit = keys - rows + row + 1;
    }
    let context = keys - tail;

    let mut query = SharedMemory::<f32>::new(dim);
    let mut acc = SharedMemory::<f32>::new(dim);
    let mut weights = SharedMemory::<f32>::new(width);
    let q_row = batch * q.stride(0) + head * q.stride(1) + row * q.stride(2);
    let mut j = unit;
    while j < dim {
        query[j] = f32::cast_from(q[q_row + j * q.stride(3)]) * scale;
        acc[j] = 0.0f32;
        j += width;
    }
    sync_cube();

    let k_head = batch * k.stride(0) + kv_head * k.stride(1);
    let v_head = batch * v.stride(0) + kv_head * v.stride(1);
    let mut max = f32::new(HIDDEN);
    let mut sum = 0.0f32;
    let mut start = 0usize;
    while start < limit {
        let key = start + unit;
        let mut seen = key < limit;
        if seen {
            if key >= context {
                seen = visible[row * tail + key - context] > F::new(0.5);
            }
        }
        let mut score = f32::new(HIDDEN);
        if seen {
            let k_row = k_head + key * k.stride(2);
            let mut dot = 0.0f32;
            let mut j = 0usize;
            while j < dim {
                dot += query[j] * f32::cast_from(k[k_row + j * k.stride(3)]);
                j += 1;
            }
            score = dot;
        }
        weights[unit] = score;
        sync_cube();

        let mut new_max = max;
        let mut i = 0usize;
        while i < width {
            if weights[i] > new_max {
                new_max = weights[i];
            }
            i += 1;
        }
        sync_cube();
        let mut weight = 0.0f32;
        if seen {
            weight = (score - new_max).exp();
        }
        weights[unit] = weight;
        sync_cube();

        let correction = (max - new_max).exp();
        let mut tile_sum = 0.0f32;
        let mut i = 0usize;
        while i < width {
            tile_sum += weights[i];
            i += 1;
        }
        sum = sum * correction + tile_sum;
        let mut j = unit;
        while j < dim {
            let mut value = acc[j] * correction;
            let mut i = 0usize;
            while i < width {
                if start + i < limit {
                    value += weights[i] * f32::cast_from(v[v_head + (start + i) * v.stride(2) + j * v.stride(3)]);
                }
                i += 1;
            }
            acc[j] = value;
            j += width;
        }
        max = new_max;
        sync_cube();
        start += width;
    }

    // Written `[batch, rows, heads, head_dim]`: the layout the output projection reads.
    let out_row = ((batch * rows + row) * q.shape(1) + head) * dim;
    let mut j = unit;
    while j < dim {
        out[out_row + j] = F::cast_from(acc[j] / sum);
        j += width;
    }
}

/// Softmax attention of q `[batch, heads, rows, head_dim]` over k and v
/// `[batch, kv_heads, keys, head_dim]` (any strides, one float type), scores scaled by
/// `1/√head_dim`. `tree`: `[rows, tail]`, nonzero where a row sees an entry of the cache's last
/// `tail` keys (every earlier key is seen); without it the causal rule. The result is
/// `[batch, rows, heads, head_dim]`, contiguous: the layout in which the heads are concatenated.
pub fn attention<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    tree: Option<CubeTensor<R>>,
) -> CubeTensor<R> {
    let [batch, heads, rows, head_dim] = q.shape().dims::<4>();
    let rows_first = Shape::new([batch, rows, heads, head_dim]);
    let out = empty_device_dtype(q.client.clone(), q.device.clone(), rows_first, q.dtype);
    let tail = tree.as_ref().map_or(0, |tree| tree.shape()[1]);
    // Without a tree the kernel never reads `visible`; any tensor of the float type binds it.
    let visible = tree.unwrap_or_else(|| q.clone());
    let dtype = q.dtype;
    attention_kernel::launch::<R>(
        &out.client,
        CubeCount::Static(rows as u32, heads as u32, batch as u32),
        CubeDim::new_1d(TILE),
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        visible.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        (head_dim as f32).powf(-0.5),
        tail as u32,
        head_dim as u32,
        TILE,
        dtype.into(),
    );
    out
}
