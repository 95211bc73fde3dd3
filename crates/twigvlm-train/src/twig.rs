//! Twig training: the base VLM is frozen and runs on the inner backend (no graph, no gradients,
//! no optimizer state); its hidden states entering layer K are handed to the twig, the only
//! trained module. Next-token cross-entropy on assistant tokens, with either the dataset's
//! answers or the base model's own teacher-forced argmax as targets (self-distillation: what
//! speculative decoding needs the twig to agree with). Optionally (beyond the paper) a second
//! loss pulls the twig's selection attention toward a deep base layer's ([`AttentionDistill`]).

use serde_with::{DeserializeFromStr, SerializeDisplay};
use std::ops::Range;
use strum::{Display, EnumMessage, EnumString, VariantArray};

use burn::module::AutodiffModule;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use twigvlm_backbone::llama::RopeAngles;
use twigvlm_backbone::llava::embed_with_image;
use twigvlm_backbone::projector::Projector;
use twigvlm_backbone::{AttentionProbe, ImagePreprocessor, KvCache, LlamaDecoder, LlavaModel};
use twigvlm_data::{Conversation, Dataset};
use twigvlm_ttp::selection::head_mean_scores;
use twigvlm_twig::{Twig, TwigMlp};

use crate::error::{Result, TrainError};
use crate::examples::{single_sequence, ConversationEncoder, Encoded, VisualInput};
use crate::loss::TokenMeanLoss;
use crate::metrics::{argmax_ids, TaskAccuracy};
use crate::trainable::trainable;
use crate::trainer::Objective;
use twigvlm_backbone::ops::{DecodeAutodiff, DecodeOps};

/// The twig ready to train: every parameter requires gradients except the blocks' MLPs when its
/// config keeps them frozen (`TwigMlp::Frozen`: they get no gradient and no optimizer state, and
/// stay the base layers' copies).
pub fn trainable_twig<B: DecodeAutodiff>(twig: Twig<B>) -> Twig<B> {
    let mut twig = trainable(twig);
    if twig.config.mlp == TwigMlp::Frozen {
        for layer in &mut twig.layers {
            layer.mlp = layer.mlp.clone().no_grad();
        }
    }
    twig
}

/// The twig with only its pruning head trained: blocks, norm and LM head stay as they are (no
/// gradient, no optimizer state), so its drafting and the `twig` policy's ranking do not change.
pub fn trainable_pruning_head<B: DecodeAutodiff>(twig: Twig<B>) -> Twig<B> {
    let pruning_head = twig.pruning_head.clone().map(trainable);
    Twig { pruning_head, ..twig.no_grad() }
}

/// What the twig learns to predict at each assistant position.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Display,
    EnumString,
    VariantArray,
    EnumMessage,
    SerializeDisplay,
    DeserializeFromStr,
)]
#[strum(serialize_all = "lowercase")]
pub enum TwigTargets {
    /// The dataset's answer tokens (the paper's recipe).
    #[default]
    Data,
    /// The base model's argmax given the same prefix (self-distillation).
    Base,
}

/// A KL term that pulls the twig's ranking of the visual tokens toward a deep base layer's
/// attention (head mean, last prompt token over the visual tokens). Without a pruning head it
/// trains the twig's last block's attention, what the `twig` policy ranks by (beyond the paper:
/// next-token training alone moved the demo twig's selection away from the asked object,
/// bench/results/demo-relacc, while deep base layers keep it); with one, it trains the pruning
/// head, as TwigVLM++'s first stage does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AttentionDistill {
    /// The base layer (0-based) whose attention the twig learns.
    pub teacher_layer: usize,
    /// Weight of the mean KL divergence beside the token loss.
    pub weight: f64,
}

/// Attention probabilities are clamped to this before their logarithm (a visual token the
/// softmax gave no weight at all would otherwise make the divergence NaN).
const PROBABILITY_FLOOR: f64 = 1e-12;

/// TTP's scores of one query row `[1, heads, 1, keys]` over `visual`
/// ([`twigvlm_ttp::selection::head_mean_scores`]), renormalised to a distribution over them.
fn visual_distribution<C: Backend>(attention: Tensor<C, 4>, visual: &Range<usize>) -> Tensor<C, 1> {
    let scores = head_mean_scores(attention, visual);
    scores.clone().div(scores.sum())
}

/// KL(teacher ‖ student) of two distributions over the same tokens.
fn kl_divergence<C: Backend>(teacher: Tensor<C, 1>, student: Tensor<C, 1>) -> Tensor<C, 1> {
    let log_ratio = teacher.clone().clamp_min(PROBABILITY_FLOOR).log() - student.clamp_min(PROBABILITY_FLOOR).log();
    (teacher * log_ratio).sum()
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
    pub attention_distill: Option<AttentionDistill>,
    /// Whether the twig's blocks, norm and head train (false: only its pruning head does, by
    /// the attention term alone).
    pub trains_twig: bool,
}

