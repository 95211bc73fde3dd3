//! The GPU backends' kernels for `DecodeOps` against its default bodies (the reference, plain
//! burn ops on the same backend), on random inputs: few-row and long inputs, odd lengths,
//! grouped-query ratios, draft trees, transposed views as the model passes them, and f32 and f16
//! (where the device computes in f16); through burn's fusion and without it. CI runs them on
//! Mesa's lavapipe (`wgpu` feature); the CPU kernels have their own tests in the backbone crate.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

use burn::prelude::*;
use burn::tensor::{DType, Distribution};
use twigvlm_backbone::config::Activation;
use twigvlm_backbone::llama::TreeMask;
use twigvlm_backbone::ops::{reference, DecodeOps, KeyMask};
use twigvlm_integration::TestBackend;

/// Largest absolute difference allowed per unit of the reference's largest magnitude: f32
/// kernels sum in another order than burn's ops; f16 results round at 2^-11 relative, and the
/// reference rounds its intermediate results too.
fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => 4e-3,
        _ => 2e-5,
    }
}

/// The float types to test: f32, and f16 where the device computes in it and `half` asks for it.
fn dtypes<B: Backend>(device: &B::Device, half: bool) -> Vec<DType> {
    let mut dtypes = vec![DType::F32];
    if !half {
        return dtypes;
    }
    if B::supports_dtype(device, DType::F16) {
        dtypes.push(DType::F16);
    } else {
        eprintln!("the device has no f16 arithmetic: f32 only");
    }
    dtypes
}

fn random<B: Backend, const D: usize>(shape: [usize; D], dtype: DType, device: &B::Device) -> Tensor<B, D> {
    Tensor::<B, D>::random(shape, Distribution::Uniform(-1.0, 1.0), device).cast(dtype)
}

fn assert_close<B: Backend, const D: usize>(what: &str, got: Tensor<B, D>, want: Tensor<B, D>) {
    let dtype = want.dtype();
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    assert_eq!(got.dtype(), dtype, "{what}: float type");
    let got: Vec<f32> = got.cast(DType::F32).into_data().to_vec().unwrap();
    let want: Vec<f32> = want.cast(DType::F32).into_data().to_vec().unwrap();
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let (worst, at) = got.iter().zip(&want).enumerate().fold((0.0f32, 0), |(worst, at), (i, (g, w))| {
        let diff = if g.is_finite() { (g - w).abs() } else { f32::INFINITY };
        if diff > worst {
            (diff, i)
        } else {
            (worst, at)
        }
    });
    assert!(
        worst <= tolerance(dtype) * scale,
        "{what} ({dtype:?}): |Δ| {worst} at {at} (got {}, want {}) over {} × {scale}",
        got[at],
        want[at],
        tolerance(dtype)
    );
}

/// The query rows of a projection as the model makes them: `[batch, heads, rows, head_dim]`
/// viewed through a transpose of `[batch, rows, heads, head_dim]`.
fn heads_view<B: Backend>(
    batch: usize,
    heads: usize,
    rows: usize,
    dim: usize,
    dtype: DType,
    device: &B::Device,
) -> Tensor<B, 4> {
    random::<B, 4>([batch, rows, heads, dim], dtype, device).swap_dims(1, 2)
}

/// A layer cache's keys as the model reads them: the first `keys` entries of a larger buffer.
fn cache_view<B: Backend>(
    batch: usize,
    kv_heads: usize,
    keys: usize,
    dim: usize,
    dtype: DType,
    device: &B::Device,
) -> Tensor<B, 4> {
    random::<B, 4>([batch, kv_heads, keys + 7, dim], dtype, device).narrow(2, 0, keys)
}

/// A draft tree of `rows` tokens after the committed context: token `i`'s parent is one of the
/// tokens before it or the context, chosen by a fixed rule that makes branches.
fn tree(rows: usize) -> TreeMask {
    let parents: Vec<Option<usize>> = (0..rows).map(|i| if i == 0 { None } else { Some((i * 7 + 3) % i) }).collect();
    TreeMask::from_parents(&parents, rows)
}

