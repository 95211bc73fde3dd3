//! The default bodies of [`super::DecodeOps`]: plain burn tensor ops, differentiable, on every
//! backend. Also the yardstick the specialised kernels are tested against.

use burn::prelude::*;

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
