//! Rotary embedding (`rotate_half` convention) in one element-wise kernel. The input is read
//! through its strides: the heads of a projection come as a transposed view, which needs no copy.

use burn::tensor::TensorMetadata;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;

#[cube(launch)]
fn rope_kernel<F: Float>(
    x: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    out: &mut Tensor<F>,
    #[define(F)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let (heads, seq, dim) = (out.shape(1), out.shape(2), out.shape(3));
    let half = dim / 2;
    let j = ABSOLUTE_POS % dim;
    let s = (ABSOLUTE_POS / dim) % seq;
    let h = (ABSOLUTE_POS / (dim * seq)) % heads;
    let b = ABSOLUTE_POS / (dim * seq * heads);
    let row = b * x.stride(0) + h * x.stride(1) + s * x.stride(2);

    let value = f32::cast_from(x[row + j * x.stride(3)]);
    // rotate_half: the second half negated, then the first half.
    let mut source = j + half;
    let mut sign = f32::new(-1.0);
    if j >= half {
        source = j - half;
        sign = f32::new(1.0);
    }
    let rotated = sign * f32::cast_from(x[row + source * x.stride(3)]);
    let angle = s * dim + j;
    out[ABSOLUTE_POS] = F::cast_from(value * f32::cast_from(cos[angle]) + rotated * f32::cast_from(sin[angle]));
}

/// `x·cos + rotate_half(x)·sin` for x `[batch, heads, seq, head_dim]` (any strides) and cos, sin
/// `[1, 1, seq, head_dim]` in x's float type; the result is contiguous.
pub fn rope<R: CubeRuntime>(x: CubeTensor<R>, cos: CubeTensor<R>, sin: CubeTensor<R>) -> CubeTensor<R> {
    let cos = into_contiguous(cos);
    let sin = into_contiguous(sin);
    let shape = x.shape();
    let elements = shape.num_elements();
    let out = empty_device_dtype(x.client.clone(), x.device.clone(), shape, x.dtype);
    let cube_dim = CubeDim::new(&out.client, elements);
    let cube_count = burn_cubecl::cubecl::calculate_cube_count_elemwise(&out.client, elements, cube_dim);
    let dtype = x.dtype;
    rope_kernel::launch::<R>(
        &out.client,
        cube_count,
        cube_dim,
        x.into_tensor_arg(),
        cos.into_tensor_arg(),
        sin.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        dtype.into(),
    );
    out
}
