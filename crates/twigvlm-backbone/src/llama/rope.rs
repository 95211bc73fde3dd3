//! Rotary position embedding in the HF `rotate_half` convention, evaluated at explicit position
//! ids. Pruned sequences keep their original positions, so angles are never derived from a cache length.

use std::ops::Range;

use burn::prelude::*;

use crate::ops::DecodeOps;

/// cos/sin of the rotary angles for one forward's tokens.
#[derive(Debug, Clone)]
pub struct RopeAngles<B: Backend> {
    /// `[1, 1, seq, head_dim]`
    pub cos: Tensor<B, 4>,
    /// `[1, 1, seq, head_dim]`
    pub sin: Tensor<B, 4>,
}

impl<B: Backend> RopeAngles<B> {
    /// Angles `pos * theta^(-2i/head_dim)`, duplicated across both halves as HF does.
    pub fn new(positions: &[usize], head_dim: usize, theta: f64, device: &B::Device) -> Self {
        let half = head_dim / 2;
        let mut angles = Vec::with_capacity(positions.len() * head_dim);
        for &pos in positions {
            let row: Vec<f32> = (0..half)
                .map(|i| {
                    // Computed in f64 then rounded, like HF's float32 inv_freq times position within 1 ulp.
                    let inv_freq = (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32;
                    pos as f32 * inv_freq
                })
                .collect();
            angles.extend_from_slice(&row);
            angles.extend_from_slice(&row);
        }
        let angles = Tensor::<B, 2>::from_data(TensorData::new(angles, [positions.len(), head_dim]), device);
        Self { cos: angles.clone().cos().unsqueeze::<4>(), sin: angles.sin().unsqueeze::<4>() }
    }

    /// The angles of the tokens in `rows` (indices into the positions these were built for).
    pub fn rows(&self, rows: Range<usize>) -> Self {
        let narrow = |t: &Tensor<B, 4>| t.clone().narrow(2, rows.start, rows.len());
        Self { cos: narrow(&self.cos), sin: narrow(&self.sin) }
    }

    /// The angles of several forwards' tokens one after another.
    pub fn cat<'a>(parts: impl Iterator<Item = &'a Self>) -> Self
    where
        B: 'a,
    {
        let (cos, sin): (Vec<_>, Vec<_>) = parts.map(|part| (part.cos.clone(), part.sin.clone())).unzip();
        Self { cos: Tensor::cat(cos, 2), sin: Tensor::cat(sin, 2) }
    }

    /// # Shapes
    /// - x: `[batch, heads, seq, head_dim]` → same
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4>
    where
        B: DecodeOps,
    {
        B::rope(x, self.cos.clone(), self.sin.clone())
    }
}
