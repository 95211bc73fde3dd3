//! [`DecodeOps`] on the CPU backend, through `twigvlm_kernels`: linear layers that stream each
//! weight once for all rows over every core, read f16/bf16 weights as stored, and round every
//! row the same whatever the row count; attention of a few rows over the cache views in place;
//! RMSNorm, SiLU·mul and RoPE in one pass each. Prefill-sized attention uses the reference body.
//!
//! Weights are kept as the transposed view of the checkpoint's `[d_out, d_in]` matrix (a
//! `[d_in, d_out]` tensor with strides `[1, d_in]`), the layout the kernel streams; a weight held
//! any other way is copied into that layout for the call, so every linear layer on this backend
//! rounds the same way.

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::{DType, TensorPrimitive};
use burn_flex::FlexTensor;
use twigvlm_kernels::{Projection, View4, Visibility, Weights};

use super::{reference, DecodeOps, KeyMask, LinearParts};
use crate::config::Activation;

impl DecodeOps for Flex {
    fn linear(x: Tensor<Self, 3>, weight: Tensor<Self, 2>, bias: Option<Tensor<Self, 1>>) -> Tensor<Self, 3> {
        let mut outs = Self::linear_many(x, vec![(weight, bias)]);
        outs.pop().expect("one product")
    }

    fn linear_many(x: Tensor<Self, 3>, layers: Vec<LinearParts<Self>>) -> Vec<Tensor<Self, 3>> {
        let [batch, seq, d_in] = x.dims();
        let x = contiguous_f32(x.into_primitive().tensor());
        let d_outs: Vec<usize> = layers.iter().map(|(weight, _)| weight.dims()[1]).collect();
        let stored: Vec<(FlexTensor, Option<FlexTensor>)> = layers
            .into_iter()
            .map(|(weight, bias)| {
                let out_in = out_in_storage(weight.transpose().into_primitive().tensor());
                (out_in, bias.map(|b| contiguous_f32(b.into_primitive().tensor())))
            })
            .collect();
        let mut outs: Vec<Vec<f32>> = d_outs.iter().map(|d_out| vec![0.0f32; batch * seq * d_out]).collect();
        let mut projections: Vec<Projection<'_>> = stored
            .iter()
            .zip(&d_outs)
            .zip(outs.iter_mut())
            .map(|(((weight, bias), &d_out), out)| Projection {
                weights: weights(weight),
                d_out,
                bias: bias.as_ref().map(slice),
                out,
            })
            .collect();
        twigvlm_kernels::linear_many(slice(&x), batch * seq, d_in, &mut projections);
        outs.into_iter().zip(d_outs).map(|(out, d_out)| float(out, [batch, seq, d_out])).collect()
    }

    fn linear_weight(out_in: TensorData, _device: &Self::Device) -> Tensor<Self, 2> {
        let out_in: Tensor<Self, 2> =
            Tensor::from_primitive(TensorPrimitive::Float(FlexTensor::from_data(kernel_dtype(out_in))));
        out_in.transpose()
    }

    fn attention(q: Tensor<Self, 4>, k: Tensor<Self, 4>, v: Tensor<Self, 4>, mask: KeyMask<'_>) -> Tensor<Self, 4> {
        let [batch, heads, rows, head_dim] = q.dims();
        if rows > FEW_ROWS {
            // A prefill: burn's blocked attention (matrix products) is faster than one row at a
            // time, and a prompt's rows are computed once, so they need no row-by-row rounding.
            return reference::attention(q, k, v, mask);
        }
        let (q, k, v) = (strided_f32(q), strided_f32(k), strided_f32(v));
        let visibility = match mask {
            KeyMask::Causal => Visibility::Causal,
            KeyMask::Tree(tree) => Visibility::Tree { tail: tree.tail(), visible: tree.visible() },
        };
        let scale = (head_dim as f32).sqrt().recip();
        let mut out = vec![0.0f32; batch * heads * rows * head_dim];
        twigvlm_kernels::attention(view(&q), view(&k), view(&v), visibility, scale, &mut out);
        // Written `[batch, rows, heads, head_dim]`: the transposed view is free, and so is the
        // reshape to `[batch, rows, hidden]` the output projection does.
        float(out, [batch, rows, heads, head_dim]).swap_dims(1, 2)
    }

    fn rms_norm(x: Tensor<Self, 3>, gamma: Tensor<Self, 1>, epsilon: f64) -> Tensor<Self, 3> {
        let dims = x.dims();
        let (x, gamma) = (contiguous_f32(x.into_primitive().tensor()), contiguous_f32(gamma.into_primitive().tensor()));
        let mut out = vec![0.0f32; dims.iter().product()];
        twigvlm_kernels::rms_norm(slice(&x), slice(&gamma), epsilon as f32, &mut out);
        float(out, dims)
    }

