//! What each pruning policy looks at: for one prompt about one image, every policy's score of
//! each image patch and the patches it keeps, beside the image as the vision tower saw it. The
//! evaluation tools and the server draw it as heat maps.

use image::{DynamicImage, Rgb, RgbImage};
use twigvlm_backbone::config::FeatureSelect;
use twigvlm_backbone::Interrupt;
use twigvlm_ttp::{PrefillPolicy, PruningSpec, VisualBudget};

use crate::engine::Engine;
use crate::error::{RequestError, Result};
use twigvlm_backbone::ops::DecodeOps;

/// One policy's view of the image.
#[derive(Debug, Clone)]
pub struct Panel {
    /// The policy, and what it kept.
    pub title: String,
    /// One score per patch, row-major.
    pub scores: Vec<f32>,
    /// Kept patches, row-major indices.
    pub kept: Vec<usize>,
}

/// Every policy's view of one image.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The image as the vision tower saw it (after resizing and cropping).
    pub input: RgbImage,
    /// The vision tower's patches per side of `input`.
    pub patches_per_side: usize,
    /// One per policy, in the order asked.
    pub panels: Vec<Panel>,
}

/// Runs each named policy's prefill on `prompt` about `image` and collects its selection,
/// asking `interrupt` before each layer of each prefill chunk.
pub fn explain<B: DecodeOps>(
    engine: &Engine<B>,
    prompt: &str,
    image: &DynamicImage,
    policies: &[(String, PruningSpec)],
    interrupt: &Interrupt,
) -> Result<Explanation> {
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
        let outcome = engine.select_visual_tokens(&encoded, spec, interrupt)?.ok_or(RequestError::NothingPruned {
            policy: spec.policy,
            visual_tokens: config.visual_tokens_per_image(),
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
