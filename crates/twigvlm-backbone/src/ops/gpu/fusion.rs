//! The kernels through burn's fusion: each call records a custom operation on the fusion stream
//! (its inputs and one output); when the stream executes it, the
//! operation hands the inner backend's tensors to that backend's [`DecodeOps`] (the kernels of
//! the parent module) and registers the result. Scalars and the draft tree travel inside the
//! operation.

use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

use crate::config::Activation;
use crate::llama::TreeMask;
use crate::ops::{DecodeOps, KeyMask, LinearParts};

impl<B: FusionBackend + DecodeOps> DecodeOps for Fusion<B> {
    fn linear(x: Tensor<Self, 3>, weight: Tensor<Self, 2>, bias: Option<Tensor<Self, 1>>) -> Tensor<Self, 3> {
        let shape = projected(&x, &weight);
        let kernel = DecodeKernel::Linear { bias: bias.is_some(), residual: false };
        let mut inputs = vec![fused(x), fused(weight)];
        inputs.extend(bias.map(fused));
        record::<B, 3>(kernel, inputs, shape)
    }

    fn linear_many(x: Tensor<Self, 3>, layers: Vec<LinearParts<Self>>) -> Vec<Tensor<Self, 3>> {
        let shapes = layers.iter().map(|(weight, _)| projected(&x, weight)).collect();
        let kernel = DecodeKernel::LinearMany { biases: layers.iter().map(|(_, bias)| bias.is_some()).collect() };
        let mut inputs = vec![fused(x)];
        for (weight, bias) in layers {
            inputs.push(fused(weight));
            inputs.extend(bias.map(fused));
        }
        record_many::<B, 3>(kernel, inputs, shapes)
    }

    fn linear_add(
        x: Tensor<Self, 3>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
        residual: Tensor<Self, 3>,
    ) -> Tensor<Self, 3> {
        let shape = projected(&x, &weight);
        let kernel = DecodeKernel::Linear { bias: bias.is_some(), residual: true };
        let mut inputs = vec![fused(x), fused(weight)];
        inputs.extend(bias.map(fused));
        inputs.push(fused(residual));
        record::<B, 3>(kernel, inputs, shape)
    }

    fn gated_linear(
        x: Tensor<Self, 3>,
        gate: LinearParts<Self>,
        up: LinearParts<Self>,
        activation: Activation,
    ) -> Tensor<Self, 3> {
        let shape = projected(&x, &gate.0);
        let kernel = DecodeKernel::GatedLinear { gate_bias: gate.1.is_some(), up_bias: up.1.is_some(), activation };
        let mut inputs = vec![fused(x), fused(gate.0)];
        inputs.extend(gate.1.map(fused));
        inputs.push(fused(up.0));
        inputs.extend(up.1.map(fused));
        record::<B, 3>(kernel, inputs, shape)
    }

    fn attention(q: Tensor<Self, 4>, k: Tensor<Self, 4>, v: Tensor<Self, 4>, mask: KeyMask<'_>) -> Tensor<Self, 4> {
        let tree = match mask {
            KeyMask::Causal => None,
            KeyMask::Tree(tree) => Some(tree.clone()),
        };
        let shape = q.shape();
        record::<B, 4>(DecodeKernel::Attention { tree }, vec![fused(q), fused(k), fused(v)], shape)
    }

    fn rms_norm(x: Tensor<Self, 3>, gamma: Tensor<Self, 1>, epsilon: f64) -> Tensor<Self, 3> {
        let shape = x.shape();
        record::<B, 3>(DecodeKernel::RmsNorm { epsilon }, vec![fused(x), fused(gamma)], shape)
    }

    fn gated(gate: Tensor<Self, 3>, up: Tensor<Self, 3>, activation: Activation) -> Tensor<Self, 3> {
        let shape = gate.shape();
        record::<B, 3>(DecodeKernel::Gated { activation }, vec![fused(gate), fused(up)], shape)
    }

    fn rope(x: Tensor<Self, 4>, cos: Tensor<Self, 4>, sin: Tensor<Self, 4>) -> Tensor<Self, 4> {
        let shape = x.shape();
        record::<B, 4>(DecodeKernel::Rope, vec![fused(x), fused(cos), fused(sin)], shape)
    }
}

/// Which operation a recorded call runs, with its scalars.
#[derive(Debug, Clone)]
enum DecodeKernel {
    /// Inputs x, then each layer's weight and bias (if it has one).
    LinearMany {
        biases: Vec<bool>,
    },
    /// Inputs x, weight, the bias if there is one, the residual if there is one.
    Linear {
        bias: bool,
        residual: bool,
    },
    /// Inputs x, the gate's weight and bias (if any), the up projection's weight and bias (if any).
    GatedLinear {
        gate_bias: bool,
        up_bias: bool,
        activation: Activation,
    },
    Attention {
        tree: Option<TreeMask>,
    },
    RmsNorm {
        epsilon: f64,
    },
    Gated {
        activation: Activation,
    },
    Rope,
}

