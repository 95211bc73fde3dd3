//! Row-wise operations of a decoder layer that burn would run as several passes with a temporary
//! tensor each: RMSNorm, the SiLU-gated product of a SwiGLU MLP, and rotary position embedding.
//! Each row is computed on its own, in the same order whatever the row count.

use crate::simd::{dispatch, exp, lane_sum, LANES};

/// `out[r] = x[r] / √(mean(x[r]²) + eps) · gamma` for rows of `gamma.len()` values.
///
/// # Panics
/// If `x` or `out` is not a whole number of rows.
pub fn rms_norm(x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32]) {
    let d = gamma.len();
    assert!(d > 0 && x.len().is_multiple_of(d) && out.len() == x.len(), "rms_norm: x is not rows of {d}");
    rms_norm_rows(x, gamma, eps, out);
}

dispatch! {
fn rms_norm_rows(x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32]) {
    let d = gamma.len();
    for (row, out) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mut lanes = [0.0f32; LANES];
        let full = d - d % LANES;
        for chunk in row[..full].chunks_exact(LANES) {
            for (lane, &v) in lanes.iter_mut().zip(chunk) {
                *lane += v * v;
            }
        }
        let tree = lane_sum(&lanes);
        let squares = row[full..].iter().fold(tree, |acc, &v| acc + v * v);
        let rms = (squares / d as f32 + eps).sqrt();
        for ((o, &v), &g) in out.iter_mut().zip(row).zip(gamma) {
            *o = v / rms * g;
        }
    }
}
}

/// `out = silu(gate) · up = gate / (1 + e^(−gate)) · up`, element by element.
///
/// # Panics
/// If the lengths differ.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && out.len() == up.len(), "silu_mul: lengths differ");
    silu_mul_all(gate, up, out);
}

dispatch! {
fn silu_mul_all(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp(-g)) * u;
    }
}
}

/// Rotary embedding in the `rotate_half` convention: `out = x·cos + rotate_half(x)·sin`, where
/// `rotate_half(x) = [−x₂, x₁]` for the halves of each head vector. `x` holds `rows` head vectors
/// per position block: row `i` uses `cos`/`sin` row `position_of(i)`.
///
/// # Panics
/// If `head_dim` is odd or a slice length does not match.
pub fn rope(
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    head_dim: usize,
    position_of: impl Fn(usize) -> usize,
    out: &mut [f32],
) {
    assert!(
        head_dim.is_multiple_of(2) && x.len().is_multiple_of(head_dim) && out.len() == x.len(),
        "rope: bad head rows"
    );
    assert_eq!(cos.len(), sin.len(), "rope: cos and sin differ");
    let half = head_dim / 2;
    for (i, (v, o)) in x.chunks_exact(head_dim).zip(out.chunks_exact_mut(head_dim)).enumerate() {
        let p = position_of(i) * head_dim;
        let (c, s) = (&cos[p..p + head_dim], &sin[p..p + head_dim]);
        for j in 0..half {
            o[j] = v[j] * c[j] + -v[j + half] * s[j];
            o[j + half] = v[j + half] * c[j + half] + v[j] * s[j + half];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_matches_the_formula() {
        let d = 13;
        let x: Vec<f32> = (0..3 * d).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let gamma: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 * 0.1).collect();
        let mut out = vec![0.0; x.len()];
        rms_norm(&x, &gamma, 1e-5, &mut out);
        for (r, row) in x.chunks(d).enumerate() {
            let ms: f64 = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / d as f64;
            for i in 0..d {
                let want = row[i] as f64 / (ms + 1e-5).sqrt() * gamma[i] as f64;
                assert!((out[r * d + i] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()));
            }
        }
    }

    #[test]
    fn silu_mul_matches_the_formula() {
        let gate: Vec<f32> = (0..300).map(|i| (i as f32 - 150.0) * 0.7).collect();
        let up: Vec<f32> = (0..300).map(|i| 1.0 + i as f32 * 0.01).collect();
        let mut out = vec![0.0; 300];
        silu_mul(&gate, &up, &mut out);
        for i in 0..300 {
            let g = gate[i] as f64;
            let want = g / (1.0 + (-g).exp()) * up[i] as f64;
            assert!((out[i] as f64 - want).abs() <= 2e-6 * (1.0 + want.abs()), "{g}: {} vs {want}", out[i]);
        }
    }

    #[test]
    fn rope_rotates_each_half() {
        let head_dim = 4;
        let x = [1.0, 2.0, 3.0, 4.0];
        let (cos, sin) = ([0.5, 0.25, 0.5, 0.25], [0.1, 0.2, 0.1, 0.2]);
        let mut out = [0.0; 4];
        rope(&x, &cos, &sin, head_dim, |_| 0, &mut out);
        assert_eq!(out, [1.0 * 0.5 - 3.0 * 0.1, 2.0 * 0.25 - 4.0 * 0.2, 3.0 * 0.5 + 1.0 * 0.1, 4.0 * 0.25 + 2.0 * 0.2]);
    }
}
