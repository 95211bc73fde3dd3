//! `out = x · Wᵀ + b` for f32 activation rows and a weight stored `[d_out, d_in]` (PyTorch's
//! layout: each output's weights contiguous) in f32, f16 or bf16, with the rounding guarantee
//! described in the crate docs.
//!
//! Work is split into tasks of (a block of rows) × (a range of output columns); a task streams its
//! columns' weight rows from memory in order, once, and every activation row of the block is
//! multiplied with them while they are in registers or L1, so a few rows cost little more than one.

use crate::simd::{lane_sum, LANES};
use crate::team;
use half::{bf16, f16};

/// Output columns whose weight rows every row tile of a task uses while they are in L1 (a multiple
/// of every tile's column count); a task's column range is a multiple of this.
const COLUMN_GROUP: usize = 24;
/// Rows per task: a column chunk's weights stay cached while this many rows pass over them.
const ROW_BLOCK: usize = 96;
/// Tasks per pool thread to aim for, so that uneven chunks still balance.
const TASKS_PER_THREAD: usize = 4;
/// Below this many multiply-adds the product runs on the calling thread (dispatch costs more).
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// A row-major `[d_out, d_in]` weight matrix in its storage type.
#[derive(Debug, Clone, Copy)]
pub enum Weights<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

impl Weights<'_> {
    pub fn len(&self) -> usize {
        match self {
            Weights::F32(w) => w.len(),
            Weights::F16(w) => w.len(),
            Weights::Bf16(w) => w.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `out[r, c] = Σ_k x[r, k] · w[c, k] + bias[c]` for `x` `[rows, d_in]`, `w` `[d_out, d_in]` and
/// `out` `[rows, d_out]`, all row-major.
///
/// # Panics
/// If a slice's length does not match the dimensions.
pub fn linear(
    x: &[f32],
    rows: usize,
    weights: Weights<'_>,
    d_in: usize,
    d_out: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    linear_many(x, rows, d_in, &mut [Projection { weights, d_out, bias, out }]);
}

/// One of the products of [`linear_many`]: a weight `[d_out, d_in]`, its bias and its output
/// `[rows, d_out]`.
#[derive(Debug)]
pub struct Projection<'a> {
    pub weights: Weights<'a>,
    pub d_out: usize,
    pub bias: Option<&'a [f32]>,
    pub out: &'a mut [f32],
}

/// [`linear`] for several weights that read the same input (a layer's query, key and value
/// projections, or the gate and up projections of its MLP), as one parallel job: one hand-off to
/// the threads instead of one per weight, and tasks balanced over all the weights. Each result
/// rounds exactly as [`linear`] alone.
///
/// # Panics
/// If a slice's length does not match the dimensions.
pub fn linear_many(x: &[f32], rows: usize, d_in: usize, projections: &mut [Projection<'_>]) {
    assert_eq!(x.len(), rows * d_in, "x is not [rows, d_in]");
    let problems: Vec<(Problem<'_>, Weights<'_>)> = projections
        .iter_mut()
        .map(|p| {
            assert_eq!(p.weights.len(), d_in * p.d_out, "the weight is not [d_out, d_in]");
            assert_eq!(p.out.len(), rows * p.d_out, "out is not [rows, d_out]");
            if let Some(bias) = p.bias {
                assert_eq!(bias.len(), p.d_out, "the bias is not [d_out]");
            }
            let problem = Problem { x, rows, d_in, d_out: p.d_out, bias: p.bias, out: OutPtr(p.out.as_mut_ptr()) };
            (problem, p.weights)
        })
        .collect();
    let total_out: usize = problems.iter().map(|(p, _)| p.d_out).sum::<usize>().max(1);
    let wanted = team::threads() * TASKS_PER_THREAD;
    let tasks: Vec<(usize, Block)> = problems
        .iter()
        .enumerate()
        .flat_map(|(index, (problem, _))| {
            let share = (wanted * problem.d_out).div_ceil(total_out);
            problem.blocks(share).into_iter().map(move |block| (index, block))
        })
        .collect();
    let run = |&(index, block): &(usize, Block)| {
        let (problem, weights) = &problems[index];
        match *weights {
            Weights::F32(w) => problem.block(w, block),
            Weights::F16(w) => problem.block(w, block),
            Weights::Bf16(w) => problem.block(w, block),
        }
    };
    if tasks.len() == 1 || rows * d_in * total_out < PARALLEL_MIN_MACS {
        tasks.iter().for_each(run);
    } else {
        team::parallel_for(tasks.len(), &|i| run(&tasks[i]));
    }
}

/// A weight storage type the kernels widen to f32.
trait WeightElement: Copy + Send + Sync + 'static {
    fn widen(self) -> f32;
    /// Eight consecutive weights, widened.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(ptr: *const Self) -> std::arch::x86_64::__m256;
}

impl WeightElement for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(ptr: *const Self) -> std::arch::x86_64::__m256 {
        x86::load8_f32(ptr)
    }
}