impl DecodeKernel {
    fn name(&self) -> &'static str {
        match self {
            DecodeKernel::LinearMany { .. } => "twigvlm_linear_many",
            DecodeKernel::Linear { .. } => "twigvlm_linear",
            DecodeKernel::GatedLinear { .. } => "twigvlm_gated_linear",
            DecodeKernel::Attention { .. } => "twigvlm_attention",
            DecodeKernel::RmsNorm { .. } => "twigvlm_rms_norm",
            DecodeKernel::Gated { .. } => "twigvlm_gated",
            DecodeKernel::Rope => "twigvlm_rope",
        }
    }

    /// Runs the operation on the inner backend: its outputs.
    fn run<B: DecodeOps>(&self, inputs: Vec<B::FloatTensorPrimitive>) -> Vec<B::FloatTensorPrimitive> {
        let mut inputs = inputs.into_iter().map(TensorPrimitive::Float);
        let mut next = || inputs.next().expect("one input per operand");
        let out = match self {
            DecodeKernel::LinearMany { biases } => {
                let x = Tensor::<B, 3>::from_primitive(next());
                let layers = biases.iter().map(|&bias| layer(&mut next, bias)).collect();
                return B::linear_many(x, layers).into_iter().map(|out| out.into_primitive().tensor()).collect();
            }
            DecodeKernel::Linear { bias, residual } => {
                let x = Tensor::<B, 3>::from_primitive(next());
                let (weight, bias) = layer(&mut next, *bias);
                match residual {
                    true => B::linear_add(x, weight, bias, Tensor::from_primitive(next())),
                    false => <B as DecodeOps>::linear(x, weight, bias),
                }
                .into_primitive()
            }
            DecodeKernel::GatedLinear { gate_bias, up_bias, activation } => {
                let x = Tensor::<B, 3>::from_primitive(next());
                let gate = layer(&mut next, *gate_bias);
                let up = layer(&mut next, *up_bias);
                B::gated_linear(x, gate, up, *activation).into_primitive()
            }
            DecodeKernel::Attention { tree } => {
                let mask = tree.as_ref().map_or(KeyMask::Causal, KeyMask::Tree);
                let [q, k, v] = [next(), next(), next()].map(Tensor::<B, 4>::from_primitive);
                <B as DecodeOps>::attention(q, k, v, mask).into_primitive()
            }
            DecodeKernel::RmsNorm { epsilon } => {
                let x = Tensor::<B, 3>::from_primitive(next());
                <B as DecodeOps>::rms_norm(x, Tensor::from_primitive(next()), *epsilon).into_primitive()
            }
            DecodeKernel::Gated { activation } => {
                let [gate, up] = [next(), next()].map(Tensor::<B, 3>::from_primitive);
                <B as DecodeOps>::gated(gate, up, *activation).into_primitive()
            }
            DecodeKernel::Rope => {
                let [x, cos, sin] = [next(), next(), next()].map(Tensor::<B, 4>::from_primitive);
                <B as DecodeOps>::rope(x, cos, sin).into_primitive()
            }
        };
        vec![out.tensor()]
    }
}

/// A linear layer's `(weight, bias)` from the next operands.
fn layer<B: Backend>(next: &mut impl FnMut() -> TensorPrimitive<B>, bias: bool) -> LinearParts<B> {
    let weight = Tensor::from_primitive(next());
    (weight, bias.then(|| Tensor::from_primitive(next())))
}

/// The shape of `x · weight`.
fn projected<B: FusionBackend>(x: &Tensor<Fusion<B>, 3>, weight: &Tensor<Fusion<B>, 2>) -> Shape {
    let [batch, seq, _] = x.dims();
    Shape::new([batch, seq, weight.dims()[1]])
}

/// A recorded call: the operation and its inputs' and output's places on the stream.
#[derive(Debug)]
struct RecordedKernel<B> {
    ir: CustomOpIr,
    kernel: DecodeKernel,
    backend: core::marker::PhantomData<B>,
}

impl<B: FusionBackend + DecodeOps> Operation<B::FusionRuntime> for RecordedKernel<B> {
    fn execute(&self, handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>) {
        let inputs = self.ir.inputs.iter().map(|input| handles.get_float_tensor::<B>(input)).collect();
        for (ir, out) in self.ir.outputs.iter().zip(self.kernel.run::<B>(inputs)) {
            handles.register_float_tensor::<B>(&ir.id, out);
        }
    }
}

fn fused<B: FusionBackend, const D: usize>(tensor: Tensor<Fusion<B>, D>) -> FusionTensor<B::FusionRuntime> {
    tensor.into_primitive().tensor()
}

/// Records `kernel` over `inputs`, with one output of the first input's float type.
fn record<B: FusionBackend + DecodeOps, const D: usize>(
    kernel: DecodeKernel,
    inputs: Vec<FusionTensor<B::FusionRuntime>>,
    shape: Shape,
) -> Tensor<Fusion<B>, D> {
    record_many::<B, D>(kernel, inputs, vec![shape]).remove(0)
}

/// Records `kernel` over `inputs`, with an output of each shape in the first input's float type.
fn record_many<B: FusionBackend + DecodeOps, const D: usize>(
    kernel: DecodeKernel,
    inputs: Vec<FusionTensor<B::FusionRuntime>>,
    shapes: Vec<Shape>,
) -> Vec<Tensor<Fusion<B>, D>> {
    let client = inputs[0].client.clone();
    let dtype = inputs[0].dtype;
    let streams = OperationStreams::with_inputs(&inputs);
    let outs: Vec<TensorIr> =
        shapes.into_iter().map(|shape| TensorIr::uninit(client.create_empty_handle(), shape, dtype)).collect();
    let inputs: Vec<TensorIr> = inputs.into_iter().map(FusionTensor::into_ir).collect();
    let ir = CustomOpIr::new(kernel.name(), &inputs, &outs);
    let recorded = RecordedKernel::<B> { ir: ir.clone(), kernel, backend: core::marker::PhantomData };
    let outs = client.register(streams, OperationIr::Custom(ir), recorded);
    outs.into_iter().map(|out| Tensor::from_primitive(TensorPrimitive::Float(out))).collect()
}
