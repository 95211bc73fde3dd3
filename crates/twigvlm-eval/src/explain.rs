//! Drawing what each policy looks at ([`twigvlm_engine::explain`]): the model's input image once
//! per policy with that policy's attention over the patches as a heat map and the kept patches
//! outlined, side by side, so a user sees at a glance whether the twig's selection is sensible.

use std::path::Path;

use image::{Rgb, RgbImage};
use twigvlm_engine::explain::Explanation;

use crate::plot::{save_png, write_text};

/// Smallest side a panel is drawn at (patches are scaled up by a whole factor to reach it).
const MIN_PANEL_SIDE: u32 = 336;
const GAP: u32 = 16;
const TITLE_BAND: u32 = 36;
/// Heat colour and its opacity at the highest score.
const HEAT: Rgb<u8> = Rgb([255, 40, 0]);
const HEAT_OPACITY: f32 = 0.65;
const KEPT_OUTLINE: Rgb<u8> = Rgb([0, 230, 60]);
const OUTLINE_PX: u32 = 2;

/// Draws the panels side by side and writes a PNG (titles need a system font; without one the
/// panels are drawn untitled).
pub fn render(explanation: &Explanation, path: &Path) -> anyhow::Result<()> {
    let canvas = draw(explanation);
    let (width, height) = canvas.dimensions();
    save_png(path, (width, height), canvas.into_raw())
}

/// The panels side by side: each policy's scores as a heat map over the image, its kept patches
/// outlined, its title above.
pub fn draw(explanation: &Explanation) -> RgbImage {
    let input = &explanation.input;
    let factor = MIN_PANEL_SIDE.div_ceil(input.width().max(1)).max(1);
    let side = input.width() * factor;
    let count = explanation.panels.len() as u32;
    let (width, height) = (count * side + (count + 1) * GAP, side + TITLE_BAND + GAP);
    let mut canvas = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let per_side = explanation.patches_per_side as u32;
    let patch_px = side as f32 / per_side as f32;
    let patch_of = |x: u32, y: u32| {
        ((y as f32 / patch_px) as u32).min(per_side - 1) * per_side + ((x as f32 / patch_px) as u32).min(per_side - 1)
    };
    for (index, panel) in explanation.panels.iter().enumerate() {
        let (left, top) = (GAP + index as u32 * (side + GAP), TITLE_BAND);
        let peak = panel.scores.iter().copied().fold(f32::MIN_POSITIVE, f32::max);
        for y in 0..side {
            for x in 0..side {
                let patch = patch_of(x, y) as usize;
                let pixel = input.get_pixel(x / factor, (y / factor).min(input.height() - 1));
                let heat = HEAT_OPACITY * (panel.scores.get(patch).copied().unwrap_or(0.0) / peak).clamp(0.0, 1.0);
                let blended =
                    Rgb(std::array::from_fn(|c| (pixel[c] as f32 * (1.0 - heat) + HEAT[c] as f32 * heat) as u8));
                let (px, py) = (
                    x as f32 - (patch % per_side as usize) as f32 * patch_px,
                    y as f32 - (patch / per_side as usize) as f32 * patch_px,
                );
                let on_border = px < OUTLINE_PX as f32
                    || py < OUTLINE_PX as f32
                    || px >= patch_px - OUTLINE_PX as f32
                    || py >= patch_px - OUTLINE_PX as f32;
                let colour = if on_border && panel.kept.binary_search(&patch).is_ok() { KEPT_OUTLINE } else { blended };
                canvas.put_pixel(left + x, top + y, colour);
            }
        }
    }
    let (width, height) = canvas.dimensions();
    let mut buffer = canvas.into_raw();
    let titles: Vec<(String, (i32, i32))> = explanation
        .panels
        .iter()
        .enumerate()
        .map(|(i, p)| (p.title.clone(), ((GAP + i as u32 * (side + GAP)) as i32, (GAP / 2) as i32)))
        .collect();
    if let Err(e) = write_text(&mut buffer, (width, height), &titles) {
        tracing::warn!("explain image without titles: {e:#}");
    }
    RgbImage::from_raw(width, height, buffer).expect("the buffer keeps its size")
}
