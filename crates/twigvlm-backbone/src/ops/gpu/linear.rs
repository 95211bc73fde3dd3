//! Linear layers of a few rows (a decoding step, a verification): every weight is read once for
//! all rows. A cube covers a strip of output columns; its units are a grid of columns (adjacent
//! units read adjacent weights of one input row, so reads coalesce) by slices of the input
//! dimension (interleaved rows of the weight), each unit accumulating every activation row in
//! f32 registers; the slices' partial sums meet in shared memory. A row's result does not depend
//! on how many rows share the launch (the summation order is fixed by the slices alone).
//!
//! Two epilogues save launches: an MLP's gate and up projections in one pass with the SwiGLU
//! product applied (`silu(x·W_gate + b) · (x·W_up + b)`), and a residual added to the result.

use burn::tensor::TensorMetadata;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;

/// The most activation rows the kernel takes (each is a register of every unit); more rows go to
/// the backend's matmul, whose tiles then pay off.
pub const MAX_ROWS: usize = 16;

/// Output columns per cube.
const COLUMNS: u32 = 32;

/// Slices of the input dimension per cube.
const SLICES: u32 = 8;

/// What a launch computes besides `x · weight + bias`.
#[derive(CubeType, Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Epilogue {
    /// The layers have biases.
    bias: bool,
    /// A second (up) projection, and the result is `silu(first) · second`.
    gated: bool,
    /// A residual is added to the result.
    residual: bool,
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn few_rows_linear_kernel<F: Float>(
    x: &Tensor<F>,
    weight: &Tensor<F>,
    bias: &Tensor<F>,
    up_weight: &Tensor<F>,
    up_bias: &Tensor<F>,
    residual: &Tensor<F>,
    out: &mut Tensor<F>,
    #[comptime] rows: u32,
    #[comptime] epilogue: Epilogue,
    #[define(F)] _dtype: StorageType,
) {
    let (d_in, d_out) = (weight.shape(0), weight.shape(1));
    let width = COLUMNS as usize;
    let column = CUBE_POS_X as usize * width + UNIT_POS_X as usize;
    let slice = UNIT_POS_Y as usize;
    let count = rows as usize;
    let products = comptime!(if epilogue.gated { 2 } else { 1 });

    let mut acc = Array::<f32>::new(comptime!(products * rows as usize));
    #[unroll]
    for i in 0..comptime!(products * rows as usize) {
        acc[i] = f32::new(0.0);
    }
    if column < d_out {
        let mut k = slice;
        while k < d_in {
            let w = f32::cast_from(weight[k * weight.stride(0) + column * weight.stride(1)]);
            #[unroll]
            for m in 0..count {
                acc[m] += f32::cast_from(x[m * d_in + k]) * w;
            }
            if comptime!(epilogue.gated) {
                let u = f32::cast_from(up_weight[k * up_weight.stride(0) + column * up_weight.stride(1)]);
                #[unroll]
                for m in 0..count {
                    acc[count + m] += f32::cast_from(x[m * d_in + k]) * u;
                }
            }
            k += SLICES as usize;
        }
    }

    let mut partial = SharedMemory::<f32>::new(comptime!((SLICES * COLUMNS) as usize * products * rows as usize));
    #[unroll]
    for i in 0..comptime!(products * rows as usize) {
        partial[(slice * products * count + i) * width + UNIT_POS_X as usize] = acc[i];
    }
    sync_cube();

    if slice == 0 && column < d_out {
        #[unroll]
        for m in 0..count {
            let mut total = f32::new(0.0);
            #[unroll]
            for s in 0..SLICES as usize {
                total += partial[(s * products * count + m) * width + UNIT_POS_X as usize];
            }
            if comptime!(epilogue.bias) {
                total += f32::cast_from(bias[column]);
            }
            if comptime!(epilogue.gated) {
                let mut up = f32::new(0.0);
                #[unroll]
                for s in 0..SLICES as usize {
                    up += partial[(s * products * count + count + m) * width + UNIT_POS_X as usize];
                }
                if comptime!(epilogue.bias) {
                    up += f32::cast_from(up_bias[column]);
                }
                total = total / (f32::new(1.0) + (-total).exp()) * up;
            }
            if comptime!(epilogue.residual) {
                total += f32::cast_from(residual[m * d_out + column]);
            }
            out[m * d_out + column] = F::cast_from(total);
        }
    }
}

/// A linear layer's `[d_in, d_out]` weight (any strides) and its bias, if it has one.
pub struct Projection<R: CubeRuntime> {
    pub weight: CubeTensor<R>,
    pub bias: Option<CubeTensor<R>>,
}

/// `x · weight + bias` for x `[.., d_in]` of at most [`MAX_ROWS`] rows, all in one float type;
/// with `up`, `silu(x · weight + bias) · (x · up.weight + up.bias)` (both layers with a bias or
/// neither); plus `residual` (`[.., d_out]`) if given. The result is `[.., d_out]`, contiguous.
pub fn few_rows_linear<R: CubeRuntime>(
    x: CubeTensor<R>,
    layer: Projection<R>,
    up: Option<Projection<R>>,
    residual: Option<CubeTensor<R>>,
) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let mut shape = x.shape();
    let last = shape.num_dims() - 1;
    let rows = shape.num_elements() / shape[last];
    assert!(rows <= MAX_ROWS, "{rows} rows for a few-rows linear layer (at most {MAX_ROWS})");
    let d_out = layer.weight.shape()[1];
    shape[last] = d_out;
    let out = empty_device_dtype(x.client.clone(), x.device.clone(), shape, x.dtype);
    let epilogue = Epilogue { bias: layer.bias.is_some(), gated: up.is_some(), residual: residual.is_some() };
    assert!(
        up.as_ref().is_none_or(|up| up.bias.is_some() == epilogue.bias),
        "gate and up projections with and without a bias"
    );
    // Operands an epilogue does not use are never read; any tensor of the float type binds them.
    let unused = || layer.weight.clone();
    let bias = layer.bias.map(into_contiguous).unwrap_or_else(unused);
    let (up_weight, up_bias) = match up {
        Some(up) => (up.weight, up.bias.map(into_contiguous).unwrap_or_else(unused)),
        None => (unused(), unused()),
    };
    let residual = residual.map(into_contiguous).unwrap_or_else(unused);
    let dtype = x.dtype;
    few_rows_linear_kernel::launch::<R>(
        &out.client,
        CubeCount::Static(d_out.div_ceil(COLUMNS as usize) as u32, 1, 1),
        CubeDim::new_2d(COLUMNS, SLICES),
        x.into_tensor_arg(),
        layer.weight.into_tensor_arg(),
        bias.into_tensor_arg(),
        up_weight.into_tensor_arg(),
        up_bias.into_tensor_arg(),
        residual.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        rows as u32,
        epilogue,
        dtype.into(),
    );
    out
}