fn check_attention<B: DecodeOps>(device: &B::Device, half: bool) {
    for dtype in dtypes::<B>(device, half) {
        for (kv_heads, group, dim) in [(2, 1, 64), (2, 3, 48), (1, 4, 128)] {
            let heads = kv_heads * group;
            // One row after a long cache or none, a few rows (a verification) after odd lengths,
            // and a prefill chunk longer than the key tile.
            for (rows, past) in [(1, 0), (1, 130), (3, 5), (6, 70), (17, 0), (17, 130)] {
                {
                    let keys = past + rows;
                    let q = heads_view::<B>(2, heads, rows, dim, dtype, device);
                    let k = cache_view::<B>(2, kv_heads, keys, dim, dtype, device);
                    let v = cache_view::<B>(2, kv_heads, keys, dim, dtype, device);
                    let case = format!("attention rows {rows} past {past} heads {heads}/{kv_heads} dim {dim}");
                    let got = <B as DecodeOps>::attention(q.clone(), k.clone(), v.clone(), KeyMask::Causal);
                    let want = reference::attention(q.clone(), k.clone(), v.clone(), KeyMask::Causal);
                    assert_close(&format!("{case}, causal"), got, want);
                    let tree = tree(rows);
                    let got = <B as DecodeOps>::attention(q.clone(), k.clone(), v.clone(), KeyMask::Tree(&tree));
                    let want = reference::attention(q, k, v, KeyMask::Tree(&tree));
                    assert_close(&format!("{case}, tree"), got, want);
                }
            }
        }
    }
}

fn check_row_ops<B: DecodeOps>(device: &B::Device, half: bool) {
    for dtype in dtypes::<B>(device, half) {
        for rows in [1, 5, 17] {
            for d in [77, 576] {
                let x = random::<B, 3>([1, rows, d], dtype, device) * 3.0;
                let gamma = random::<B, 1>([d], dtype, device);
                let got = B::rms_norm(x.clone(), gamma.clone(), 1e-5);
                assert_close(&format!("rms_norm {rows}×{d}"), got, reference::rms_norm(x, gamma, 1e-5));

                let gate = random::<B, 3>([1, rows, d], dtype, device) * 4.0;
                let up = random::<B, 3>([1, rows, d], dtype, device);
                for activation in [Activation::Silu, Activation::Gelu] {
                    let got = B::gated(gate.clone(), up.clone(), activation);
                    let want = reference::gated(gate.clone(), up.clone(), activation);
                    assert_close(&format!("gated {activation:?} {rows}×{d}"), got, want);
                }
            }
            for (heads, dim) in [(3, 64), (2, 6)] {
                let x = heads_view::<B>(2, heads, rows, dim, dtype, device);
                let cos = random::<B, 4>([1, 1, rows, dim], dtype, device);
                let sin = random::<B, 4>([1, 1, rows, dim], dtype, device);
                let got = B::rope(x.clone(), cos.clone(), sin.clone());
                assert_close(&format!("rope {rows} rows {heads}×{dim}"), got, reference::rope(x, cos, sin));
            }
        }
    }
}

