//! Helpers for loops the compiler vectorises: a branch-free `exp`, and [`dispatch!`], which
//! compiles a loop a second time with AVX2 enabled and picks that copy at run time. Both copies
//! perform the same float operations in the same order (Rust never fuses a multiply and an add
//! on its own), so they round identically.

/// `log2(e)`.
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split in two so that `n·ln2` is exact for the `n` that occur (Cody–Waite).
const LN2_HIGH: f32 = 0.693_359_4;
const LN2_LOW: f32 = -2.121_944_4e-4;
/// Adding then subtracting 1.5·2²³ rounds an f32 below 2²² to the nearest integer.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// Inputs are clamped to where `e^x` is a normal f32.
const EXP_MIN: f32 = -87.0;
const EXP_MAX: f32 = 88.0;
/// Minimax polynomial of `(e^r − 1 − r) / r²` on `|r| ≤ ln2/2` (Cephes' `expf`), highest first.
const EXP_POLY: [f32; 6] = [1.987_569_1e-4, 1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];
/// The f32 exponent bias.
const EXPONENT_BIAS: i32 = 127;
const MANTISSA_BITS: i32 = 23;

/// `e^x` within 2 ulp for `x` in `[−87, 88]` (clamped outside), branch-free so that loops over
/// it vectorise.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(EXP_MIN, EXP_MAX);
    let n = (x * LOG2E + ROUND_MAGIC) - ROUND_MAGIC;
    let r = x - n * LN2_HIGH - n * LN2_LOW;
    let poly = EXP_POLY.iter().fold(0.0, |acc, &c| acc * r + c);
    let e = poly * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + EXPONENT_BIAS) << MANTISSA_BITS) as u32)
}

/// Lanes of the partial sums of every reduction in this crate (and of one AVX2 register).
pub const LANES: usize = 8;

/// The lanes of a reduction summed pairwise in one fixed tree.
#[inline(always)]
pub fn lane_sum(lanes: &[f32; LANES]) -> f32 {
    ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
}

/// Whether the AVX2 copies may run.
#[cfg(target_arch = "x86_64")]
pub fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Defines `fn name(args)` from a body that is compiled twice: as written, and with AVX2 enabled
/// (chosen at run time where the CPU has it).
macro_rules! dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn wide($($arg: $ty),*) {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if $crate::simd::has_avx2() {
                // SAFETY: the CPU has the features `wide` is compiled for.
                return unsafe { wide($($arg),*) };
            }
            body($($arg),*)
        }
    };
}
pub(crate) use dispatch;

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_within_two_ulp() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (super::exp(x), (x as f64).exp());
            let ulp = (want as f32).to_bits().abs_diff(got.to_bits());
            assert!(ulp <= 2, "exp({x}) = {got}, want {want} ({ulp} ulp)");
            x += 0.0137;
        }
        assert_eq!(super::exp(-1000.0), super::exp(-87.0));
    }
}
