//! Linear layers for one token at a time (decoding). Some CPU matmul kernels run a one-row
//! product on a single thread however large the weight; splitting the inner dimension into
//! `split` blocks turns it into a batch of `split` one-row products, which such backends spread
//! over their threads, and a sum. Same result up to float rounding; `split = 1` is the plain layer.

use burn::nn::Linear;
use burn::prelude::*;

/// `linear(x)` for `x` of shape `[batch, seq, d_in]`, split as described above when the input is
/// a single row and `split` divides `d_in`.
pub fn linear<B: Backend>(linear: &Linear<B>, x: Tensor<B, 3>, split: usize) -> Tensor<B, 3> {
    let [batch, seq, d_in] = x.dims();
    if split <= 1 || batch * seq != 1 || d_in % split != 0 {
        return linear.forward(x);
    }
    let weight = linear.weight.val();
    let d_out = weight.dims()[1];
    let blocks = x.reshape([split, 1, d_in / split]).matmul(weight.reshape([split, d_in / split, d_out]));
    let out = blocks.sum_dim(0);
    match &linear.bias {
        Some(bias) => out + bias.val().reshape([1, 1, d_out]),
        None => out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::nn::LinearConfig;

    #[test]
    fn a_split_layer_equals_the_plain_one() {
        let device = Default::default();
        let layer = LinearConfig::new(64, 24).with_bias(true).init::<Flex>(&device);
        let x = Tensor::<Flex, 3>::random([1, 1, 64], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let plain = layer.forward(x.clone());
        for split in [1, 2, 4, 8, 3] {
            let diff = (linear(&layer, x.clone(), split) - plain.clone()).abs().max().into_scalar();
            assert!(diff < 1e-5, "split {split}: {diff}");
        }
        // Several rows are never split.
        let rows = Tensor::<Flex, 3>::random([1, 3, 64], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        assert_eq!(linear(&layer, rows.clone(), 4).into_data(), layer.forward(rows).into_data());
    }
}
