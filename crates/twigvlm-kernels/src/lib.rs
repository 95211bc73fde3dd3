//! CPU kernels for the hot operations of a decoding step, on plain slices (no tensor library):
//! [`linear`] layers, [`attention`] over a KV cache, and the row-wise [`rms_norm`], [`silu_mul`]
//! and [`rope`].
//!
//! A decoding step multiplies a few activation rows (one token, or the handful of a draft
//! verification) by every weight matrix of the model, so its speed is the speed at which the
//! weights stream from memory. [`linear`] reads each weight once for all rows, spreads the output
//! columns over the rayon pool, reads f16 and bf16 weights as they are stored (half the bytes of
//! f32) and accumulates in f32.
//!
//! **Row-independent rounding.** Every output element is one fused multiply-add chain over the
//! inner dimension in index order, started from zero, with the bias added last; no reduction
//! order depends on the number of rows, the tile shape, the thread count or the instruction set.
//! A row's result is therefore bitwise the same whether it is computed alone or among any number
//! of other rows, which is what makes a verification forward round exactly like one-row decoding.

pub mod attention;
pub mod elementwise;
pub mod linear;
mod simd;
pub mod team;

pub use attention::{attention, View4, Visibility};
pub use elementwise::{rms_norm, rope, silu_mul};
pub use linear::{linear, linear_many, Projection, Weights};

#[cfg(test)]
mod test_values {
    /// `n` deterministic values in [-1, 1) from a small xorshift generator.
    pub fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }
}
