//! LLaVA's two language-side stages on one objective, next-token cross-entropy on the
//! assistant's answers only:
//! - stage 1 (feature alignment): only the projector trains, mapping a frozen vision tower's
//!   features into a frozen language model's embedding space;
//! - stage 2 (visual instruction tuning): the projector and the language model's top layers train
//!   together.
//!
//! The vision tower runs on the inner backend (no graph). The language model's frozen layers are
//! in the graph (gradients flow through them to the projector) but have no trainable parameters,
//! unless the projector is frozen too: then they also run on the inner backend;
//! the tuned top layers are trainable copies held by [`AlignedParts`], and the frozen model's own
//! copies of them are never run.

use std::collections::BTreeMap;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use twigvlm_backbone::llama::forward_stack;
use twigvlm_backbone::llava::embed_with_image;
use twigvlm_backbone::projector::Projector;
use twigvlm_backbone::weights::{hf_tensors, NamedTensor};
use twigvlm_backbone::LlamaDecoder;
use twigvlm_backbone::{AttentionProbe, DecoderLayer, KvCache};
use twigvlm_data::{Conversation, Dataset, ShapesDataset};

use crate::error::{Result, TrainError};
use crate::examples::{single_sequence, ConversationEncoder, Encoded, VisualInput};
use crate::loss::TokenMeanLoss;
use crate::metrics::{argmax_ids, TaskAccuracy};
use crate::trainable::trainable;
use crate::trainer::Objective;
use twigvlm_backbone::ops::{DecodeAutodiff, DecodeOps};

/// Which parameters of each tuned language-model layer train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TunedLayerParts {
    /// The whole layer: attention, MLP and both norms.
    #[default]
    Whole,
    /// Only the attention projections (q, k, v, o): a quarter of a layer's parameters, and what
    /// reading an answer out of the visual tokens needs; MLP and norms stay pretrained.
    Attention,
}

/// What the language-side stages train: the projector and, in stage 2, the language model's top
/// `lm_layers.len()` layers (whole, or only their attention).
#[derive(Module, Debug)]
pub struct AlignedParts<B: Backend> {
    pub projector: Projector<B>,
    pub lm_layers: Vec<DecoderLayer<B>>,
    /// Index in the language model of the first tuned layer.
    #[module(skip)]
    pub first_tuned_layer: usize,
    #[module(skip)]
    pub tuned_parts: TunedLayerParts,
}

impl<B: DecodeAutodiff> AlignedParts<B> {
    /// Trainable copies of `language_model`'s top `tuned_layers` layers (the `tuned_parts` of each)
    /// beside `projector`.
    pub fn new(
        projector: Projector<B>,
        language_model: &LlamaDecoder<B>,
        tuned_layers: usize,
        tuned_parts: TunedLayerParts,
    ) -> Result<Self> {
        let total = language_model.num_layers();
        if tuned_layers > total {
            return Err(TrainError::Config(format!(
                "cannot tune {tuned_layers} layers of a {total}-layer language model"
            )));
        }
        let first_tuned_layer = total - tuned_layers;
        let tune = |layer: &DecoderLayer<B>| match tuned_parts {
            TunedLayerParts::Whole => trainable(layer.clone()),
            TunedLayerParts::Attention => {
                DecoderLayer { self_attn: trainable(layer.self_attn.clone()), ..layer.clone() }
            }
        };
        let lm_layers = language_model.layers[first_tuned_layer..].iter().map(tune).collect();
        Ok(Self { projector, lm_layers, first_tuned_layer, tuned_parts })
    }
}

/// Parameter paths inside a decoder layer that belong to its attention.
const ATTENTION_PATH: &str = "self_attn.";