/// One example run through the frozen base up to layer K.
struct Prefix<B: Backend> {
    encoded: Encoded,
    /// Hidden states entering layer K `[1, seq, hidden]`.
    hidden_k: Tensor<B, 3>,
    positions: Vec<usize>,
    /// The base model's argmax at each target position (only computed when needed).
    base_argmax: Option<Vec<i64>>,
    /// With [`AttentionDistill`] and an image: the selection query (the first question's last
    /// token), the visual tokens, and the teacher layer's distribution over them.
    teacher: Option<(usize, Range<usize>, Tensor<B, 1>)>,
}

impl<B: DecodeAutodiff> TwigObjective<B> {
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
        Self {
            visual,
            projector,
            language_model,
            base_head,
            encoder,
            targets,
            train,
            eval,
            batch_size,
            device,
            attention_distill: None,
            trains_twig: true,
        }
    }

    /// Adds the attention loss (the teacher layer must exist in the base model).
    pub fn with_attention_distill(mut self, distill: AttentionDistill) -> Result<Self> {
        let layers = self.language_model.num_layers();
        if distill.teacher_layer >= layers {
            return Err(TrainError::Config(format!(
                "the attention teacher is layer {} but the base model has {layers}",
                distill.teacher_layer + 1
            )));
        }
        self.attention_distill = Some(distill);
        Ok(self)
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
        // The selection query and the visual tokens, when there is an attention to learn.
        let selection = match (&self.attention_distill, &encoded.prompt.image_span, encoded.targets.first()) {
            (Some(distill), Some(visual), Some(&(query, _))) if !visual.is_empty() => {
                Some((distill.teacher_layer, query, visual.clone()))
            }
            _ => None,
        };
        let probe = selection.as_ref().map_or_else(AttentionProbe::default, |(layer, query, _)| AttentionProbe {
            rows: vec![*query],
            layers: vec![*layer],
        });
        let below = lm.forward_layers(embeds, &rope, 0..k, &mut cache, &probe);
        let hidden_k = below.hidden;
        let mut attention = below.attention;
        // Above K: as far as the argmax (the head) or the teacher layer needs.
        let teacher_end = selection.as_ref().map_or(k, |(layer, ..)| layer + 1);
        let end = if with_argmax { lm.num_layers() } else { teacher_end.max(k) };
        let mut base_argmax = None;
        if end > k {
            let above = lm.forward_layers(hidden_k.clone(), &rope, k..end, &mut cache, &probe);
            attention.extend(above.attention);
            base_argmax = with_argmax.then(|| {
                argmax_ids(single_sequence(lm.logits(above.hidden.select(1, encoded.target_rows(&self.device)))))
            });
        }
        let teacher = selection.zip(attention.pop()).map(|((_, query, visual), (_, probs))| {
            let distribution = visual_distribution(probs, &visual);
            (query, visual, distribution)
        });
        Ok(Prefix { encoded, hidden_k, positions, base_argmax, teacher })
    }

    /// Twig logits `[targets, vocab]` at the target positions (unless `logits` is false) and,
    /// for a `selection` (query row, visual tokens), its ranking distribution over the visual
    /// tokens: the pruning head's when the twig has one, else its last block's attention.
    fn twig_forward<C: DecodeOps>(
        twig: &Twig<C>,
        head: &Linear<C>,
        hidden_k: Tensor<C, 3>,
        rope: &RopeAngles<C>,
        encoded: &Encoded,
        selection: Option<(usize, &Range<usize>)>,
        logits: bool,
    ) -> (Option<Tensor<C, 2>>, Option<Tensor<C, 1>>) {
        let device = &hidden_k.device();
        let mut cache = twig.new_cache();
        let (output, student) = match (selection, &twig.pruning_head) {
            // The head alone trains: the last block's output is not needed.
            (Some((query, visual)), Some(_)) if !logits => {
                let last_input = twig.last_block_input(hidden_k, rope, &mut cache, &AttentionProbe::default());
                return (None, twig.pruning_distribution(last_input, rope, query, visual));
            }
            (Some((query, visual)), Some(_)) => {
                let (output, last_input) =
                    twig.forward_with_last_input(hidden_k, rope, &mut cache, &AttentionProbe::default());
                let student = twig.pruning_distribution(last_input, rope, query, visual);
                (output, student)
            }
            _ => {
                let probe = selection.map_or_else(AttentionProbe::default, |(query, _)| AttentionProbe {
                    rows: vec![query],
                    layers: vec![twig.config.t - 1],
                });
                let mut output = twig.forward(hidden_k, rope, &mut cache, &probe);
                let student = selection
                    .zip(output.attention.pop())
                    .map(|((_, visual), (_, probs))| visual_distribution(probs, visual));
                (output, student)
            }
        };
        let logits =
            logits.then(|| single_sequence(twig.logits(output.hidden.select(1, encoded.target_rows(device)), head)));
        (logits, student)
    }
}

