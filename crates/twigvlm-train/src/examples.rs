//! Turning a conversation into what a language-side objective trains on: the prompt tokens with
//! the positions whose next token is an assistant answer token, and the image's visual features.
//! Shared by LLaVA stages 1–2 and the twig.

use burn::prelude::*;
use twigvlm_backbone::chat_template::ChatTemplate;
use twigvlm_backbone::clip::ClipVisionTower;
use twigvlm_backbone::config::FeatureSelect;
use twigvlm_backbone::{ImagePreprocessor, PromptTokenizer, PromptTokens};
use twigvlm_data::Conversation;

use crate::error::Result;
use twigvlm_backbone::ops::DecodeOps;

/// A conversation as tokens, with the positions whose next token is trained.
pub struct Encoded {
    pub prompt: PromptTokens,
    /// (position, next token) pairs.
    pub targets: Vec<(usize, u32)>,
}

impl Encoded {
    /// The target positions as an index tensor.
    pub fn target_rows<B: DecodeOps>(&self, device: &B::Device) -> Tensor<B, 1, Int> {
        let rows: Vec<i32> = self.targets.iter().map(|&(p, _)| p as i32).collect();
        Tensor::from_data(TensorData::new(rows, [self.targets.len()]), device)
    }

    pub fn target_ids(&self) -> Vec<i64> {
        self.targets.iter().map(|&(_, id)| id as i64).collect()
    }
}

/// One sequence's logits `[1, rows, vocab]` as `[rows, vocab]`, the shape the losses take.
pub fn single_sequence<B: DecodeOps>(logits: Tensor<B, 3>) -> Tensor<B, 2> {
    let [_, rows, vocab] = logits.dims();
    logits.reshape([rows, vocab])
}

/// Renders conversations with the model's chat template and tokenizes them.
pub struct ConversationEncoder {
    pub tokenizer: PromptTokenizer,
    pub template: ChatTemplate,
    /// System message of every training conversation (None: the template's default).
    pub system: Option<String>,
}

impl ConversationEncoder {
    pub fn encode(&self, conversation: &Conversation, visual_tokens: usize) -> Result<Encoded> {
        let turns: Vec<(String, String)> =
            conversation.turns.iter().map(|t| (t.user.clone(), t.assistant.clone())).collect();
        let segments = self.template.training_segments(self.system.as_deref(), &turns, conversation.image.is_some())?;
        let (prompt, trained) = self.tokenizer.encode_segments(&segments, visual_tokens)?;
        let targets = (1..prompt.len()).filter(|&t| trained[t]).map(|t| (t - 1, prompt.ids[t])).collect();
        Ok(Encoded { prompt, targets })
    }
}

/// The frozen vision tower and its input pipeline.
pub struct VisualInput<B: Backend> {
    pub vision: ClipVisionTower<B>,
    pub feature_select: FeatureSelect,
    pub preprocessor: ImagePreprocessor,
}

impl<B: DecodeOps> VisualInput<B> {
    /// Visual features `[1, tokens, vision_hidden]` of a conversation's image (None: text only).
    pub fn features(&self, conversation: &Conversation, device: &B::Device) -> Result<Option<Tensor<B, 3>>> {
        let Some(image) = conversation.image.as_ref() else { return Ok(None) };
        self.image_features(&image.load()?, device).map(Some)
    }

    /// Visual features `[1, tokens, vision_hidden]` of one image.
    pub fn image_features(&self, image: &image::DynamicImage, device: &B::Device) -> Result<Tensor<B, 3>> {
        let (values, shape) = self.preprocessor.preprocess(image)?;
        let pixels = Tensor::<B, 3>::from_data(TensorData::new(values, shape), device).unsqueeze::<4>();
        Ok(self.feature_select.select(self.vision.forward(pixels)))
    }
}