impl<B: DecodeOps> AlignedParts<B> {
    /// The tuned layers' trained tensors under the language model's checkpoint names
    /// (`{decoder_prefix}.layers.{i}.…`), so that listing them after the pretrained weights
    /// replaces those layers (only the attention tensors when only attention trained).
    pub fn tuned_layer_tensors(&self, decoder_prefix: &str) -> Vec<NamedTensor> {
        let rename = |burn_path: &str| {
            let (offset, rest) =
                burn_path.split_once('.').expect("a tuned layer's parameter path starts with its index");
            let offset: usize = offset.parse().expect("a tuned layer index");
            format!("{decoder_prefix}.layers.{}.{rest}", self.first_tuned_layer + offset)
        };
        let attention_name = format!(".{ATTENTION_PATH}");
        hf_tensors(&self.lm_layers, &rename)
            .into_iter()
            .filter(|(name, _, _)| self.tuned_parts == TunedLayerParts::Whole || name.contains(&attention_name))
            .collect()
    }
}

/// One question of a batch: the index of its image, its encoded turn, its padded embeddings.
type Question<B> = (usize, Encoded, Tensor<B, 3>);

/// The frozen parts and the data of a language-side run.
pub struct AlignmentObjective<B: AutodiffBackend> {
    pub visual: VisualInput<B::InnerBackend>,
    pub language_model: LlamaDecoder<B>,
    pub encoder: ConversationEncoder,
    /// Image conversations; with a frozen projector also text-only ones (a chat replay).
    pub train: Dataset,
    pub eval: ShapesDataset,
    pub batch_size: usize,
    /// Keep the projector as it is (stage 2 then tunes only the language model's top layers):
    /// everything below the tuned layers runs without a graph, which makes a step several times
    /// cheaper, and each question about an image trains as if asked alone.
    pub freeze_projector: bool,
    pub padding: SequencePadding,
    pub device: B::Device,
}

impl<B: DecodeAutodiff> AlignmentObjective<B> {
    /// The visual features of the conversation's image (computed without a graph).
    fn image_features(&self, conversation: &Conversation) -> Result<Tensor<B::InnerBackend, 3>> {
        self.visual
            .features(conversation, &self.device)?
            .ok_or_else(|| TrainError::Config("language-side stages train on image conversations".into()))
    }

    /// The conversation's tokens and visual features.
    fn example(&self, conversation: &Conversation) -> Result<(Encoded, Tensor<B::InnerBackend, 3>)> {
        let features = self.image_features(conversation)?;
        Ok((self.encoder.encode(conversation, features.dims()[1])?, features))
    }
}

/// One image's questions as single-turn prompts that share their beginning (system prompt and
/// image): each question is trained as if it were asked alone, so no answer can be copied from
/// an earlier turn about the same image, and the shared beginning runs once.
struct TurnsOfOneImage {
    prefix_len: usize,
    turns: Vec<Encoded>,
}

impl TurnsOfOneImage {
    fn new(encoder: &ConversationEncoder, conversation: &Conversation, visual_tokens: usize) -> Result<Self> {
        let turns = conversation
            .questions_alone()
            .iter()
            .map(|alone| encoder.encode(alone, visual_tokens))
            .collect::<Result<Vec<_>>>()?;
        let first =
            &turns.first().ok_or_else(|| TrainError::Config(format!("{} has no turns", conversation.id)))?.prompt.ids;
        let common = turns
            .iter()
            .map(|t| first.iter().zip(&t.prompt.ids).take_while(|(a, b)| a == b).count())
            .min()
            .unwrap_or(0);
        // Every trained position stays in its own turn, even when two questions are the same.
        let first_target =
            turns.iter().filter_map(|t| t.targets.first().map(|&(position, _)| position)).min().unwrap_or(common);
        // The beginning ends with the image at the latest, so that its length (a tensor shape on
        // the GPU) does not change with the questions' first words.
        let image_end = turns[0].prompt.image_span.as_ref().map_or(common, |span| span.end);
        Ok(Self { prefix_len: common.min(first_target).min(image_end), turns })
    }
}

