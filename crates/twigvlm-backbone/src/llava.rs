//! The LLaVA model: vision tower → projector → visual tokens spliced into the Llama input.

use burn::prelude::*;

use crate::clip::ClipVisionTower;
use crate::config::FeatureSelect;
use crate::llama::LlamaDecoder;
use crate::ops::DecodeOps;
use crate::projector::Projector;
use crate::prompt::PromptTokens;

#[derive(Module, Debug)]
pub struct LlavaModel<B: Backend> {
    pub vision_tower: ClipVisionTower<B>,
    pub projector: Projector<B>,
    pub language_model: LlamaDecoder<B>,
    #[module(skip)]
    pub feature_select: FeatureSelect,
}

impl<B: DecodeOps> LlavaModel<B> {
    /// The selected vision hidden state (CLS dropped unless the config keeps it).
    ///
    /// # Shapes
    /// - pixels: `[batch, 3, size, size]` → `[batch, visual_tokens, vision_hidden]`
    pub fn vision_features(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        self.feature_select.select(self.vision_tower.forward(pixels))
    }

    /// Visual tokens in the language model's embedding space.
    ///
    /// # Shapes
    /// - pixels: `[batch, 3, size, size]` → `[batch, visual_tokens, text_hidden]`
    pub fn image_features(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        self.projector.forward(self.vision_features(pixels))
    }

    /// Input embeddings of a prompt, the image span filled with `image_features` `[1, n, hidden]`.
    ///
    /// # Shapes
    /// - output: `[1, prompt_len, hidden]`
    pub fn embed_prompt(
        &self,
        prompt: &PromptTokens,
        image_features: Option<Tensor<B, 3>>,
        device: &B::Device,
    ) -> Tensor<B, 3> {
        embed_with_image(&self.language_model, prompt, image_features, device)
    }
}

/// A prompt's token embeddings with the image span replaced by `image_features` `[1, n, hidden]`
/// (shared by inference and by training, where the features come from a projector being trained).
///
/// # Shapes
/// - output: `[1, prompt_len, hidden]`
pub fn embed_with_image<B: DecodeOps>(
    language_model: &LlamaDecoder<B>,
    prompt: &PromptTokens,
    image_features: Option<Tensor<B, 3>>,
    device: &B::Device,
) -> Tensor<B, 3> {
    let text_ids: Vec<i32> = prompt
        .ids
        .iter()
        .enumerate()
        .map(|(i, &id)| if prompt.image_span.as_ref().is_some_and(|s| s.contains(&i)) { 0 } else { id as i32 })
        .collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(text_ids, [1, prompt.len()]), device);
    let embeds = language_model.embed(ids);
    match (&prompt.image_span, image_features) {
        (Some(span), Some(features)) => {
            let hidden = embeds.dims()[2];
            let before = embeds.clone().narrow(1, 0, span.start);
            let after = embeds.narrow(1, span.end, prompt.len() - span.end);
            debug_assert_eq!(features.dims(), [1, span.len(), hidden]);
            Tensor::cat(vec![before, features, after], 1)
        }
        _ => embeds,
    }
}

impl FeatureSelect {
    /// The visual tokens of a vision hidden state `[batch, 1 + patches, d]`.
    pub fn select<B: DecodeOps>(self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match self {
            FeatureSelect::Patches => {
                let positions = hidden.dims()[1];
                hidden.narrow(1, 1, positions - 1)
            }
            FeatureSelect::ClsAndPatches => hidden,
        }
    }
}
