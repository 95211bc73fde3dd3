//! Twig training: the base VLM is frozen and runs on the inner backend (no graph, no gradients,
//! no optimizer state); its hidden states entering layer K are handed to the twig, the only
//! trained module. Next-token cross-entropy on assistant tokens, with either the dataset's
//! answers or the base model's own teacher-forced argmax as targets (self-distillation: what
//! speculative decoding needs the twig to agree with).

use burn::module::AutodiffModule;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use twigvlm_backbone::llava::embed_with_image;
use twigvlm_backbone::llama::RopeAngles;
use twigvlm_backbone::projector::Projector;
use twigvlm_backbone::{AttentionProbe, ImagePreprocessor, KvCache, LlamaDecoder, LlavaModel};
use twigvlm_data::{Conversation, Dataset};
use twigvlm_twig::{Twig, TwigMlp};

use crate::error::{Result, TrainError};
use crate::examples::{single_sequence, ConversationEncoder, Encoded, VisualInput};
use crate::loss::TokenMeanLoss;
use crate::metrics::{argmax_ids, TaskAccuracy};
use crate::trainable::trainable;
use crate::trainer::Objective;

/// The twig ready to train: every parameter requires gradients except the blocks' MLPs when its
/// config keeps them frozen (`TwigMlp::Frozen`: they get no gradient and no optimizer state, and
/// stay the base layers' copies).
pub fn trainable_twig<B: AutodiffBackend>(twig: Twig<B>) -> Twig<B> {
    let mut twig = trainable(twig);
    if twig.config.mlp == TwigMlp::Frozen {
        for layer in &mut twig.layers {
            layer.mlp = layer.mlp.clone().no_grad();
        }
    }
    twig
}

/// What the twig learns to predict at each assistant position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TwigTargets {
    /// The dataset's answer tokens (the paper's recipe).
    #[default]
    Data,
    /// The base model's argmax given the same prefix (self-distillation).
    Base,
}

/// The frozen base VLM on the inner backend and the data.
pub struct TwigObjective<B: AutodiffBackend> {
    pub visual: VisualInput<B::InnerBackend>,
    pub projector: Projector<B::InnerBackend>,
    pub language_model: LlamaDecoder<B::InnerBackend>,
    /// The base head in the graph (frozen), for a twig that shares it.
    pub base_head: Linear<B>,
    pub encoder: ConversationEncoder,
    pub targets: TwigTargets,
    pub train: Dataset,
    pub eval: Dataset,
    pub batch_size: usize,
    pub device: B::Device,
}

/// One example run through the frozen base up to layer K.
struct Prefix<B: Backend> {
    encoded: Encoded,
    /// Hidden states entering layer K `[1, seq, hidden]`.
    hidden_k: Tensor<B, 3>,
    positions: Vec<usize>,
    /// The base model's argmax at each target position (only computed when needed).
    base_argmax: Option<Vec<i64>>,
}

impl<B: AutodiffBackend> TwigObjective<B> {
    pub fn new(
        base: LlavaModel<B::InnerBackend>,
        preprocessor: ImagePreprocessor,
        encoder: ConversationEncoder,
        targets: TwigTargets,
        (train, eval): (Dataset, Dataset),
        batch_size: usize,
        device: B::Device,
    ) -> Self {
        let LlavaModel { vision_tower, projector, language_model, feature_select } = base;
        let visual = VisualInput { vision: vision_tower, feature_select, preprocessor };
        let base_head = Linear::from_inner(language_model.lm_head.clone());
        Self { visual, projector, language_model, base_head, encoder, targets, train, eval, batch_size, device }
    }

