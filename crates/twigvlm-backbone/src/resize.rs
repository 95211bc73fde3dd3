//! Bicubic resampling that reproduces Pillow's `Image.resize(..., BICUBIC)` on 8-bit RGB bit for
//! bit (HF image processors resize through Pillow): a separable filter with Keys' a = −0.5, the
//! support widened by the scale when shrinking, coefficients normalised then quantised to
//! 22-bit fixed point, and an 8-bit intermediate image between the horizontal and vertical pass.

use image::RgbImage;

/// Pillow's fixed-point precision for 8-bit images (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;
/// Keys' cubic convolution parameter used by Pillow.
const BICUBIC_A: f64 = -0.5;
const BICUBIC_SUPPORT: f64 = 2.0;

fn bicubic(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        ((BICUBIC_A + 2.0) * x - (BICUBIC_A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * BICUBIC_A
    } else {
        0.0
    }
}

/// For each output index: the first input index and the fixed-point weights of its window.
struct Coefficients {
    windows: Vec<(usize, Vec<i32>)>,
}

impl Coefficients {
    fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = BICUBIC_SUPPORT * filter_scale;
        let windows = (0..out_size)
            .map(|xx| {
                let center = (xx as f64 + 0.5) * scale;
                // C's (int) cast truncates toward zero; both values are ≥ -0.5 + 0.5 here.
                let xmin = ((center - support + 0.5) as i64).max(0) as usize;
                let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
                let weights: Vec<f64> =
                    (xmin..xmax).map(|x| bicubic((x as f64 - center + 0.5) / filter_scale)).collect();
                let total: f64 = weights.iter().sum();
                let fixed = weights
                    .iter()
                    .map(|&w| {
                        let w = if total != 0.0 { w / total } else { w };
                        let scaled = w * f64::from(1u32 << PRECISION_BITS);
                        (if w < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
                    })
                    .collect();
                (xmin, fixed)
            })
            .collect();
        Self { windows }
    }
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes like Pillow's BICUBIC filter.
pub fn resize_bicubic(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = image.dimensions();
    let mut current = image.clone();
    if width != in_w {
        let coeffs = Coefficients::new(in_w as usize, width as usize);
        current = RgbImage::from_fn(width, in_h, |x, y| {
            let (start, weights) = &coeffs.windows[x as usize];
            convolve(weights, |i| image.get_pixel((start + i) as u32, y).0)
        });
    }
    if height != in_h {
        let coeffs = Coefficients::new(in_h as usize, height as usize);
        let source = current;
        current = RgbImage::from_fn(width, height, |x, y| {
            let (start, weights) = &coeffs.windows[y as usize];
            convolve(weights, |i| source.get_pixel(x, (start + i) as u32).0)
        });
    }
    current
}

fn convolve(weights: &[i32], pixel: impl Fn(usize) -> [u8; 3]) -> image::Rgb<u8> {
    let rounding = 1i64 << (PRECISION_BITS - 1);
    let mut acc = [rounding; 3];
    for (i, &w) in weights.iter().enumerate() {
        let p = pixel(i);
        for c in 0..3 {
            acc[c] += i64::from(p[c]) * i64::from(w);
        }
    }
    image::Rgb(acc.map(clip8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_kernel_matches_keys_values() {
        // Keys (a = -0.5): k(0) = 1, k(1) = 0, k(0.5) = 0.5625, k(1.5) = -0.0625, k(2) = 0.
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert!((bicubic(0.5) - 0.5625).abs() < 1e-12);
        assert!((bicubic(-1.5) + 0.0625).abs() < 1e-12);
        assert_eq!(bicubic(2.0), 0.0);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([200, 10, 99]));
        let out = resize_bicubic(&img, 11, 50);
        assert!(out.pixels().all(|p| p.0 == [200, 10, 99]));
    }

    #[test]
    fn halving_a_two_pixel_edge_averages_it() {
        // 2 → 1 pixels: scale 2, support 4, window [0, 2) with equal weights → (0 + 255) / 2 rounded = 128.
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(1, 0, image::Rgb([255, 255, 255]));
        assert_eq!(resize_bicubic(&img, 1, 1).get_pixel(0, 0).0, [128, 128, 128]);
    }
}
