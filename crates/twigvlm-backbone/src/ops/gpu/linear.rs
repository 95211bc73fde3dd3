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

/// Adds this unit's share of `x · weight[:, column]` (the input rows of its slice) to
/// `acc[first..first + rows]`.
#[cube]
fn accumulate<F: Float>(
    x: &Tensor<F>,
    weight: &Tensor<F>,
    acc: &mut Array<f32>,
    column: usize,
    #[comptime] first: usize,
    #[comptime] rows: usize,
) {
    let d_in = weight.shape(0);
    let mut k = UNIT_POS_Y as usize;
    while k < d_in {
        let w = f32::cast_from(weight[k * weight.stride(0) + column * weight.stride(1)]);
        #[unroll]
        for m in 0..rows {
            acc[first + m] += f32::cast_from(x[m * d_in + k]) * w;
        }
        k += SLICES as usize;
    }
}

/// Sums the slices' `values` accumulators through shared memory, always in slice order; the units
/// of slice 0 hold the totals in `acc` afterwards. Every unit of the cube must call it.
#[cube]
fn sum_slices(acc: &mut Array<f32>, #[comptime] values: usize) {
    let width = COLUMNS as usize;
    let unit = UNIT_POS_X as usize;
    let slice = UNIT_POS_Y as usize;
    let mut partial = SharedMemory::<f32>::new(comptime!(SLICES as usize * COLUMNS as usize * values));
    #[unroll]
    for i in 0..values {
        partial[(slice * values + i) * width + unit] = acc[i];
    }
    sync_cube();
    if slice == 0 {
        #[unroll]
        for i in 0..values {
            let mut total = f32::new(0.0);
            #[unroll]
            for s in 0..SLICES as usize {
                total += partial[(s * values + i) * width + unit];
            }
            acc[i] = total;
        }
    }
}

#[cube]
fn zeros(#[comptime] values: usize) -> Array<f32> {
    let mut acc = Array::<f32>::new(values);
    #[unroll]
    for i in 0..values {
        acc[i] = f32::new(0.0);
    }
    acc
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
    let d_out = weight.shape(1);
    let column = CUBE_POS_X as usize * COLUMNS as usize + UNIT_POS_X as usize;
    let count = rows as usize;
    let values = comptime!(if epilogue.gated { 2 * rows as usize } else { rows as usize });

    let mut acc = zeros(values);
    if column < d_out {
        accumulate(x, weight, &mut acc, column, 0usize, count);
        if comptime!(epilogue.gated) {
            accumulate(x, up_weight, &mut acc, column, count, count);
        }
    }
    sum_slices(&mut acc, values);

    if UNIT_POS_Y == 0 && column < d_out {
        #[unroll]
        for m in 0..count {
            let mut total = acc[m];
            if comptime!(epilogue.bias) {
                total += f32::cast_from(bias[column]);
            }
            if comptime!(epilogue.gated) {
                let mut up = acc[count + m];
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

/// Writes `acc` (+ bias) into column `column` of `out`'s rows.
#[cube]
fn write_column<F: Float>(
    out: &mut Tensor<F>,
    bias: &Tensor<F>,
    acc: &Array<f32>,
    column: usize,
    #[comptime] rows: usize,
    #[comptime] has_bias: bool,
) {
    let d_out = out.shape(out.rank() - 1);
    #[unroll]
    for m in 0..rows {
        let mut total = acc[m];
        if comptime!(has_bias) {
            total += f32::cast_from(bias[column]);
        }
        out[m * d_out + column] = F::cast_from(total);
    }
}

/// Three layers of one input in one launch (a layer's query, key and value projections): the
/// cubes of row `y` of the grid compute layer `y`; a layer narrower than the widest leaves its
/// extra cubes idle.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn few_rows_linear_three_kernel<F: Float>(
    x: &Tensor<F>,
    w0: &Tensor<F>,
    w1: &Tensor<F>,
    w2: &Tensor<F>,
    b0: &Tensor<F>,
    b1: &Tensor<F>,
    b2: &Tensor<F>,
    o0: &mut Tensor<F>,
    o1: &mut Tensor<F>,
    o2: &mut Tensor<F>,
    #[comptime] rows: u32,
    #[comptime] has_bias: bool,
    #[define(F)] _dtype: StorageType,
) {
    let column = CUBE_POS_X as usize * COLUMNS as usize + UNIT_POS_X as usize;
    let count = rows as usize;
    let layer = CUBE_POS_Y;
    let mut acc = zeros(count);
    let mut d_out = w2.shape(1);
    if layer == 0 {
        d_out = w0.shape(1);
    } else if layer == 1 {
        d_out = w1.shape(1);
    }
    if column < d_out {
        if layer == 0 {
            accumulate(x, w0, &mut acc, column, 0usize, count);
        } else if layer == 1 {
            accumulate(x, w1, &mut acc, column, 0usize, count);
        } else {
            accumulate(x, w2, &mut acc, column, 0usize, count);
        }
    }
    sum_slices(&mut acc, count);

    if UNIT_POS_Y == 0 && column < d_out {
        if layer == 0 {
            write_column(o0, b0, &acc, column, count, has_bias);
        } else if layer == 1 {
            write_column(o1, b1, &acc, column, count, has_bias);
        } else {
            write_column(o2, b2, &acc, column, count, has_bias);
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

/// Three layers of one input (`[.., d_in]`, at most [`MAX_ROWS`] rows), each with a bias or each
/// without, in one launch: `[x · layer.weight + layer.bias]`, each `[.., d_out]` and contiguous.
pub fn few_rows_linear_three<R: CubeRuntime>(x: CubeTensor<R>, layers: [Projection<R>; 3]) -> [CubeTensor<R>; 3] {
    let x = into_contiguous(x);
    let shape = x.shape();
    let last = shape.num_dims() - 1;
    let rows = shape.num_elements() / shape[last];
    assert!(rows <= MAX_ROWS, "{rows} rows for a few-rows linear layer (at most {MAX_ROWS})");
    let has_bias = layers[0].bias.is_some();
    assert!(layers.iter().all(|layer| layer.bias.is_some() == has_bias), "layers with and without a bias");
    let outs = layers.each_ref().map(|layer| {
        let mut shape = shape.clone();
        shape[last] = layer.weight.shape()[1];
        empty_device_dtype(x.client.clone(), x.device.clone(), shape, x.dtype)
    });
    let widest = layers.iter().map(|layer| layer.weight.shape()[1]).max().unwrap_or(0);
    let [w0, w1, w2] = layers.each_ref().map(|layer| layer.weight.clone().into_tensor_arg());
    // Without biases the kernel never reads them; the weights bind them.
    let [b0, b1, b2] = layers.map(|layer| layer.bias.map(into_contiguous).unwrap_or(layer.weight).into_tensor_arg());
    let [o0, o1, o2] = outs.each_ref().map(|out| out.clone().into_tensor_arg());
    let dtype = x.dtype;
    few_rows_linear_three_kernel::launch::<R>(
        &x.client.clone(),
        CubeCount::Static(widest.div_ceil(COLUMNS as usize) as u32, 3, 1),
        CubeDim::new_2d(COLUMNS, SLICES),
        x.into_tensor_arg(),
        w0,
        w1,
        w2,
        b0,
        b1,
        b2,
        o0,
        o1,
        o2,
        rows as u32,
        has_bias,
        dtype.into(),
    );
    outs
}