impl<B: DecodeAutodiff> AlignmentObjective<B> {
    /// Adds the conversations' assistant tokens to `loss`: with a frozen projector each question
    /// as if asked alone (all of them in two batched forwards), else each whole conversation
    /// through the graph.
    pub fn add_conversations(
        &self,
        loss: &mut TokenMeanLoss<B>,
        parts: &AlignedParts<B>,
        conversations: &[Conversation],
    ) -> Result<()> {
        if self.freeze_projector {
            let (language_model, projector) = (self.language_model.valid(), parts.projector.valid());
            return self.add_questions_alone(loss, parts, &language_model, &projector, conversations);
        }
        for conversation in conversations {
            let (encoded, features) = self.example(conversation)?;
            let (logits, targets) = target_logits(
                &self.language_model,
                parts,
                Tensor::from_inner(features),
                &encoded,
                self.padding,
                &self.device,
            );
            loss.add_padded(logits, &targets.ids, targets.real);
        }
        Ok(())
    }
}

/// How batched questions and their target rows are padded. Questions are right-padded to a
/// multiple of `question_multiple` tokens and run as one batch: padding comes after every real
/// token, so the causal mask keeps it out of the real rows. Their target rows (the answers'
/// tokens: the language-model head and the loss run on these only) are padded to a multiple of
/// `target_multiple` with rows of weight zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequencePadding {
    pub question_multiple: usize,
    pub target_multiple: usize,
}

impl SequencePadding {
    /// For backends that compile a kernel per tensor shape (the GPU ones): a few lengths instead
    /// of one per question length (compiling them cost an H100 nearly all of a 430 s run).
    pub const FEW_SHAPES: Self = Self { question_multiple: 32, target_multiple: 16 };
    /// For the CPU backend, which runs any shape at no extra cost: short questions (about 14–18
    /// tokens after the image) would otherwise be nearly half padding.
    pub const TIGHT: Self = Self { question_multiple: 8, target_multiple: 8 };

    pub fn for_kernels_compiled_per_shape(compiled_per_shape: bool) -> Self {
        if compiled_per_shape {
            Self::FEW_SHAPES
        } else {
            Self::TIGHT
        }
    }
}

impl<B: DecodeAutodiff> AlignmentObjective<B> {
    /// Adds the loss of every question about the conversations' images, each asked alone. The
    /// frozen layers (and projector) run without a graph. Batched forwards: the beginnings
    /// (system prompt and image, as long as the shortest image's shared beginning) of all
    /// images, then the questions, right-padded, each on a copy of its image's cache, one batch
    /// per padded length.
    fn add_questions_alone(
        &self,
        loss: &mut TokenMeanLoss<B>,
        parts: &AlignedParts<B>,
        frozen_lm: &LlamaDecoder<B::InnerBackend>,
        projector: &Projector<B::InnerBackend>,
        conversations: &[Conversation],
    ) -> Result<()> {
        let (device, probe, first_tuned) = (&self.device, AttentionProbe::default(), parts.first_tuned_layer);
        let positions = |range: std::ops::Range<usize>| range.collect::<Vec<_>>();
        // Per image: its questions (encoded alone) and the embeddings of each whole prompt.
        let mut images = Vec::with_capacity(conversations.len());
        for conversation in conversations {
            // A text-only conversation (a chat replay) is a conversation of zero visual tokens.
            let features = self.visual.features(conversation, device)?;
            let image =
                TurnsOfOneImage::new(&self.encoder, conversation, features.as_ref().map_or(0, |f| f.dims()[1]))?;
            let projected = features.map(|f| projector.forward(f));
            let embeds: Vec<_> = image
                .turns
                .iter()
                .map(|turn| embed_with_image(frozen_lm, &turn.prompt, projected.clone(), device))
                .collect();
            images.push((image, embeds));
        }
        let prefix = images.iter().map(|(image, _)| image.prefix_len).min().unwrap_or(0);

        let mut frozen_cache = KvCache::new(frozen_lm.num_layers());
        let mut tuned_cache = KvCache::new(frozen_lm.num_layers());
        if prefix > 0 {
            let beginnings = images.iter().map(|(_, embeds)| embeds[0].clone().narrow(1, 0, prefix)).collect();
            let hidden = frozen_lm
                .forward_layers(
                    Tensor::cat(beginnings, 0),
                    &frozen_lm.rope(&positions(0..prefix), device),
                    0..first_tuned,
                    &mut frozen_cache,
                    &probe,
                )
                .hidden;
            let rope = self.language_model.rope(&positions(0..prefix), device);
            forward_stack(&parts.lm_layers, first_tuned, Tensor::from_inner(hidden), &rope, &mut tuned_cache, &probe);
        }
        // Questions of about the same length run together: a long description would otherwise
        // pad every short question of the batch to its length.
        let mut by_length: BTreeMap<usize, Vec<Question<B::InnerBackend>>> = BTreeMap::new();
        for (image_index, (image, embeds)) in images.into_iter().enumerate() {
            for (turn, embeds) in image.turns.into_iter().zip(embeds) {
                let padded = (turn.prompt.len() - prefix).next_multiple_of(self.padding.question_multiple);
                let question = right_pad(embeds.narrow(1, prefix, turn.prompt.len() - prefix), padded);
                by_length.entry(padded).or_default().push((image_index, turn, question));
            }
        }
        let caches = PrefixCaches { prefix, frozen: &frozen_cache, tuned: &tuned_cache };
        for (padded, questions) in by_length {
            self.add_question_group(loss, parts, frozen_lm, &caches, padded, questions);
        }
        Ok(())
    }

