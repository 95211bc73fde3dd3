//! `explain`: what each policy looks at. The model's input image is drawn once per policy with
//! that policy's attention over the patches as a heat map and the kept patches outlined, side by
//! side, so a user sees at a glance whether the twig's selection is sensible.

use std::path::Path;

use anyhow::Context;
use burn::prelude::Backend;
use image::{DynamicImage, Rgb, RgbImage};
use twigvlm_backbone::config::FeatureSelect;
use twigvlm_ttp::{PrefillPolicy, PruningSpec, VisualBudget};

use crate::engine::Engine;
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

/// One policy's view of the image.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    /// One score per patch, row-major.
    pub scores: Vec<f32>,
    /// Kept patches, row-major indices.
    pub kept: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct Explanation {
    /// The image as the vision tower saw it (after resizing and cropping).
    pub input: RgbImage,
    pub patches_per_side: usize,
    pub panels: Vec<Panel>,
}

/// Runs each named policy's prefill on `prompt` about `image` and collects its selection.
pub fn explain<B: Backend>(
    engine: &Engine<B>,
    prompt: &str,
    image: &DynamicImage,
    policies: &[(String, PruningSpec)],
) -> anyhow::Result<Explanation> {
    let config = &engine.llava.config;
    // The CLS position, when the model keeps it, is not a patch.
    let first_patch = match config.feature_select {
        FeatureSelect::Patches => 0,
        FeatureSelect::ClsAndPatches => 1,
    };
    // The vision tower runs once; every policy prefills the same embeddings.
    let encoded = engine.encode(&prompt.into(), Some(image), true)?;
    let mut panels = Vec::with_capacity(policies.len());
    for (title, spec) in policies {
        let outcome = engine.select_visual_tokens(&encoded, spec)?.with_context(|| {
            format!(
                "the {} policy pruned nothing: give a --visual-budget below the image's {} visual tokens",
                spec.policy,
                config.visual_tokens_per_image()
            )
        })?;
        panels.push(Panel {
            title: format!(
                "{title}: {} of {} kept, {:.1} per layer on average",
                outcome.r_prime, outcome.visual_tokens, outcome.avg_visual_tokens
            ),
            scores: outcome.visual_scores[first_patch..].to_vec(),
            kept: outcome.kept_visual_indices.iter().filter_map(|&i| i.checked_sub(first_patch)).collect(),
        });
    }
    let (values, shape) = encoded.pixel_values.as_ref().expect("captured above");
    Ok(Explanation {
        input: model_input(&engine.llava.preprocessor, values, *shape),
        patches_per_side: config.vision.patches_per_side(),
        panels,
    })
}

/// Undoes normalisation and rescaling of `[3, h, w]` pixel values.
fn model_input(
    pre: &twigvlm_backbone::preprocess::ImagePreprocessor,
    values: &[f32],
    [_, height, width]: [usize; 3],
) -> RgbImage {
    let (mean, std) = pre.normalize.unwrap_or(([0.0; 3], [1.0; 3]));
    let rescale = pre.rescale_factor.unwrap_or(1.0) as f32;
    RgbImage::from_fn(width as u32, height as u32, |x, y| {
        let at = |c: usize| values[(c * height + y as usize) * width + x as usize];
        Rgb(std::array::from_fn(|c| ((at(c) * std[c] + mean[c]) / rescale).round().clamp(0.0, 255.0) as u8))
    })
}

/// One labelled spec per pruning policy (`none` skipped), all at `budget`; FastV has no
/// FinalWipe, the others take `final_wipe` (None: their default).
pub fn policy_specs(
    policies: &[PrefillPolicy],
    budget: VisualBudget,
    final_wipe: Option<usize>,
) -> Vec<(String, PruningSpec)> {
    policies
        .iter()
        .filter(|&&p| p != PrefillPolicy::None)
        .map(|&policy| {
            let final_wipe = (policy != PrefillPolicy::FastV).then_some(final_wipe).flatten();
            (policy.to_string(), PruningSpec { policy, budget: Some(budget), final_wipe })
        })
        .collect()
}

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
