//! The CPU backend's specialised operations against the reference bodies ([`reference`]): the
//! same results within float tolerance for every row count up to 17 and odd shapes, rows that
//! round the same alone and together, half-precision weights, and training on the default bodies.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::{DType, Distribution};
use twigvlm_backbone::config::Activation;
use twigvlm_backbone::llama::TreeMask;
use twigvlm_backbone::ops::{reference, DecodeOps, KeyMask};

type B = Flex;

/// f32 results: relative tolerance of the specialised kernels against the reference.
const F32_TOLERANCE: f32 = 1e-5;

fn random<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<B, D> {
    B::seed(&Default::default(), seed);
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

fn assert_close<const D: usize>(got: Tensor<B, D>, want: Tensor<B, D>, tolerance: f32, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    let scale = want.clone().abs().max().into_scalar().max(1.0);
    let diff = (got - want).abs().max().into_scalar();
    assert!(diff <= tolerance * scale, "{what}: max difference {diff} (scale {scale})");
}

/// A `[d_in, d_out]` weight held the way the loader holds it, in `dtype`.
fn loaded_weight(d_in: usize, d_out: usize, dtype: DType, seed: u64) -> Tensor<B, 2> {
    let out_in = random([d_out, d_in], seed).into_data().convert_dtype(dtype);
    <B as DecodeOps>::linear_weight(out_in, &Default::default())
}

#[test]
fn linear_equals_the_reference_for_every_row_count_and_dtype() {
    for (d_in, d_out) in [(7, 5), (33, 71), (64, 200), (129, 97)] {
        // Half-precision weights hold the f32 tolerance too: the reference widens the same stored values.
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let weight = loaded_weight(d_in, d_out, dtype, 1);
            let bias = random([d_out], 2);
            for rows in 1..=17 {
                let x = random([1, rows, d_in], 3 + rows as u64);
                let got = <B as DecodeOps>::linear(x.clone(), weight.clone(), Some(bias.clone()));
                let want = reference::linear(x, weight.clone().cast(DType::F32), Some(bias.clone()));
                assert_close(got, want, F32_TOLERANCE, &format!("{d_in}x{d_out} {dtype:?}, {rows} rows"));
            }
        }
    }
}

#[test]
fn a_row_rounds_the_same_alone_and_among_others() {
    let (d_in, d_out) = (77, 130);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let weight = loaded_weight(d_in, d_out, dtype, 5);
        let rows = random([1, 17, d_in], 6);
        let together = <B as DecodeOps>::linear(rows.clone(), weight.clone(), None);
        for row in 0..17 {
            let alone = <B as DecodeOps>::linear(rows.clone().narrow(1, row, 1), weight.clone(), None);
            assert_eq!(
                together.clone().narrow(1, row, 1).into_data(),
                alone.into_data(),
                "{dtype:?}, row {row}: not bitwise the same"
            );
        }
    }
}

#[test]
fn linear_many_equals_one_product_at_a_time() {
    let x = random([1, 3, 40], 7);
    let layers: Vec<_> =
        [24, 8, 8].iter().enumerate().map(|(i, &d)| (loaded_weight(40, d, DType::F16, 8 + i as u64), None)).collect();
    let together = <B as DecodeOps>::linear_many(x.clone(), layers.clone());
    for ((weight, bias), got) in layers.into_iter().zip(together) {
        assert_eq!(got.into_data(), <B as DecodeOps>::linear(x.clone(), weight, bias).into_data());
    }
}

#[test]
fn a_weight_held_another_way_rounds_like_a_loaded_one() {
    let loaded = loaded_weight(33, 21, DType::F32, 9);
    let contiguous = Tensor::<B, 2>::from_data(loaded.to_data(), &Default::default());
    let x = random([1, 4, 33], 10);
    assert_eq!(
        <B as DecodeOps>::linear(x.clone(), contiguous, None).into_data(),
        <B as DecodeOps>::linear(x, loaded, None).into_data()
    );
}

#[test]
fn attention_equals_the_reference_causally_and_over_a_tree() {
    let (heads, kv_heads, head_dim) = (6, 2, 16);
    for keys in [1, 9, 40] {
        for rows in (1..=keys.min(17)).step_by(4) {
            let q = random([1, heads, rows, head_dim], 11);
            // A cache buffer with spare capacity, read through a view as the model does.
            let k = random([1, kv_heads, keys + 8, head_dim], 12).narrow(2, 0, keys);
            let v = random([1, kv_heads, keys + 8, head_dim], 13).narrow(2, 0, keys);
            let causal =
                |f: fn(_, _, _, KeyMask<'_>) -> Tensor<B, 4>| f(q.clone(), k.clone(), v.clone(), KeyMask::Causal);
            assert_close(
                causal(<B as DecodeOps>::attention),
                causal(reference::attention),
                F32_TOLERANCE,
                &format!("causal, {rows} rows over {keys} keys"),
            );
            let parents: Vec<Option<usize>> =
                (0..rows).map(|i| if i == 0 { None } else { Some((i - 1) / 2) }).collect();
            let tree = TreeMask::from_parents(&parents, rows);
            let got = <B as DecodeOps>::attention(q.clone(), k.clone(), v.clone(), KeyMask::Tree(&tree));
            let want = reference::attention(q.clone(), k.clone(), v.clone(), KeyMask::Tree(&tree));
            assert_close(got, want, F32_TOLERANCE, &format!("tree, {rows} rows over {keys} keys"));
        }
    }
}

#[test]
fn norm_gate_and_rope_equal_the_reference() {
    for rows in [1, 5, 17] {
        let x = random([1, rows, 45], 14);
        let gamma = random([45], 15);
        assert_close(
            <B as DecodeOps>::rms_norm(x.clone(), gamma.clone(), 1e-5),
            reference::rms_norm(x.clone(), gamma, 1e-5),
            F32_TOLERANCE,
            "rms_norm",
        );
        let up = random([1, rows, 45], 16);
        for activation in [Activation::Silu, Activation::Gelu] {
            assert_close(
                <B as DecodeOps>::gated(x.clone(), up.clone(), activation),
                reference::gated(x.clone(), up.clone(), activation),
                F32_TOLERANCE,
                "gated",
            );
        }
        // Head vectors as the projections leave them: `[batch, seq, heads, d]` seen transposed.
        let heads = random([1, rows, 3, 8], 17).swap_dims(1, 2);
        let (cos, sin) = (random([1, 1, rows, 8], 18), random([1, 1, rows, 8], 19));
        assert_close(
            <B as DecodeOps>::rope(heads.clone(), cos.clone(), sin.clone()),
            reference::rope(heads, cos, sin),
            F32_TOLERANCE,
            "rope",
        );
    }
}

#[test]
fn training_differentiates_the_default_bodies() {
    type A = Autodiff<Flex>;
    let device = Default::default();
    let x = Tensor::<A, 3>::from_data(random([1, 3, 5], 20).into_data(), &device);
    let weight = Tensor::<A, 2>::from_data(random([5, 4], 21).into_data(), &device).require_grad();
    let out = <A as DecodeOps>::linear(x.clone(), weight.clone(), None);
    let grads = out.sum().backward();
    let got = weight.grad(&grads).expect("the weight has a gradient");
    // d Σ(x·W) / dW = xᵀ·1: each weight row k gets the sum of x[:, k].
    let want = x.inner().sum_dim(1).reshape([5, 1]).expand([5, 4]);
    assert_close(got, want, F32_TOLERANCE, "gradient");
}