impl<B: DecodeAutodiff> Objective<B> for TwigObjective<B> {
    type Model = Twig<B>;

    fn loss(&mut self, twig: &Twig<B>, step: usize) -> Result<(Tensor<B, 1>, usize)> {
        let mut loss = TokenMeanLoss::new();
        let mut divergences = Vec::new();
        for b in 0..self.batch_size {
            let index = (step * self.batch_size + b) % self.train.len().max(1);
            let with_argmax = self.trains_twig && self.targets == TwigTargets::Base;
            let mut prefix = self.prefix(&self.train.get(index), twig.config.k, with_argmax)?;
            let targets = prefix.base_argmax.take().unwrap_or_else(|| prefix.encoded.target_ids());
            let rope = RopeAngles::new(
                &prefix.positions,
                self.language_model.head_dim,
                self.language_model.rope_theta,
                &self.device,
            );
            let hidden_k = Tensor::<B, 3>::from_inner(prefix.hidden_k);
            let selection = prefix.teacher.as_ref().map(|(query, visual, _)| (*query, visual));
            let (logits, student) = Self::twig_forward(
                twig,
                &self.base_head,
                hidden_k,
                &rope,
                &prefix.encoded,
                selection,
                self.trains_twig,
            );
            if let Some(logits) = logits {
                loss.add(logits, &targets);
            }
            if let (Some((.., teacher)), Some(student)) = (prefix.teacher, student) {
                divergences.push(kl_divergence(Tensor::from_inner(teacher), student));
            }
        }
        let attention = self.attention_distill.filter(|_| !divergences.is_empty()).map(|distill| {
            let images = divergences.len();
            (Tensor::cat(divergences, 0).mean().mul_scalar(distill.weight), images)
        });
        match (loss.finish(), attention) {
            (Some((token_loss, tokens)), Some((attention, _))) => Ok((token_loss + attention, tokens)),
            (Some(token_loss), None) => Ok(token_loss),
            // Only the pruning head trains: its attention term is the whole loss.
            (None, Some(attention)) if !self.trains_twig => Ok(attention),
            _ => Err(TrainError::Config(format!(
                "step {step}: no assistant tokens (or, for a pruning head alone, no image) in the batch"
            ))),
        }
    }

    /// Teacher-forced, on held-out conversations: `agreement` = share of assistant positions where
    /// the twig's argmax equals the base's (what speculative decoding accepts); `{task}_acc` =
    /// share of answers the twig alone gets entirely right; with [`AttentionDistill`],
    /// `attention_kl` = the mean divergence of its selection attention from the teacher's.
    fn evaluate(&mut self, twig: &Twig<B>) -> Result<Vec<(String, f64)>> {
        let twig = twig.valid();
        let (mut agree, mut positions) = (0usize, 0usize);
        let (mut divergence, mut images) = (0.0, 0usize);
        let mut accuracy = TaskAccuracy::default();
        for index in 0..self.eval.len() {
            let conversation = self.eval.get(index);
            let prefix = self.prefix(&conversation, twig.config.k, true)?;
            let lm = &self.language_model;
            let rope = lm.rope(&prefix.positions, &self.device);
            let selection = prefix.teacher.as_ref().map(|(query, visual, _)| (*query, visual));
            let (logits, student) =
                Self::twig_forward(&twig, &lm.lm_head, prefix.hidden_k, &rope, &prefix.encoded, selection, true);
            let logits = logits.expect("asked for");
            if let (Some((.., teacher)), Some(student)) = (prefix.teacher, student) {
                divergence += kl_divergence(teacher, student).into_scalar().elem::<f64>();
                images += 1;
            }
            let predicted = argmax_ids(logits);
            let base = prefix.base_argmax.expect("computed for evaluation");
            agree += predicted.iter().zip(&base).filter(|(a, b)| a == b).count();
            positions += predicted.len();
            accuracy.record(conversation.turns[0].task_name(), predicted == prefix.encoded.target_ids());
        }
        let mut metrics = vec![("agreement".to_string(), agree as f64 / positions.max(1) as f64)];
        if images > 0 {
            metrics.push(("attention_kl".to_string(), divergence / images as f64));
        }
        metrics.extend(accuracy.into_metrics());
        Ok(metrics)
    }
}
