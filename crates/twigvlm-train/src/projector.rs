//! LLaVA stage 1 (feature alignment): the projector learns to map a frozen vision tower's features
//! into a frozen language model's embedding space, with next-token cross-entropy on the
//! assistant's answers only. The vision tower runs on the inner backend (no graph); the language
//! model is in the graph (gradients flow through it to the projector) but has no trainable
//! parameters.

use std::collections::BTreeMap;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use twigvlm_backbone::chat_template::ChatTemplate;
use twigvlm_backbone::clip::ClipVisionTower;
use twigvlm_backbone::config::FeatureSelect;
use twigvlm_backbone::llava::embed_with_image;
use twigvlm_backbone::projector::Projector;
use twigvlm_backbone::{ImagePreprocessor, LlamaDecoder, PromptTokenizer};
use twigvlm_backbone::{AttentionProbe, KvCache};
use twigvlm_data::{Conversation, ShapesDataset};

use crate::error::Result;
use crate::loss::weighted_cross_entropy;
use crate::trainer::Objective;

/// The frozen parts and the data of a projector run.
pub struct ProjectorObjective<B: AutodiffBackend> {
    pub vision: ClipVisionTower<B::InnerBackend>,
    pub feature_select: FeatureSelect,
    pub language_model: LlamaDecoder<B>,
    pub tokenizer: PromptTokenizer,
    pub template: ChatTemplate,
    /// System message of every training conversation (None: the template's default).
    pub system: Option<String>,
    pub preprocessor: ImagePreprocessor,
    pub train: ShapesDataset,
    pub eval: ShapesDataset,
    pub batch_size: usize,
    pub device: B::Device,
}

/// A conversation as tokens, with the positions whose next token is trained.
struct Encoded {
    prompt: twigvlm_backbone::PromptTokens,
    /// (position, next token) pairs.
    targets: Vec<(usize, u32)>,
}

impl<B: AutodiffBackend> ProjectorObjective<B> {
    fn encode(&self, conversation: &Conversation, visual_tokens: usize) -> Result<Encoded> {
        let turns: Vec<(String, String)> = conversation.turns.iter().map(|t| (t.user.clone(), t.assistant.clone())).collect();
        let segments = self.template.training_segments(self.system.as_deref(), &turns, conversation.image.is_some())?;
        let (prompt, trained) = self.tokenizer.encode_segments(&segments, visual_tokens)?;
        let targets = (1..prompt.len()).filter(|&t| trained[t]).map(|t| (t - 1, prompt.ids[t])).collect();
        Ok(Encoded { prompt, targets })
    }

    /// Visual features of a conversation's image, computed without a graph.
    fn features(&self, conversation: &Conversation) -> Result<Tensor<B::InnerBackend, 3>> {
        let image = conversation.image.as_ref().expect("shapes examples have images").load()?;
        let (values, shape) = self.preprocessor.preprocess(&image);
        let pixels = Tensor::<B::InnerBackend, 3>::from_data(TensorData::new(values, shape), &self.device).unsqueeze::<4>();
        Ok(self.feature_select.select(self.vision.forward(pixels)))
    }

    /// Logits at the target positions `[targets, vocab]` and the target ids.
    fn target_logits<C: Backend>(
        language_model: &LlamaDecoder<C>,
        projector: &Projector<C>,
        features: Tensor<C, 3>,
        encoded: &Encoded,
        device: &C::Device,
    ) -> (Tensor<C, 2>, Vec<i64>) {
        let embeds = embed_with_image(language_model, &encoded.prompt, Some(projector.forward(features)), device);
        let positions: Vec<usize> = (0..encoded.prompt.len()).collect();
        let mut cache = KvCache::new(language_model.num_layers());
        let hidden = language_model
            .forward_layers(embeds, &language_model.rope(&positions, device), 0..language_model.num_layers(), &mut cache, &AttentionProbe::default())
            .hidden;
        let rows: Vec<i32> = encoded.targets.iter().map(|&(p, _)| p as i32).collect();
        let index = Tensor::<C, 1, Int>::from_data(TensorData::new(rows, [encoded.targets.len()]), device);
        let logits = language_model.logits(hidden.select(1, index));
        let [_, n, vocab] = logits.dims();
        (logits.reshape([n, vocab]), encoded.targets.iter().map(|&(_, id)| id as i64).collect())
    }
}

impl<B: AutodiffBackend> Objective<B> for ProjectorObjective<B> {
    type Model = Projector<B>;

    fn loss(&mut self, projector: &Projector<B>, step: usize) -> Result<(Tensor<B, 1>, usize)> {
        let mut losses = Vec::new();
        let mut tokens = 0;
        for b in 0..self.batch_size {
            let index = (step * self.batch_size + b) % self.train.len.max(1);
            let conversation = self.train.get(index);
            let features = Tensor::<B, 3>::from_inner(self.features(&conversation)?);
            let encoded = self.encode(&conversation, features.dims()[1])?;
            let (logits, targets) = Self::target_logits(&self.language_model, projector, features, &encoded, &self.device);
            let weights = vec![1.0; targets.len()];
            losses.push(weighted_cross_entropy(logits, &targets, &weights).mul_scalar(targets.len() as f64));
            tokens += targets.len();
        }
        let total = Tensor::cat(losses, 0).sum().div_scalar(tokens.max(1) as f64);
        Ok((total, tokens))
    }

    /// Teacher-forced exact match per task (every answer token the argmax = what greedy decoding
    /// gives), one question per held-out image.
    fn evaluate(&mut self, projector: &Projector<B>) -> Result<Vec<(String, f64)>> {
        let (projector, language_model) = (projector.valid(), self.language_model.valid());
        let mut tally: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for index in 0..self.eval.len {
            let conversation = self.eval.get(index);
            let features = self.features(&conversation)?;
            let encoded = self.encode(&conversation, features.dims()[1])?;
            let (logits, targets) = Self::target_logits(&language_model, &projector, features, &encoded, &self.device);
            let predicted = logits.argmax(1).into_data().convert::<i64>().into_vec::<i64>().expect("int argmax");
            let entry = tally.entry(conversation.turns[0].task_name().to_string()).or_default();
            entry.0 += (predicted == targets) as usize;
            entry.1 += 1;
        }
        Ok(tally.into_iter().map(|(task, (right, n))| (format!("{task}_acc"), right as f64 / n.max(1) as f64)).collect())
    }
}
