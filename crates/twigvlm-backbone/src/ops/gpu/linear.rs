//! Linear layers of a few rows (a decoding step, a verification): every weight is read once for
//! all rows. A cube covers a strip of output columns; its units are a grid of columns (adjacent
//! units read adjacent weights of one input row, so reads coalesce) by slices of the input
//! dimension (interleaved rows of the weight), each unit accumulating every activation row in
//! f32 registers; the slices' partial sums meet in shared memory. A row's result does not depend
//! on how many rows share the launch (the summation order is fixed by the slices alone).

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

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn few_rows_linear_kernel<F: Float>(
    x: &Tensor<F>,
    weight: &Tensor<F>,
    bias: &Tensor<F>,
    out: &mut Tensor<F>,
    #[comptime] rows: u32,
    #[comptime] columns: u32,
    #[comptime] slices: u32,
    #[comptime] has_bias: bool,
    #[define(F)] _dtype: StorageType,
) {
    let (d_in, d_out) = (weight.shape(0), weight.shape(1));
    let width = columns as usize;
    let column = CUBE_POS_X as usize * width + UNIT_POS_X as usize;
    let slice = UNIT_POS_Y as usize;
    let count = rows as usize;

    let mut acc = Array::<f32>::new(count);
    #[unroll]
    for m in 0..count {
        acc[m] = f32::new(0.0);
    }
    if column < d_out {
        let mut k = slice;
        while k < d_in {
            let w = f32::cast_from(weight[k * weight.stride(0) + column * weight.stride(1)]);
            #[unroll]
            for m in 0..count {
                acc[m] += f32::cast_from(x[m * d_in + k]) * w;
            }
            k += slices as usize;
        }
    }

    let mut partial = SharedMemory::<f32>::new(comptime!((slices * rows * columns) as usize));
    #[unroll]
    for m in 0..count {
        partial[(slice * count + m) * width + UNIT_POS_X as usize] = acc[m];
    }
    sync_cube();

    if slice == 0 && column < d_out {
        #[unroll]
        for m in 0..count {
            let mut total = f32::new(0.0);
            #[unroll]
            for s in 0..slices as usize {
                total += partial[(s * count + m) * width + UNIT_POS_X as usize];
            }
            if comptime!(has_bias) {
                total += f32::cast_from(bias[column]);
            }
            out[m * d_out + column] = F::cast_from(total);
        }
    }
}

/// `x · weight (+ bias)` for x `[.., d_in]` of at most [`MAX_ROWS`] rows, weight `[d_in, d_out]`
/// (any strides) and bias `[d_out]`, all in one float type: `[.., d_out]`, contiguous.
pub fn few_rows_linear<R: CubeRuntime>(
    x: CubeTensor<R>,
    weight: CubeTensor<R>,
    bias: Option<CubeTensor<R>>,
) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let mut shape = x.shape();
    let d_in = shape[shape.num_dims() - 1];
    let rows = shape.num_elements() / d_in;
    assert!(rows <= MAX_ROWS, "{rows} rows for a few-rows linear layer (at most {MAX_ROWS})");
    let d_out = weight.shape()[1];
    let last = shape.num_dims() - 1;
    shape[last] = d_out;
    let out = empty_device_dtype(x.client.clone(), x.device.clone(), shape, x.dtype);
    let has_bias = bias.is_some();
    // Without a bias the kernel never reads it; any tensor of the float type binds it.
    let bias = bias.map(into_contiguous).unwrap_or_else(|| weight.clone());
    let dtype = x.dtype;
    few_rows_linear_kernel::launch::<R>(
        &out.client,
        CubeCount::Static(d_out.div_ceil(COLUMNS as usize) as u32, 1, 1),
        CubeDim::new_2d(COLUMNS, SLICES),
        x.into_tensor_arg(),
        weight.into_tensor_arg(),
        bias.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        rows as u32,
        COLUMNS,
        SLICES,
        has_bias,
        dtype.into(),
    );
    out
}