    fn prefix(&self, conversation: &Conversation, k: usize, with_argmax: bool) -> Result<Prefix<B::InnerBackend>> {
        let features = self.visual.features(conversation, &self.device)?;
        let visual_tokens = features.as_ref().map_or(0, |f| f.dims()[1]);
        let encoded = self.encoder.encode(conversation, visual_tokens)?;
        let lm = &self.language_model;
        let embeds = embed_with_image(lm, &encoded.prompt, features.map(|f| self.projector.forward(f)), &self.device);
        let positions: Vec<usize> = (0..encoded.prompt.len()).collect();
        let rope = lm.rope(&positions, &self.device);
        let mut cache = KvCache::new(lm.num_layers());
        let probe = AttentionProbe::default();
        let hidden_k = lm.forward_layers(embeds, &rope, 0..k, &mut cache, &probe).hidden;
        let base_argmax = with_argmax.then(|| {
            let last = lm.forward_layers(hidden_k.clone(), &rope, k..lm.num_layers(), &mut cache, &probe).hidden;
            argmax_ids(single_sequence(lm.logits(last.select(1, encoded.target_rows(&self.device)))))
        });
        Ok(Prefix { encoded, hidden_k, positions, base_argmax })
    }

    /// Twig logits `[targets, vocab]` at the target positions.
    fn twig_logits<C: Backend>(twig: &Twig<C>, head: &Linear<C>, hidden_k: Tensor<C, 3>, rope: &RopeAngles<C>, encoded: &Encoded, device: &C::Device) -> Tensor<C, 2> {
        let hidden = twig.forward(hidden_k, rope, &mut twig.new_cache(), &AttentionProbe::default()).hidden;
        single_sequence(twig.logits(hidden.select(1, encoded.target_rows(device)), head))
    }
}

impl<B: AutodiffBackend> Objective<B> for TwigObjective<B> {
    type Model = Twig<B>;

    fn loss(&mut self, twig: &Twig<B>, step: usize) -> Result<(Tensor<B, 1>, usize)> {
        let mut loss = TokenMeanLoss::new();
        for b in 0..self.batch_size {
            let index = (step * self.batch_size + b) % self.train.len().max(1);
            let mut prefix = self.prefix(&self.train.get(index), twig.config.k, self.targets == TwigTargets::Base)?;
            let targets = prefix.base_argmax.take().unwrap_or_else(|| prefix.encoded.target_ids());
            let rope = RopeAngles::new(&prefix.positions, self.language_model.head_dim, self.language_model.rope_theta, &self.device);
            let hidden_k = Tensor::<B, 3>::from_inner(prefix.hidden_k);
            loss.add(Self::twig_logits(twig, &self.base_head, hidden_k, &rope, &prefix.encoded, &self.device), &targets);
        }
        loss.finish().ok_or_else(|| TrainError::Config(format!("step {step}: no assistant tokens in the batch")))
    }

    /// Teacher-forced, on held-out conversations: `agreement` = share of assistant positions where
    /// the twig's argmax equals the base's (what speculative decoding accepts); `{task}_acc` =
    /// share of answers the twig alone gets entirely right.
    fn evaluate(&mut self, twig: &Twig<B>) -> Result<Vec<(String, f64)>> {
        let twig = twig.valid();
        let (mut agree, mut positions) = (0usize, 0usize);
        let mut accuracy = TaskAccuracy::default();
        for index in 0..self.eval.len() {
            let conversation = self.eval.get(index);
            let prefix = self.prefix(&conversation, twig.config.k, true)?;
            let lm = &self.language_model;
            let rope = lm.rope(&prefix.positions, &self.device);
            let logits = Self::twig_logits(&twig, &lm.lm_head, prefix.hidden_k, &rope, &prefix.encoded, &self.device);
            let predicted = argmax_ids(logits);
            let base = prefix.base_argmax.expect("computed for evaluation");
            agree += predicted.iter().zip(&base).filter(|(a, b)| a == b).count();
            positions += predicted.len();
            accuracy.record(conversation.turns[0].task_name(), predicted == prefix.encoded.target_ids());
        }
        let mut metrics = vec![("agreement".to_string(), agree as f64 / positions.max(1) as f64)];
        metrics.extend(accuracy.into_metrics());
        Ok(metrics)
    }
}