    fn gated(gate: Tensor<Self, 3>, up: Tensor<Self, 3>, activation: Activation) -> Tensor<Self, 3> {
        if activation != Activation::Silu {
            return reference::gated(gate, up, activation);
        }
        let dims = gate.dims();
        let (gate, up) = (contiguous_f32(gate.into_primitive().tensor()), contiguous_f32(up.into_primitive().tensor()));
        let mut out = vec![0.0f32; dims.iter().product()];
        twigvlm_kernels::silu_mul(slice(&gate), slice(&up), &mut out);
        float(out, dims)
    }

    fn rope(x: Tensor<Self, 4>, cos: Tensor<Self, 4>, sin: Tensor<Self, 4>) -> Tensor<Self, 4> {
        let [batch, heads, seq, head_dim] = x.dims();
        // Head vectors in `[batch, seq, heads]` order: how the projections left them (x is
        // usually their transposed view), so the copy reads them in place.
        let x = contiguous_f32(x.swap_dims(1, 2).into_primitive().tensor());
        let (cos, sin) = (contiguous_f32(cos.into_primitive().tensor()), contiguous_f32(sin.into_primitive().tensor()));
        let mut out = vec![0.0f32; batch * heads * seq * head_dim];
        let position_of = |vector: usize| (vector / heads) % seq;
        twigvlm_kernels::rope(slice(&x), slice(&cos), slice(&sin), head_dim, position_of, &mut out);
        float(out, [batch, seq, heads, head_dim]).swap_dims(1, 2)
    }
}

/// Above this many query rows (a prefill), attention runs the reference body.
const FEW_ROWS: usize = 64;

/// A contiguous f32 tensor from its values.
fn float<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(FlexTensor::from_data(TensorData::new(values, shape))))
}

fn slice(tensor: &FlexTensor) -> &[f32] {
    tensor.as_slice().expect("a contiguous f32 tensor")
}

/// The tensor as f32 with non-negative strides and a contiguous last dimension: itself when it
/// already is (a view of a cache buffer stays a view), else a contiguous copy.
fn strided_f32(tensor: Tensor<Flex, 4>) -> FlexTensor {
    let tensor = tensor.into_primitive().tensor();
    let layout = tensor.layout();
    let readable = tensor.dtype() == DType::F32 && layout.strides().iter().all(|&s| s >= 0) && layout.strides()[3] == 1;
    if readable {
        tensor
    } else {
        FlexTensor::from_data(tensor.into_data().convert_dtype(DType::F32))
    }
}

fn view(tensor: &FlexTensor) -> View4<'_> {
    let layout = tensor.layout();
    let dims = layout.shape();
    let strides = layout.strides();
    View4 {
        data: &tensor.storage::<f32>()[layout.start_offset()..],
        shape: [dims[0], dims[1], dims[2], dims[3]],
        strides: [0, 1, 2, 3].map(|d| strides[d] as usize),
    }
}

/// The weight types the kernels read as stored.
fn is_kernel_dtype(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// f32, f16 and bf16 stay as they are; anything else becomes f32.
fn kernel_dtype(data: TensorData) -> TensorData {
    if is_kernel_dtype(data.dtype) {
        data
    } else {
        data.convert_dtype(DType::F32)
    }
}

/// The `[d_out, d_in]` weight as contiguous storage of a kernel type: free for weights loaded by
/// [`DecodeOps::linear_weight`], a copy for any other (a layer initialised or copied in memory).
fn out_in_storage(out_in: FlexTensor) -> FlexTensor {
    if is_kernel_dtype(out_in.dtype()) && out_in.layout().contiguous_offsets().is_some() {
        out_in
    } else {
        FlexTensor::from_data(kernel_dtype(out_in.into_data()))
    }
}

fn weights(out_in: &FlexTensor) -> Weights<'_> {
    match out_in.dtype() {
        DType::F16 => Weights::F16(out_in.as_slice().expect("contiguous f16 weight")),
        DType::BF16 => Weights::Bf16(out_in.as_slice().expect("contiguous bf16 weight")),
        _ => Weights::F32(out_in.as_slice().expect("contiguous f32 weight")),
    }
}

/// The tensor as a contiguous f32 buffer (a copy only when it is a strided view or another type).
fn contiguous_f32(tensor: FlexTensor) -> FlexTensor {
    if tensor.dtype() == DType::F32 && tensor.as_slice::<f32>().is_some() {
        tensor
    } else {
        FlexTensor::from_data(tensor.into_data().convert_dtype(DType::F32))
    }
}
