//! The SwiGLU product `silu(gate) · up`, element-wise, computed in f32.

use burn::tensor::TensorMetadata;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;

#[cube(launch)]
fn silu_mul_kernel<F: Float>(gate: &Tensor<F>, up: &Tensor<F>, out: &mut Tensor<F>, #[define(F)] _dtype: StorageType) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let g = f32::cast_from(gate[ABSOLUTE_POS]);
    let silu = g / (1.0f32 + (-g).exp());
    out[ABSOLUTE_POS] = F::cast_from(silu * f32::cast_from(up[ABSOLUTE_POS]));
}

/// `silu(gate) · up` of two tensors of one shape and float type.
pub fn silu_mul<R: CubeRuntime>(gate: CubeTensor<R>, up: CubeTensor<R>) -> CubeTensor<R> {
    let gate = into_contiguous(gate);
    let up = into_contiguous(up);
    let shape = gate.shape();
    let elements = shape.num_elements();
    let out = empty_device_dtype(gate.client.clone(), gate.device.clone(), shape, gate.dtype);
    let cube_dim = CubeDim::new(&out.client, elements);
    let cube_count = burn_cubecl::cubecl::calculate_cube_count_elemwise(&out.client, elements, cube_dim);
    let dtype = gate.dtype;
    silu_mul_kernel::launch::<R>(
        &out.client,
        cube_count,
        cube_dim,
        gate.into_tensor_arg(),
        up.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        dtype.into(),
    );
    out
}
