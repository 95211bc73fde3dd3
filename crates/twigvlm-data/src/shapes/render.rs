//! Rasterising a scene: a tinted, noisy background and anti-aliased shapes, each inside its cell.

use image::RgbImage;
use rand::Rng;
use rand_distr::{Distribution, Normal};

use super::scene::{Scene, SceneConfig, Shape};

/// Background grey level range, per-image tint and per-pixel noise (standard deviations, 0–255).
const BACKGROUND_LEVEL: std::ops::RangeInclusive<f32> = 215.0..=240.0;
const BACKGROUND_TINT_STD: f32 = 5.0;
const PIXEL_NOISE_STD: f32 = 4.0;
/// Object size and placement, as fractions of the cell: radius, and centre jitter.
const RADIUS_FRACTION: std::ops::RangeInclusive<f32> = 0.33..=0.385;
const CENTRE_JITTER_FRACTION: f32 = 0.045;
/// Per-channel colour jitter around the nominal colour.
const COLOUR_JITTER: i32 = 12;
/// Sub-samples per pixel side for anti-aliasing.
const SUPERSAMPLE: u32 = 3;

/// Whether a point, in units of the object radius around its centre (y down), is inside the shape.
fn inside(shape: Shape, x: f32, y: f32) -> bool {
    let distance = (x * x + y * y).sqrt();
    match shape {
        Shape::Circle => distance <= 1.0,
        Shape::Square => x.abs().max(y.abs()) <= 0.8,
        Shape::Triangle => (-0.9..=0.8).contains(&y) && x.abs() <= (y + 0.9) * 0.56,
        Shape::Cross => (x.abs() <= 0.3 && y.abs() <= 1.0) || (y.abs() <= 0.3 && x.abs() <= 1.0),
        Shape::Diamond => x.abs() + y.abs() <= 1.0,
        Shape::Ring => (0.55..=1.0).contains(&distance),
    }
}

pub fn render(scene: &Scene, config: &SceneConfig, rng: &mut impl Rng) -> RgbImage {
    let size = config.image_px();
    let level = rng.random_range(BACKGROUND_LEVEL);
    let tint = Normal::new(0.0, BACKGROUND_TINT_STD).expect("positive std");
    let background: [f32; 3] = std::array::from_fn(|_| level + tint.sample(rng));
    let noise = Normal::new(0.0, PIXEL_NOISE_STD).expect("positive std");
    let mut canvas: Vec<[f32; 3]> =
        (0..size * size).map(|_| std::array::from_fn(|c| background[c] + noise.sample(rng))).collect();

    let cell = config.cell_px as f32;
    for object in &scene.objects {
        let radius = cell * rng.random_range(RADIUS_FRACTION);
        let jitter = cell * CENTRE_JITTER_FRACTION;
        let cx = (object.column as f32 + 0.5) * cell + rng.random_range(-jitter..=jitter);
        let cy = (object.row as f32 + 0.5) * cell + rng.random_range(-jitter..=jitter);
        let colour: [f32; 3] = object
            .colour
            .rgb()
            .map(|v| (v as i32 + rng.random_range(-COLOUR_JITTER..=COLOUR_JITTER)).clamp(0, 255) as f32);
        let (x0, y0) = (object.column as u32 * config.cell_px, object.row as u32 * config.cell_px);
        for py in y0..y0 + config.cell_px {
            for px in x0..x0 + config.cell_px {
                let mut hits = 0;
                for sy in 0..SUPERSAMPLE {
                    for sx in 0..SUPERSAMPLE {
                        let x = px as f32 + (sx as f32 + 0.5) / SUPERSAMPLE as f32;
                        let y = py as f32 + (sy as f32 + 0.5) / SUPERSAMPLE as f32;
                        hits += inside(object.shape, (x - cx) / radius, (y - cy) / radius) as u32;
                    }
                }
                let coverage = hits as f32 / (SUPERSAMPLE * SUPERSAMPLE) as f32;
                let pixel = &mut canvas[(py * size + px) as usize];
                for c in 0..3 {
                    pixel[c] = pixel[c] * (1.0 - coverage) + colour[c] * coverage;
                }
            }
        }
    }
    RgbImage::from_fn(size, size, |x, y| {
        image::Rgb(canvas[(y * size + x) as usize].map(|v| v.round().clamp(0.0, 255.0) as u8))
    })
}