    /// Adds the loss of questions right-padded to the same `padded` length, each on a copy of its
    /// image's cache: one batched forward of the frozen layers, one of the tuned ones.
    fn add_question_group(
        &self,
        loss: &mut TokenMeanLoss<B>,
        parts: &AlignedParts<B>,
        frozen_lm: &LlamaDecoder<B::InnerBackend>,
        caches: &PrefixCaches<'_, B>,
        padded: usize,
        questions: Vec<(usize, Encoded, Tensor<B::InnerBackend, 3>)>,
    ) {
        let (device, probe, first_tuned, prefix) =
            (&self.device, AttentionProbe::default(), parts.first_tuned_layer, caches.prefix);
        let image_of_question: Vec<usize> = questions.iter().map(|(image, _, _)| *image).collect();
        let (turns, embeds): (Vec<_>, Vec<_>) = questions.into_iter().map(|(_, turn, embeds)| (turn, embeds)).unzip();
        let rope_positions: Vec<usize> = (prefix..prefix + padded).collect();
        let hidden = frozen_lm
            .forward_layers(
                Tensor::cat(embeds, 0),
                &frozen_lm.rope(&rope_positions, device),
                0..first_tuned,
                &mut caches.frozen.select_batch(&image_of_question),
                &probe,
            )
            .hidden;
        let rope = self.language_model.rope(&rope_positions, device);
        let hidden = forward_stack(
            &parts.lm_layers,
            first_tuned,
            Tensor::from_inner(hidden),
            &rope,
            &mut caches.tuned.select_batch(&image_of_question),
            &probe,
        )
        .hidden;
        // Every question's target rows in the group flattened to one sequence of `questions · padded`.
        let rows = turns
            .iter()
            .enumerate()
            .flat_map(|(q, turn)| turn.targets.iter().map(move |&(position, _)| q * padded + position - prefix))
            .collect();
        let targets = PaddedTargets::new(
            rows,
            turns.iter().flat_map(Encoded::target_ids).collect(),
            self.padding.target_multiple,
            device,
        );
        let flat = hidden.reshape([1, turns.len() * padded, self.language_model.hidden_size()]);
        loss.add_padded(
            single_sequence(self.language_model.logits(flat.select(1, targets.rows))),
            &targets.ids,
            targets.real,
        );
    }
}

/// The caches of the images' shared beginnings (`prefix` tokens), below and in the tuned layers.
struct PrefixCaches<'a, B: AutodiffBackend> {
    prefix: usize,
    frozen: &'a KvCache<B::InnerBackend>,
    tuned: &'a KvCache<B>,
}

/// `[1, len, hidden]` followed by zero rows up to `[1, padded, hidden]`. The rows come after
/// every real token, which the causal mask keeps from seeing them.
fn right_pad<C: Backend>(embeds: Tensor<C, 3>, padded: usize) -> Tensor<C, 3> {
    let [batch, len, hidden] = embeds.dims();
    match padded - len {
        0 => embeds,
        pad => {
            let device = embeds.device();
            Tensor::cat(vec![embeds, Tensor::zeros([batch, pad, hidden], &device)], 1)
        }
    }
}

