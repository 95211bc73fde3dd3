//! The GPU backends' decoding kernels (CubeCL, the same source for CUDA and wgpu): RMSNorm, the
//! SwiGLU product, the rotary embedding, attention over the KV cache and linear layers of a few
//! rows, each one kernel launch.
//! [`CubeBackend`] launches them directly; the fusing [`Fusion`] wrapper that burn builds around
//! it (`burn::backend::Cuda`, `Wgpu`) records each as a custom operation that runs the
//! `CubeBackend` kernel when the stream executes ([`fusion`]). Linear layers of more rows than
//! [`linear::MAX_ROWS`] (a prefill) keep the default body: burn's tiled matmul.

mod attention;
mod fusion;
mod gated;
mod linear;
mod rms_norm;
mod rope;

use burn::prelude::*;
use burn::tensor::backend::DeviceOps;
use burn::tensor::TensorPrimitive;
use burn_cubecl::cubecl::server::ComputeServer;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use super::{gated_linear_in_two_steps, reference, DecodeOps, KeyMask, LinearParts};
use crate::config::Activation;
use crate::llama::TreeMask;

impl<R, F, I, BT> DecodeOps for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    R::Server: ComputeServer,
    R::Device: DeviceOps,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn linear(x: Tensor<Self, 3>, weight: Tensor<Self, 2>, bias: Option<Tensor<Self, 1>>) -> Tensor<Self, 3> {
        if !few_rows(&x) {
            return reference::linear(x, weight, bias);
        }
        let layer = projection(weight, bias, x.dtype());
        float(linear::few_rows_linear(cube(x), layer, None, None))
    }

    fn linear_many(x: Tensor<Self, 3>, layers: Vec<LinearParts<Self>>) -> Vec<Tensor<Self, 3>> {
        let uniform_bias = layers.windows(2).all(|pair| pair[0].1.is_some() == pair[1].1.is_some());
        let layers: Vec<_> = match <[_; 3]>::try_from(layers) {
            Ok(three) if few_rows(&x) && uniform_bias => {
                let dtype = x.dtype();
                let three = three.map(|(weight, bias)| projection(weight, bias, dtype));
                return linear::few_rows_linear_three(cube(x), three).into_iter().map(float).collect();
            }
            Ok(three) => three.into(),
            Err(layers) => layers,
        };
        layers.into_iter().map(|(weight, bias)| Self::linear(x.clone(), weight, bias)).collect()
    }

    fn linear_add(
        x: Tensor<Self, 3>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
        residual: Tensor<Self, 3>,
    ) -> Tensor<Self, 3> {
        if !few_rows(&x) {
            return reference::linear(x, weight, bias) + residual;
        }
        let layer = projection(weight, bias, x.dtype());
        let residual = cube(same_dtype(residual, x.dtype()));
        float(linear::few_rows_linear(cube(x), layer, None, Some(residual)))
    }

    fn gated_linear(
        x: Tensor<Self, 3>,
        gate: LinearParts<Self>,
        up: LinearParts<Self>,
        activation: Activation,
    ) -> Tensor<Self, 3> {
        if !few_rows(&x) || activation != Activation::Silu || gate.1.is_some() != up.1.is_some() {
            return gated_linear_in_two_steps::<Self>(x, gate, up, activation);
        }
        let dtype = x.dtype();
        let (gate, up) = (projection(gate.0, gate.1, dtype), projection(up.0, up.1, dtype));
        float(linear::few_rows_linear(cube(x), gate, Some(up), None))
    }

    fn attention(q: Tensor<Self, 4>, k: Tensor<Self, 4>, v: Tensor<Self, 4>, mask: KeyMask<'_>) -> Tensor<Self, 4> {
        let tree = match mask {
            KeyMask::Causal => None,
            KeyMask::Tree(tree) => Some(cube(visibility::<Self>(tree, q.dtype(), &q.device()))),
        };
        let k = same_dtype(k, q.dtype());
        let v = same_dtype(v, q.dtype());
        // The kernel writes rows before heads; the contract's layout is a view of it.
        float::<R, F, I, BT, 4>(attention::attention(cube(q), cube(k), cube(v), tree)).swap_dims(1, 2)
    }

    fn rms_norm(x: Tensor<Self, 3>, gamma: Tensor<Self, 1>, epsilon: f64) -> Tensor<Self, 3> {
        let gamma = same_dtype(gamma, x.dtype());
        float(rms_norm::rms_norm(cube(x), cube(gamma), epsilon))
    }

    fn gated(gate: Tensor<Self, 3>, up: Tensor<Self, 3>, activation: Activation) -> Tensor<Self, 3> {
        match activation {
            Activation::Silu => float(gated::silu_mul(cube(gate), cube(up))),
            other => reference::gated(gate, up, other),
        }
    }

    fn rope(x: Tensor<Self, 4>, cos: Tensor<Self, 4>, sin: Tensor<Self, 4>) -> Tensor<Self, 4> {
        let cos = same_dtype(cos, x.dtype());
        let sin = same_dtype(sin, x.dtype());
        float(rope::rope(cube(x), cube(cos), cube(sin)))
    }
}

/// The kernel's view of a tensor.
fn cube<R, F, I, BT, const D: usize>(tensor: Tensor<CubeBackend<R, F, I, BT>, D>) -> CubeTensor<R>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    tensor.into_primitive().tensor()
}

/// A kernel's result as a tensor.
fn float<R, F, I, BT, const D: usize>(tensor: CubeTensor<R>) -> Tensor<CubeBackend<R, F, I, BT>, D>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    Tensor::from_primitive(TensorPrimitive::Float(tensor))
}

/// Whether the few-rows linear kernel takes `x` (a prefill goes to the backend's matmul).
fn few_rows<B: Backend>(x: &Tensor<B, 3>) -> bool {
    let [batch, seq, _] = x.dims();
    batch * seq <= linear::MAX_ROWS
}

fn projection<R, F, I, BT>(
    weight: Tensor<CubeBackend<R, F, I, BT>, 2>,
    bias: Option<Tensor<CubeBackend<R, F, I, BT>, 1>>,
    dtype: burn::tensor::DType,
) -> linear::Projection<R>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    linear::Projection { weight: cube(same_dtype(weight, dtype)), bias: bias.map(|bias| cube(same_dtype(bias, dtype))) }
}

fn same_dtype<B: Backend, const D: usize>(tensor: Tensor<B, D>, dtype: burn::tensor::DType) -> Tensor<B, D> {
    if tensor.dtype() == dtype {
        tensor
    } else {
        tensor.cast(dtype)
    }
}

/// A draft tree's visibility as the attention kernel reads it: `[rows, tail]`, 1 where a row sees
/// a tail entry, in the queries' float type.
fn visibility<B: Backend>(tree: &TreeMask, dtype: burn::tensor::DType, device: &B::Device) -> Tensor<B, 2> {
    let values: Vec<f32> = tree.visible().iter().map(|&seen| if seen { 1.0 } else { 0.0 }).collect();
    Tensor::<B, 2>::from_data(TensorData::new(values, [tree.rows(), tree.tail()]), device).cast(dtype)
}
