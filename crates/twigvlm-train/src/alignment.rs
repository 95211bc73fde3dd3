//! LLaVA's two language-side stages on one objective, next-token cross-entropy on the
//! assistant's answers only:
//! - stage 1 (feature alignment): only the projector trains, mapping a frozen vision tower's
//!   features into a frozen language model's embedding space;
//! - stage 2 (visual instruction tuning): the projector and the language model's top layers train
//!   together.
//!
//! The vision tower runs on the inner backend (no graph). The language model's frozen layers are
//! in the graph (gradients flow through them to the projector) but have no trainable parameters;
//! the tuned top layers are trainable copies held by [`AlignedParts`], and the frozen model's own
//! copies of them are never run.

use std::collections::BTreeMap;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use twigvlm_backbone::chat_template::ChatTemplate;
use twigvlm_backbone::clip::ClipVisionTower;
use twigvlm_backbone::config::FeatureSelect;
use twigvlm_backbone::llava::embed_with_image;
use twigvlm_backbone::projector::Projector;
use twigvlm_backbone::weights::{hf_tensors, NamedTensor};
use twigvlm_backbone::llama::forward_stack;
use twigvlm_backbone::{AttentionProbe, DecoderLayer, KvCache};
use twigvlm_backbone::{ImagePreprocessor, LlamaDecoder, PromptTokenizer};
use twigvlm_data::{Conversation, ShapesDataset};

use crate::error::{Result, TrainError};
use crate::loss::weighted_cross_entropy;
use crate::trainable::trainable;
use crate::trainer::Objective;

/// What the language-side stages train: the projector and, in stage 2, the language model's top
/// `lm_layers.len()` layers.
#[derive(Module, Debug)]
pub struct AlignedParts<B: Backend> {
    pub projector: Projector<B>,
    pub lm_layers: Vec<DecoderLayer<B>>,
    /// Index in the language model of the first tuned layer.
    #[module(skip)]
    pub first_tuned_layer: usize,
}

impl<B: AutodiffBackend> AlignedParts<B> {
    /// Trainable copies of `language_model`'s top `tuned_layers` layers beside `projector`.
    pub fn new(projector: Projector<B>, language_model: &LlamaDecoder<B>, tuned_layers: usize) -> Result<Self> {
        let total = language_model.num_layers();
        if tuned_layers > total {
            return Err(TrainError::Config(format!("cannot tune {tuned_layers} layers of a {total}-layer language model")));
        }
        let first_tuned_layer = total - tuned_layers;
        let lm_layers = language_model.layers[first_tuned_layer..].iter().map(|layer| trainable(layer.clone())).collect();
        Ok(Self { projector, lm_layers, first_tuned_layer })
    }
}

impl<B: Backend> AlignedParts<B> {
    /// The tuned layers under the language model's checkpoint names (`{decoder_prefix}.layers.{i}.…`),
    /// so that listing them after the pretrained weights replaces those layers.
    pub fn tuned_layer_tensors(&self, decoder_prefix: &str) -> Vec<NamedTensor> {
        let rename = |burn_path: &str| {
            let (offset, rest) = burn_path.split_once('.').expect("a tuned layer's parameter path starts with its index");
            let offset: usize = offset.parse().expect("a tuned layer index");
            format!("{decoder_prefix}.layers.{}.{rest}", self.first_tuned_layer + offset)
        };
        hf_tensors(&self.lm_layers, &rename)
    }
}

/// The frozen parts and the data of a language-side run.
pub struct AlignmentObjective<B: AutodiffBackend> {
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

impl<B: AutodiffBackend> AlignmentObjective<B> {
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
        parts: &AlignedParts<C>,
        features: Tensor<C, 3>,
        encoded: &Encoded,
        device: &C::Device,
    ) -> (Tensor<C, 2>, Vec<i64>) {
        let embeds = embed_with_image(language_model, &encoded.prompt, Some(parts.projector.forward(features)), device);
        let positions: Vec<usize> = (0..encoded.prompt.len()).collect();
        let rope = language_model.rope(&positions, device);
        let first_tuned = parts.first_tuned_layer;
        let mut cache = KvCache::new(language_model.num_layers());
        let probe = AttentionProbe::default();
        let hidden = language_model.forward_layers(embeds, &rope, 0..first_tuned, &mut cache, &probe).hidden;
        let hidden = forward_stack(&parts.lm_layers, first_tuned, hidden, &rope, &mut cache, &probe).hidden;
        let rows: Vec<i32> = encoded.targets.iter().map(|&(p, _)| p as i32).collect();
        let index = Tensor::<C, 1, Int>::from_data(TensorData::new(rows, [encoded.targets.len()]), device);
        let logits = language_model.logits(hidden.select(1, index));
        let [_, n, vocab] = logits.dims();
        (logits.reshape([n, vocab]), encoded.targets.iter().map(|&(_, id)| id as i64).collect())
    }
}

impl<B: AutodiffBackend> Objective<B> for AlignmentObjective<B> {
    type Model = AlignedParts<B>;

    fn loss(&mut self, parts: &AlignedParts<B>, step: usize) -> Result<(Tensor<B, 1>, usize)> {
        let mut losses = Vec::new();
        let mut tokens = 0;
        for b in 0..self.batch_size {
            let index = (step * self.batch_size + b) % self.train.len.max(1);
            let conversation = self.train.get(index);
            let features = Tensor::<B, 3>::from_inner(self.features(&conversation)?);
            let encoded = self.encode(&conversation, features.dims()[1])?;
            let (logits, targets) = Self::target_logits(&self.language_model, parts, features, &encoded, &self.device);
            let weights = vec![1.0; targets.len()];
            losses.push(weighted_cross_entropy(logits, &targets, &weights).mul_scalar(targets.len() as f64));
            tokens += targets.len();
        }
        let total = Tensor::cat(losses, 0).sum().div_scalar(tokens.max(1) as f64);
        Ok((total, tokens))
    }

    /// Teacher-forced exact match per task (every answer token the argmax = what greedy decoding
    /// gives), one question per held-out image.
    fn evaluate(&mut self, parts: &AlignedParts<B>) -> Result<Vec<(String, f64)>> {
        let (parts, language_model) = (parts.valid(), self.language_model.valid());
        let mut tally: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for index in 0..self.eval.len {
            let conversation = self.eval.get(index);
            let features = self.features(&conversation)?;
            let encoded = self.encode(&conversation, features.dims()[1])?;
            let (logits, targets) = Self::target_logits(&language_model, &parts, features, &encoded, &self.device);
            let predicted = logits.argmax(1).into_data().convert::<i64>().into_vec::<i64>().expect("int argmax");
            let entry = tally.entry(conversation.turns[0].task_name().to_string()).or_default();
            entry.0 += (predicted == targets) as usize;
            entry.1 += 1;
        }
        Ok(tally.into_iter().map(|(task, (right, n))| (format!("{task}_acc"), right as f64 / n.max(1) as f64)).collect())
    }
}
