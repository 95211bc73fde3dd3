//! RMSNorm: one cube per row; the cube's units sum the squares of a strided share of the row in
//! f32 and reduce them through shared memory (no plane operations, which lavapipe lacks).

use burn::tensor::TensorMetadata;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;

/// Units per row: a power of two (the shared-memory reduction halves it).
const UNITS: u32 = 128;

#[cube(launch)]
fn rms_norm_kernel<F: Float>(
    x: &Tensor<F>,
    gamma: &Tensor<F>,
    out: &mut Tensor<F>,
    epsilon: f32,
    #[comptime] units: u32,
    #[define(F)] _dtype: StorageType,
) {
    let width = units as usize;
    let d = x.shape(x.rank() - 1);
    let base = CUBE_POS_X as usize * d;
    let unit = UNIT_POS_X as usize;

    let mut partial = SharedMemory::<f32>::new(width);
    let mut sum = 0.0f32;
    let mut i = unit;
    while i < d {
        let value = f32::cast_from(x[base + i]);
        sum += value * value;
        i += width;
    }
    partial[unit] = sum;
    sync_cube();

    // Halving from the cube's width at run time (a comptime start would be a constant).
    let mut stride = CUBE_DIM_X as usize / 2;
    while stride > 0 {
        if unit < stride {
            partial[unit] = partial[unit] + partial[unit + stride];
        }
        sync_cube();
        stride /= 2;
    }

    let inverse = 1.0f32 / (partial[0] / f32::cast_from(d) + epsilon).sqrt();
    let mut i = unit;
    while i < d {
        out[base + i] = F::cast_from(f32::cast_from(x[base + i]) * inverse) * gamma[i];
        i += width;
    }
}

/// `x / √(mean(x²) + epsilon) · gamma` over the last dimension of `x` (any rank); `gamma` is in
/// `x`'s float type.
pub fn rms_norm<R: CubeRuntime>(x: CubeTensor<R>, gamma: CubeTensor<R>, epsilon: f64) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let gamma = into_contiguous(gamma);
    let shape = x.shape();
    let rows = shape.num_elements() / shape[shape.num_dims() - 1];
    let out = empty_device_dtype(x.client.clone(), x.device.clone(), shape, x.dtype);
    let dtype = x.dtype;
    rms_norm_kernel::launch::<R>(
        &out.client,
        CubeCount::Static(rows as u32, 1, 1),
        CubeDim::new_1d(UNITS),
        x.into_tensor_arg(),
        gamma.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        epsilon as f32,
        UNITS,
        dtype.into(),
    );
    out
}