/// A 16-bit float type: widened by `half`, eight at a time by `$load8`.
macro_rules! half_weight {
    ($type:ty, $load8:ident) => {
        impl WeightElement for $type {
            #[inline(always)]
            fn widen(self) -> f32 {
                self.to_f32()
            }
            #[cfg(target_arch = "x86_64")]
            #[inline(always)]
            unsafe fn load8(ptr: *const Self) -> std::arch::x86_64::__m256 {
                x86::$load8(ptr.cast())
            }
        }
    };
}

half_weight!(f16, load8_f16);
half_weight!(bf16, load8_bf16);

/// The output pointer, shared by tasks that write disjoint elements.
#[derive(Debug, Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint (row, column) ranges of one buffer that outlives them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

struct Problem<'a> {
    x: &'a [f32],
    rows: usize,
    d_in: usize,
    d_out: usize,
    bias: Option<&'a [f32]>,
    out: OutPtr,
}

/// A task: rows `rows.0..rows.1` × columns `cols.0..cols.1`.
#[derive(Clone, Copy)]
struct Block {
    rows: (usize, usize),
    cols: (usize, usize),
}

impl Problem<'_> {
    /// This product's tasks, about `wanted` of them.
    fn blocks(&self, wanted: usize) -> Vec<Block> {
        let row_blocks = self.rows.div_ceil(ROW_BLOCK).max(1);
        let groups = self.d_out.div_ceil(COLUMN_GROUP).max(1);
        let col_chunks = wanted.div_ceil(row_blocks).clamp(1, groups);
        let chunk = groups.div_ceil(col_chunks) * COLUMN_GROUP;
        let mut blocks = Vec::with_capacity(row_blocks * col_chunks);
        for r0 in (0..self.rows.max(1)).step_by(ROW_BLOCK) {
            for c0 in (0..self.d_out).step_by(chunk) {
                blocks.push(Block {
                    rows: (r0, (r0 + ROW_BLOCK).min(self.rows)),
                    cols: (c0, (c0 + chunk).min(self.d_out)),
                });
            }
        }
        blocks
    }

    fn block<W: WeightElement>(&self, w: &[W], block: Block) {
        #[cfg(target_arch = "x86_64")]
        if x86::available() {
            // SAFETY: the features were detected; `block` lies inside the checked dimensions.
            unsafe { x86::block(self, w, block) };
            return;
        }
        portable_block(self, w, block);
    }

    /// Finishes element `(r, c)` from its lane sums and its tail sum (see [`finish`]).
    ///
    /// # Safety
    /// `(r, c)` lies inside `out`, and no other task writes it.
    #[inline(always)]
    unsafe fn store(&self, r: usize, c: usize, lanes: &[f32; LANES], w_row: &[impl WeightElement]) {
        let x = &self.x[r * self.d_in..(r + 1) * self.d_in];
        *self.out.0.add(r * self.d_out + c) = finish(lanes, x, w_row, self.bias.map(|b| b[c]));
    }
}

/// The canonical reduction order of one output element, shared by every path. Lane `l`
/// accumulates `x[k]·w[k]` for `k ≡ l (mod 8)` over the full groups of eight, in `k` order, with
/// fused multiply-adds; the lanes are summed pairwise in a fixed tree; the last `d_in mod 8`
/// products are fused on in order; the bias is added last.
#[inline(always)]
fn finish(lanes: &[f32; LANES], x: &[f32], w_row: &[impl WeightElement], bias: Option<f32>) -> f32 {
    let tree = lane_sum(lanes);
    let full = x.len() - x.len() % LANES;
    let sum = x[full..].iter().zip(&w_row[full..]).fold(tree, |acc, (&xk, &wk)| xk.mul_add(wk.widen(), acc));
    match bias {
        Some(bias) => sum + bias,
        None => sum,
    }
}