fn check_linear<B: DecodeOps>(device: &B::Device, half: bool) {
    for dtype in dtypes::<B>(device, half) {
        for (d_in, d_out) in [(77, 100), (576, 1000)] {
            let weight = random::<B, 2>([d_in, d_out], dtype, device) * 0.1;
            let bias = random::<B, 1>([d_out], dtype, device);
            // A tied output layer reads the embedding table transposed.
            let transposed = random::<B, 2>([d_out, d_in], dtype, device).transpose() * 0.1;
            for rows in [1, 6, 17] {
                let x = random::<B, 3>([1, rows, d_in], dtype, device);
                let case = format!("linear {rows}×{d_in}→{d_out}");
                let got = <B as DecodeOps>::linear(x.clone(), weight.clone(), Some(bias.clone()));
                let want = reference::linear(x.clone(), weight.clone(), Some(bias.clone()));
                assert_close(&format!("{case} with bias"), got.clone(), want);
                let got_t = <B as DecodeOps>::linear(x.clone(), transposed.clone(), None);
                assert_close(
                    &format!("{case}, transposed weight"),
                    got_t,
                    reference::linear(x.clone(), transposed.clone(), None),
                );
                for with_bias in [true, false] {
                    // A layer's query, key and value projections: three widths, one launch.
                    let layers: Vec<_> = [d_out, d_out / 3, d_out / 3 + 1]
                        .into_iter()
                        .map(|width| {
                            (weight.clone().narrow(1, 0, width), with_bias.then(|| bias.clone().narrow(0, 0, width)))
                        })
                        .collect();
                    let got = B::linear_many(x.clone(), layers.clone());
                    assert_eq!(got.len(), layers.len(), "{case}: one result per layer");
                    for (i, (got, (weight, bias))) in got.into_iter().zip(layers).enumerate() {
                        let want = reference::linear(x.clone(), weight, bias);
                        assert_close(&format!("{case}, layer {i} of three (bias: {with_bias})"), got, want);
                    }
                }
                let residual = random::<B, 3>([1, rows, d_out], dtype, device);
                let added = B::linear_add(x.clone(), weight.clone(), Some(bias.clone()), residual.clone());
                let want = reference::linear(x.clone(), weight.clone(), Some(bias.clone())) + residual;
                assert_close(&format!("{case} added to a residual"), added, want);
                for with_bias in [true, false] {
                    let up = random::<B, 2>([d_in, d_out], dtype, device) * 0.1;
                    let up_bias = random::<B, 1>([d_out], dtype, device);
                    let gate = (weight.clone(), with_bias.then(|| bias.clone()));
                    let up = (up, with_bias.then_some(up_bias));
                    let got = B::gated_linear(x.clone(), gate.clone(), up.clone(), Activation::Silu);
                    let want = reference::gated(
                        reference::linear(x.clone(), gate.0, gate.1),
                        reference::linear(x.clone(), up.0, up.1),
                        Activation::Silu,
                    );
                    assert_close(&format!("{case} gated (bias: {with_bias})"), got, want);
                }
                if rows > 1 && rows <= 16 {
                    // A verification rounds each row as one-row decoding does.
                    let alone =
                        <B as DecodeOps>::linear(x.clone().narrow(1, rows - 1, 1), weight.clone(), Some(bias.clone()));
                    let among: Vec<f32> = got.narrow(1, rows - 1, 1).cast(DType::F32).into_data().to_vec().unwrap();
                    let alone: Vec<f32> = alone.cast(DType::F32).into_data().to_vec().unwrap();
                    let differ = among.iter().zip(&alone).position(|(a, b)| a.to_bits() != b.to_bits());
                    assert_eq!(differ, None, "{case} ({dtype:?}): the last row alone rounds differently");
                }
            }
        }
    }
}

#[test]
fn attention_matches_the_reference() {
    check_attention::<TestBackend>(&Default::default(), true);
}

#[test]
fn linear_layers_match_the_reference() {
    check_linear::<TestBackend>(&Default::default(), true);
}

#[test]
fn row_operations_match_the_reference() {
    check_row_ops::<TestBackend>(&Default::default(), true);
}

/// The same kernels launched without burn's fusion (the backend that `Wgpu` and `Cuda` wrap), in
/// f32: what fusion adds is the recording, which the float type does not change.
mod unfused {
    #[cfg(feature = "cuda")]
    type Unfused = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;
    #[cfg(all(feature = "wgpu", not(feature = "cuda")))]
    type Unfused = burn_cubecl::CubeBackend<cubecl::wgpu::WgpuRuntime, f32, i32, u32>;

    #[test]
    fn attention_matches_the_reference() {
        super::check_attention::<Unfused>(&Default::default(), false);
    }

    #[test]
    fn row_operations_match_the_reference() {
        super::check_row_ops::<Unfused>(&Default::default(), false);
    }

    #[test]
    fn linear_layers_match_the_reference() {
        super::check_linear::<Unfused>(&Default::default(), false);
    }
}
