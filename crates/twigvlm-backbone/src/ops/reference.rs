//! The default bodies of [`super::DecodeOps`]: plain burn tensor ops, differentiable, on every
//! backend. Also the yardstick the specialised kernels are tested against.

use burn::prelude::*;
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::DType;

use super::KeyMask;
use crate::config::Activation;
use crate::llama::TreeMask;

/// See [`super::DecodeOps::linear`].
pub fn linear<B: Backend>(x: Tensor<B, 3>, weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Tensor<B, 3> {
    let weight = if weight.dtype() == x.dtype() { weight } else { weight.cast(x.dtype()) };
    let out = x.matmul(weight.unsqueeze());
    match bias {
        Some(bias) => out + bias.unsqueeze(),
        None => out,
    }
}

/// See [`super::DecodeOps::linear_weight`]: converted to the backend's float type and transposed
/// into a contiguous `[d_in, d_out]`.
pub fn linear_weight<B: Backend>(out_in: TensorData, device: &B::Device) -> Tensor<B, 2> {
    let [d_out, d_in] = [out_in.shape[0], out_in.shape[1]];
    let values = out_in.convert::<f32>().into_vec::<f32>().expect("a float weight");
    Tensor::from_data(TensorData::new(transpose(&values, d_out, d_in), [d_in, d_out]), device)
}

/// See [`super::DecodeOps::attention`].
pub fn attention<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, mask: KeyMask<'_>) -> Tensor<B, 4> {
    let [batch, heads, rows, head_dim] = q.dims();
    let kv_heads = k.dims()[1];
    match mask {
        KeyMask::Tree(tree) => {
            let mask = tree.masked(k.dims()[2], &k.device());
            let (k, v) = (repeat_kv(k, heads / kv_heads), repeat_kv(v, heads / kv_heads));
            burn_attention(q, k, v, Some(mask), None, AttentionModuleOptions::default())
        }
        // One query per head needs no mask; grouping the heads that share a KV head as that
        // head's "queries" avoids copying the cache once per head of the group.
        KeyMask::Causal if rows == 1 => {
            let grouped = q.reshape([batch, kv_heads, heads / kv_heads, head_dim]);
            let out = burn_attention(grouped, k, v, None, None, AttentionModuleOptions::default());
            out.reshape([batch, heads, 1, head_dim])
        }
        // Several rows after a cache (a prefill chunk, a verification): the causal rule spelled
        // out, query i seeing keys up to i + keys − rows, since kernels differ on where
        // `is_causal` aligns a query block shorter than the keys.
        KeyMask::Causal if rows < k.dims()[2] => attention(q, k, v, KeyMask::Tree(&TreeMask::chain(rows))),
        KeyMask::Causal => {
            let (k, v) = (repeat_kv(k, heads / kv_heads), repeat_kv(v, heads / kv_heads));
            burn_attention(q, k, v, None, None, AttentionModuleOptions { is_causal: true, ..Default::default() })
        }
    }
}

/// See [`super::DecodeOps::rms_norm`]; the sum of squares in f32 whatever the compute type, as
/// burn's `RmsNorm` does.
pub fn rms_norm<B: Backend>(x: Tensor<B, 3>, gamma: Tensor<B, 1>, epsilon: f64) -> Tensor<B, 3> {
    let dtype = x.dtype();
    let rms = (x.clone().cast(DType::F32).square().mean_dim(2) + epsilon).sqrt();
    (x / rms.cast(dtype)) * gamma.unsqueeze()
}

/// See [`super::DecodeOps::gated`].
pub fn gated<B: Backend>(gate: Tensor<B, 3>, up: Tensor<B, 3>, activation: Activation) -> Tensor<B, 3> {
    activation.apply(gate) * up
}

/// See [`super::DecodeOps::rope`].
pub fn rope<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
    let half = x.dims()[3] / 2;
    let first = x.clone().narrow(3, 0, half);
    let second = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![second.neg(), first], 3);
    x * cos + rotated * sin
}

/// `[batch, kv_heads, len, d]` → `[batch, kv_heads · group, len, d]`, each KV head serving its group.
pub fn repeat_kv<B: Backend>(t: Tensor<B, 4>, group: usize) -> Tensor<B, 4> {
    if group == 1 {
        return t;
    }
    let [batch, kv_heads, len, d] = t.dims();
    t.unsqueeze_dim::<5>(2).expand([batch, kv_heads, group, len, d]).reshape([batch, kv_heads * group, len, d])
}

/// `[rows, cols]` → `[cols, rows]`, in square tiles so that reads and writes both stay in cache
/// (a naive loop over a 7B checkpoint's matrices is dominated by cache misses).
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0.0; values.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = values[r * cols + c];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn transpose_moves_every_element() {
        // 3 x 70 crosses tile edges in both directions.
        let (rows, cols) = (3, 70);
        let values: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let t = super::transpose(&values, rows, cols);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(t[c * rows + r], values[r * cols + c]);
            }
        }
    }
}