/// The canonical order written plainly, one element at a time (no vector unit needed).
fn portable_block<W: WeightElement>(p: &Problem<'_>, w: &[W], block: Block) {
    let full = p.d_in - p.d_in % LANES;
    for c in block.cols.0..block.cols.1 {
        let w_row = &w[c * p.d_in..(c + 1) * p.d_in];
        for r in block.rows.0..block.rows.1 {
            let x = &p.x[r * p.d_in..(r + 1) * p.d_in];
            let mut lanes = [0.0f32; LANES];
            for (xs, ws) in x[..full].chunks_exact(LANES).zip(w_row[..full].chunks_exact(LANES)) {
                for ((lane, &xk), &wk) in lanes.iter_mut().zip(xs).zip(ws) {
                    *lane = xk.mul_add(wk.widen(), *lane);
                }
            }
            // SAFETY: `(r, c)` comes from a block of this problem.
            unsafe { p.store(r, c, &lanes, w_row) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX2 + FMA (+ F16C for f16 weights) tiles of `R` activation rows × `C` output columns:
    //! `R·C` lane-vectors of accumulators in registers, each weight row streamed once per tile.

    use std::arch::x86_64::*;

    use super::{Block, Problem, WeightElement, COLUMN_GROUP, LANES};

    /// Bytes per cache line.
    const CACHE_LINE: usize = 64;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub unsafe fn load8_f32(ptr: *const f32) -> __m256 {
        _mm256_loadu_ps(ptr)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub unsafe fn load8_f16(ptr: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(ptr.cast()))
    }

    /// bf16 is the top half of an f32: widen to 32 bits and shift.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub unsafe fn load8_bf16(ptr: *const u16) -> __m256 {
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(ptr.cast()))))
    }

    /// # Safety
    /// The CPU has the features of [`available`]; `block` lies inside the problem.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn block<W: WeightElement>(p: &Problem<'_>, w: &[W], block: Block) {
        let mut c = block.cols.0;
        while c < block.cols.1 {
            let group = (block.cols.1 - c).min(COLUMN_GROUP);
            let mut r = block.rows.0;
            while r < block.rows.1 {
                // Four rows at a time keep accumulators, weights and one activation vector in the
                // 16 vector registers; fewer rows go one at a time over eight columns (eight
                // independent chains), rereading the group's weights from L1, which measured
                // faster than two- and three-row tiles with fewer columns.
                r += match block.rows.1 - r {
                    4.. => columns::<W, 4, 3>(p, w, r, c, group),
                    _ => columns::<W, 1, 8>(p, w, r, c, group),
                };
            }
            c += group;
        }
    }

    /// Rows `r..r + R`, columns `c0..c0 + count`, `C` columns at a time (then one at a time).
    /// Returns `R`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn columns<W: WeightElement, const R: usize, const C: usize>(
        p: &Problem<'_>,
        w: &[W],
        r: usize,
        c0: usize,
        count: usize,
    ) -> usize {
        let mut c = c0;
        while c + C <= c0 + count {
            tile::<W, R, C>(p, w, r, c);
            c += C;
        }
        while c < c0 + count {
            tile::<W, R, 1>(p, w, r, c);
            c += 1;
        }
        R
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<W: WeightElement, const R: usize, const C: usize>(p: &Problem<'_>, w: &[W], r: usize, c: usize) {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let x = p.x.as_ptr().add(r * p.d_in);
        let wp = w.as_ptr().add(c * p.d_in);
        let full = p.d_in - p.d_in % LANES;
        // The next tile's weights follow this tile's in memory: fetch them linearly, as fast as
        // this tile consumes its own. Weight rows are short (a few KiB), too short for the
        // hardware prefetcher to lock on to each of the `C` streams.
        let next = wp.add(C * p.d_in).cast::<u8>();
        let fetch_per_step = C * LANES * size_of::<W>();
        let mut k = 0;
        while k < full {
            let ahead = next.add(k * C * size_of::<W>());
            for line in (0..fetch_per_step).step_by(CACHE_LINE) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line).cast());
            }
            let mut wv = [_mm256_setzero_ps(); C];
            for (col, lane) in wv.iter_mut().enumerate() {
                *lane = W::load8(wp.add(col * p.d_in + k));
            }
            for (row, acc_row) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.add(row * p.d_in + k));
                for (a, &wl) in acc_row.iter_mut().zip(&wv) {
                    *a = _mm256_fmadd_ps(xv, wl, *a);
                }
            }
            k += LANES;
        }
        let mut lanes = [0.0f32; LANES];
        for (row, acc_row) in acc.iter().enumerate() {
            for (col, a) in acc_row.iter().enumerate() {
                _mm256_storeu_ps(lanes.as_mut_ptr(), *a);
                let w_row = &w[(c + col) * p.d_in..(c + col + 1) * p.d_in];
                p.store(r + row, c + col, &lanes, w_row);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values::values;

    /// f64 reference of the product.
    fn reference(x: &[f32], rows: usize, w: &[f32], d_in: usize, d_out: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let mut out = vec![0.0; rows * d_out];
        for r in 0..rows {
            for c in 0..d_out {
                let dot: f64 = (0..d_in).map(|k| x[r * d_in + k] as f64 * w[c * d_in + k] as f64).sum();
                out[r * d_out + c] = (dot + bias.map_or(0.0, |b| b[c] as f64)) as f32;
            }
        }
        out
    }

    fn run(x: &[f32], rows: usize, w: Weights<'_>, d_in: usize, d_out: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let mut out = vec![f32::NAN; rows * d_out];
        linear(x, rows, w, d_in, d_out, bias, &mut out);
        out
    }

    #[test]
    fn matches_a_wide_reference_for_every_row_count_and_odd_shapes() {
        for (d_in, d_out) in [(7, 5), (33, 71), (64, 200), (129, 257)] {
            let w = values(d_in * d_out, 1);
            let bias = values(d_out, 2);
            for rows in 1..=17 {
                let x = values(rows * d_in, rows as u32 + 3);
                let got = run(&x, rows, Weights::F32(&w), d_in, d_out, Some(&bias));
                let want = reference(&x, rows, &w, d_in, d_out, Some(&bias));
                for (g, e) in got.iter().zip(&want) {
                    assert!((g - e).abs() <= 1e-5 * (1.0 + e.abs()), "{d_in}x{d_out}, {rows} rows: {g} vs {e}");
                }
            }
        }
    }

    #[test]
    fn half_weights_equal_their_widened_values() {
        let (d_in, d_out) = (45, 83);
        let w = values(d_in * d_out, 5);
        let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let wb16: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let x = values(3 * d_in, 6);
        let widened16: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
        let widenedb16: Vec<f32> = wb16.iter().map(|v| v.to_f32()).collect();
        // Widening is exact, so the half-weight product is bitwise the f32 product of the widened values.
        assert_eq!(
            run(&x, 3, Weights::F16(&w16), d_in, d_out, None),
            run(&x, 3, Weights::F32(&widened16), d_in, d_out, None)
        );
        assert_eq!(
            run(&x, 3, Weights::Bf16(&wb16), d_in, d_out, None),
            run(&x, 3, Weights::F32(&widenedb16), d_in, d_out, None)
        );
    }

    #[test]
    fn a_row_rounds_the_same_alone_and_among_others() {
        let (d_in, d_out) = (301, 530);
        let w = values(d_in * d_out, 7);
        let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let bias = values(d_out, 8);
        let all = values(200 * d_in, 9);
        for weights in [Weights::F32(&w), Weights::F16(&w16)] {
            let alone: Vec<Vec<f32>> =
                (0..200).map(|r| run(&all[r * d_in..(r + 1) * d_in], 1, weights, d_in, d_out, Some(&bias))).collect();
            for rows in [2, 3, 5, 6, 7, 16, 17, 97, 200] {
                let together = run(&all[..rows * d_in], rows, weights, d_in, d_out, Some(&bias));
                for (r, row) in together.chunks(d_out).enumerate() {
                    assert_eq!(row, alone[r].as_slice(), "row {r} of {rows}");
                }
            }
        }
    }

    #[test]
    fn the_vector_path_rounds_like_the_portable_order() {
        let (d_in, d_out, rows) = (77, 150, 7);
        let w = values(d_in * d_out, 11);
        let x = values(rows * d_in, 12);
        let fast = run(&x, rows, Weights::F32(&w), d_in, d_out, None);
        let mut portable = vec![0.0; rows * d_out];
        let problem = Problem { x: &x, rows, d_in, d_out, bias: None, out: OutPtr(portable.as_mut_ptr()) };
        portable_block(&problem, &w, Block { rows: (0, rows), cols: (0, d_out) });
        assert_eq!(fast, portable);
    }

    #[test]
    fn several_projections_equal_each_alone() {
        let (d_in, rows) = (96, 3);
        let x = values(rows * d_in, 21);
        let shapes = [200, 64, 64];
        let weights: Vec<Vec<f32>> = shapes.iter().enumerate().map(|(i, &d)| values(d * d_in, 30 + i as u32)).collect();
        let alone: Vec<Vec<f32>> =
            weights.iter().zip(shapes).map(|(w, d)| run(&x, rows, Weights::F32(w), d_in, d, None)).collect();
        let mut outs: Vec<Vec<f32>> = shapes.iter().map(|&d| vec![f32::NAN; rows * d]).collect();
        let mut projections: Vec<Projection<'_>> = weights
            .iter()
            .zip(shapes)
            .zip(outs.iter_mut())
            .map(|((w, d_out), out)| Projection { weights: Weights::F32(w), d_out, bias: None, out })
            .collect();
        linear_many(&x, rows, d_in, &mut projections);
        assert_eq!(outs, alone);
    }

    #[test]
    #[should_panic(expected = "the weight is not [d_out, d_in]")]
    fn a_wrong_weight_size_is_refused() {
        let mut out = vec![0.0; 4];
        linear(&[0.0; 3], 1, Weights::F32(&[0.0; 11]), 3, 4, None, &mut out);
    }
}