/// Target rows and ids, padded to a multiple of [`SequencePadding::target_multiple`] with copies of the first
/// (counted with weight zero): the first `real` are the answers' tokens.
struct PaddedTargets<C: Backend> {
    rows: Tensor<C, 1, Int>,
    ids: Vec<i64>,
    real: usize,
}

impl<C: Backend> PaddedTargets<C> {
    fn new(mut rows: Vec<usize>, mut ids: Vec<i64>, multiple: usize, device: &C::Device) -> Self {
        let real = ids.len();
        let padded = real.next_multiple_of(multiple);
        rows.resize(padded, rows.first().copied().unwrap_or(0));
        ids.resize(padded, ids.first().copied().unwrap_or(0));
        let rows = rows.into_iter().map(|row| row as i32).collect();
        Self { rows: Tensor::from_data(TensorData::new(rows, [padded]), device), ids, real }
    }
}

/// Logits at the (padded) target positions `[targets, vocab]`, all on one backend, with the
/// prompt right-padded as `padding` says.
fn target_logits<C: DecodeOps>(
    language_model: &LlamaDecoder<C>,
    parts: &AlignedParts<C>,
    features: Tensor<C, 3>,
    encoded: &Encoded,
    padding: SequencePadding,
    device: &C::Device,
) -> (Tensor<C, 2>, PaddedTargets<C>) {
    let padded = encoded.prompt.len().next_multiple_of(padding.question_multiple);
    let embeds = right_pad(
        embed_with_image(language_model, &encoded.prompt, Some(parts.projector.forward(features)), device),
        padded,
    );
    let positions: Vec<usize> = (0..padded).collect();
    let rope = language_model.rope(&positions, device);
    let (first_tuned, probe) = (parts.first_tuned_layer, AttentionProbe::default());
    let mut cache = KvCache::new(language_model.num_layers());
    let hidden = language_model.forward_layers(embeds, &rope, 0..first_tuned, &mut cache, &probe).hidden;
    let hidden = forward_stack(&parts.lm_layers, first_tuned, hidden, &rope, &mut cache, &probe).hidden;
    let targets = PaddedTargets::new(
        encoded.targets.iter().map(|&(position, _)| position).collect(),
        encoded.target_ids(),
        padding.target_multiple,
        device,
    );
    (single_sequence(language_model.logits(hidden.select(1, targets.rows.clone()))), targets)
}

impl<B: DecodeAutodiff> Objective<B> for AlignmentObjective<B> {
    type Model = AlignedParts<B>;

    fn loss(&mut self, parts: &AlignedParts<B>, step: usize) -> Result<(Tensor<B, 1>, usize)> {
        let conversations: Vec<_> = (0..self.batch_size)
            .map(|b| self.train.get((step * self.batch_size + b) % self.train.len().max(1)))
            .collect();
        let mut loss = TokenMeanLoss::new();
        self.add_conversations(&mut loss, parts, &conversations)?;
        loss.finish().ok_or_else(|| TrainError::Config(format!("step {step}: no assistant tokens in the batch")))
    }

    /// Teacher-forced exact match per task (every answer token the argmax = what greedy decoding
    /// gives), one question per held-out image.
    fn evaluate(&mut self, parts: &AlignedParts<B>) -> Result<Vec<(String, f64)>> {
        let (parts, language_model) = (parts.valid(), self.language_model.valid());
        let mut accuracy = TaskAccuracy::default();
        for index in 0..self.eval.len {
            let conversation = self.eval.get(index);
            let (encoded, features) = self.example(&conversation)?;
            let (logits, targets) =
                target_logits(&language_model, &parts, features, &encoded, self.padding, &self.device);
            let mut predicted = argmax_ids(logits);
            predicted.truncate(targets.real);
            accuracy.record(conversation.turns[0].task_name(), predicted == encoded.target_ids());
        }
        Ok(accuracy.into_metrics().collect())
    }
}
