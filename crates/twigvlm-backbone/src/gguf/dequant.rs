//! ggml tensor types and their dequantisation to f32 (block layouts as in ggml-common.h).

use half::{bf16, f16};

/// ggml element/block types this reader knows by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    BF16,
    /// Known to ggml but not dequantised here.
    Other(u32),
}

/// Elements per quantisation block of the 32-wide formats.
const QK: usize = 32;

impl GgmlType {
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    pub fn name(self) -> String {
        match self {
            Self::F32 => "F32".into(),
            Self::F16 => "F16".into(),
            Self::Q4_0 => "Q4_0".into(),
            Self::Q4_1 => "Q4_1".into(),
            Self::Q8_0 => "Q8_0".into(),
            Self::BF16 => "BF16".into(),
            Self::Other(id) => format!("ggml type {id}"),
        }
    }

    /// `(elements per block, bytes per block)`, `None` for types this reader cannot decode.
    pub fn block(self) -> Option<(usize, usize)> {
        match self {
            Self::F32 => Some((1, 4)),
            Self::F16 | Self::BF16 => Some((1, 2)),
            Self::Q4_0 => Some((QK, 2 + QK / 2)),
            Self::Q4_1 => Some((QK, 4 + QK / 2)),
            Self::Q8_0 => Some((QK, 2 + QK)),
            Self::Other(_) => None,
        }
    }

    /// Bytes needed for `elements` values, if the type is supported and the count fills whole blocks.
    pub fn byte_size(self, elements: usize) -> Option<usize> {
        let (per_block, bytes) = self.block()?;
        elements.is_multiple_of(per_block).then(|| elements / per_block * bytes)
    }

    /// Decodes `bytes` (exactly [`Self::byte_size`] of them) into f32 values.
    pub fn dequantize(self, bytes: &[u8]) -> Vec<f32> {
        let half_at = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
        match self {
            Self::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Self::F16 => bytes.chunks_exact(2).map(|c| half_at(c, 0)).collect(),
            Self::BF16 => bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            // Block: f16 scale d, 16 bytes of nibbles; low nibbles are elements 0..16, high ones 16..32.
            Self::Q4_0 => blocks(bytes, 18, |b, out| {
                let d = half_at(b, 0);
                nibbles(&b[2..], out, |q| (q as f32 - 8.0) * d);
            }),
            // Block: f16 scale d, f16 minimum m, 16 bytes of nibbles.
            Self::Q4_1 => blocks(bytes, 20, |b, out| {
                let (d, m) = (half_at(b, 0), half_at(b, 2));
                nibbles(&b[4..], out, |q| q as f32 * d + m);
            }),
            // Block: f16 scale d, 32 signed bytes.
            Self::Q8_0 => blocks(bytes, 34, |b, out| {
                let d = half_at(b, 0);
                out.extend(b[2..].iter().map(|&q| q as i8 as f32 * d));
            }),
            Self::Other(_) => Vec::new(),
        }
    }
}

fn blocks(bytes: &[u8], block_bytes: usize, decode: impl Fn(&[u8], &mut Vec<f32>)) -> Vec<f32> {
    let mut out = Vec::with_capacity(bytes.len() / block_bytes * QK);
    for block in bytes.chunks_exact(block_bytes) {
        decode(block, &mut out);
    }
    out
}

fn nibbles(qs: &[u8], out: &mut Vec<f32>, value: impl Fn(u8) -> f32) {
    out.extend(qs.iter().map(|&q| value(q & 0x0F)));
    out.extend(qs.iter().map(|&q| value(q >> 4)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_block_by_hand() {
        // d = 0.5; byte j = (j % 16) | (15 - j % 16) << 4 → low nibbles 0..15, high 15..0.
        let mut block = f16::from_f32(0.5).to_le_bytes().to_vec();
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let v = GgmlType::Q4_0.dequantize(&block);
        assert_eq!(v.len(), 32);
        assert_eq!(v[0], -4.0); // (0 - 8) * 0.5
        assert_eq!(v[15], 3.5); // (15 - 8) * 0.5
        assert_eq!(v[16], 3.5);
        assert_eq!(v[31], -4.0);
    }

    #[test]
    fn q4_1_and_q8_0_blocks_by_hand() {
        let mut block = f16::from_f32(0.25).to_le_bytes().to_vec();
        block.extend(f16::from_f32(-1.0).to_le_bytes());
        block.extend([0x21u8; 16]); // low nibble 1, high nibble 2
        let v = GgmlType::Q4_1.dequantize(&block);
        assert_eq!((v[0], v[16]), (-0.75, -0.5));

        let mut block = f16::from_f32(2.0).to_le_bytes().to_vec();
        block.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let v = GgmlType::Q8_0.dequantize(&block);
        assert_eq!((v[0], v[31]), (-32.0, 30.0));
    }

    #[test]
    fn sizes_need_whole_blocks() {
        assert_eq!(GgmlType::Q8_0.byte_size(64), Some(68));
        assert_eq!(GgmlType::Q4_1.byte_size(33), None);
        assert_eq!(GgmlType::from_id(12).byte_size(256), None);
    }
}
