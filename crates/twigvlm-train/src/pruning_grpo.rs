//! The second stage of TwigVLM++: the pruning head alone, by group-relative policy optimisation.
//! For each training question the head's distribution over the visual tokens is a policy; a
//! group of keep-sets is drawn from it without replacement (Gumbel top-k, in Plackett–Luce
//! order), each keep-set is rewarded by the frozen base model's answer with only those visual
//! tokens (the negative mean token loss of the reference answer, teacher-forced through the
//! pruned layers exactly as a pruned prefill runs them), rewards are normalised within the group,
//! and the head follows `−Σ advantage · log P(keep-set)`. Everything but the head is frozen and
//! runs without a graph: the reward needs forward passes only.
//!
//! The budget of each question is drawn from a curriculum: early steps draw from the largest
//! budget only, and each smaller one joins after an equal share of the steps.

use std::ops::Range;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use twigvlm_backbone::llama::RopeAngles;
use twigvlm_backbone::llava::embed_with_image;
use twigvlm_backbone::ops::DecodeAutodiff;
use twigvlm_backbone::projector::Projector;
use twigvlm_backbone::{AttentionProbe, KvCache, LlamaDecoder};
use twigvlm_data::{Conversation, Dataset};
use twigvlm_ttp::{forward_kept, LayerPlan, VisualBudget};
use twigvlm_twig::Twig;

use crate::error::{Result, TrainError};
use crate::examples::{single_sequence, ConversationEncoder, Encoded, VisualInput};
use crate::loss::TokenMeanLoss;
use crate::trainer::Objective;

/// Probabilities are clamped to this before their logarithm.
const PROBABILITY_FLOOR: f64 = 1e-12;
/// Rewards of a group closer than this are a tie: the group teaches nothing and is skipped.
const REWARD_TIE: f64 = 1e-6;

/// How keep-sets are drawn and scored.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpoSettings {
    /// Keep-sets drawn per question (the group).
    pub samples: usize,
    /// R̄ values the questions' budgets are drawn from (the curriculum's order: largest first).
    pub budgets: Vec<VisualBudget>,
    /// Where pruning acts: K (the twig's), K_f and the depth.
    pub layers: LayerPlan,
    /// Seeds the draws (step by step, so a resumed run draws as an uninterrupted one).
    pub seed: u64,
}

/// The frozen base VLM and twig on the inner backend, the data, and the settings.
pub struct PruningHeadGrpo<B: AutodiffBackend> {
    pub visual: VisualInput<B::InnerBackend>,
    pub projector: Projector<B::InnerBackend>,
    pub language_model: LlamaDecoder<B::InnerBackend>,
    pub encoder: ConversationEncoder,
    pub train: Dataset,
    pub eval: Dataset,
    pub batch_size: usize,
    /// Planned steps (the curriculum spreads over them).
    pub steps: usize,
    pub settings: GrpoSettings,
    pub device: B::Device,
}

/// One question through the frozen parts: the layer-K hidden states of the whole teacher-forced
/// sequence, the hidden states entering the twig's last block, and where things are.
struct Question<C: Backend> {
    encoded: Encoded,
    hidden_k: Tensor<C, 3>,
    last_input: Tensor<C, 3>,
    rope: RopeAngles<C>,
    /// The asking row (the last prompt token before the first answer).
    query: usize,
    visual: Range<usize>,
}

impl<B: DecodeAutodiff> PruningHeadGrpo<B> {
    /// `None` for a conversation without an image or an answer.
    fn question(
        &self,
        twig: &Twig<B::InnerBackend>,
        conversation: &Conversation,
    ) -> Result<Option<Question<B::InnerBackend>>> {
        let Some(features) = self.visual.features(conversation, &self.device)? else { return Ok(None) };
        let encoded = self.encoder.encode(conversation, features.dims()[1])?;
        let (Some(visual), Some(&(query, _))) = (encoded.prompt.image_span.clone(), encoded.targets.first()) else {
            return Ok(None);
        };
        let lm = &self.language_model;
        let embeds = embed_with_image(lm, &encoded.prompt, Some(self.projector.forward(features)), &self.device);
        let positions: Vec<usize> = (0..encoded.prompt.len()).collect();
        let rope = lm.rope(&positions, &self.device);
        let no_probe = AttentionProbe::default();
        let hidden_k =
            lm.forward_layers(embeds, &rope, 0..twig.config.k, &mut KvCache::new(lm.num_layers()), &no_probe).hidden;
        let last_input = twig.last_block_input(hidden_k.clone(), &rope, &mut twig.new_cache(), &no_probe);
        Ok(Some(Question { encoded, hidden_k, last_input, rope, query, visual }))
    }

    /// The reference answer's mean token loss with only `kept` visual tokens (the negative
    /// reward).
    fn answer_loss(&self, question: &Question<B::InnerBackend>, kept: &[usize]) -> Result<f64> {
        let lm = &self.language_model;
        let (top, positions) =
            forward_kept(lm, question.hidden_k.clone(), &self.settings.layers, &question.visual, kept)?;
        let rows: Vec<i32> = question
            .encoded
            .targets
            .iter()
            .map(|&(position, _)| positions.iter().position(|&p| p == position).expect("answers are text") as i32)
            .collect();
        let index = Tensor::from_data(TensorData::new(rows.clone(), [rows.len()]), &self.device);
        let mut loss = TokenMeanLoss::new();
        loss.add(single_sequence(lm.logits(top.select(1, index))), &question.encoded.target_ids());
        let (mean, _) = loss.finish().expect("a question has answer tokens");
        Ok(mean.into_scalar().elem::<f64>())
    }

    /// R' of `budget` for an image of `visual_tokens`.
    fn kept_at(&self, budget: VisualBudget, visual_tokens: usize) -> usize {
        self.settings.layers.kept_visual_tokens(budget.tokens(visual_tokens), visual_tokens)
    }

    /// R' of the budget a question at `step` gets (the curriculum).
    fn kept_count(&self, step: usize, rng: &mut StdRng, visual_tokens: usize) -> usize {
        let budgets = &self.settings.budgets;
        let progress = step as f64 / self.steps.max(1) as f64;
        let open = ((progress * budgets.len() as f64) as usize + 1).min(budgets.len());
        self.kept_at(budgets[rng.random_range(0..open)], visual_tokens)
    }
}

/// `count` distinct indices drawn from `probabilities` without replacement, in draw order
/// (Gumbel top-k: the order of `log p + Gumbel noise` is a Plackett–Luce sample).
pub fn draw_without_replacement(probabilities: &[f32], count: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut keys: Vec<(f64, usize)> = probabilities
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let uniform: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            ((f64::from(p)).max(PROBABILITY_FLOOR).ln() - (-uniform.ln()).ln(), i)
        })
        .collect();
    keys.sort_by(|a, b| b.0.total_cmp(&a.0));
    keys.into_iter().take(count).map(|(_, i)| i).collect()
}

/// Log-probability of drawing `order` (distinct indices) in that order without replacement from
/// `probabilities` (Plackett–Luce): `Σ_i log p[o_i] − log(1 − Σ_{j<i} p[o_j])`.
pub fn draw_log_probability<C: Backend>(probabilities: Tensor<C, 1>, order: &[usize]) -> Tensor<C, 1> {
    let device = probabilities.device();
    let n = order.len();
    let index = Tensor::<C, 1, Int>::from_data(
        TensorData::new(order.iter().map(|&i| i as i32).collect::<Vec<_>>(), [n]),
        &device,
    );
    let picked = probabilities.select(0, index);
    let earlier: Vec<f32> = (0..n * n).map(|k| if k % n < k / n { 1.0 } else { 0.0 }).collect();
    let earlier = Tensor::<C, 2>::from_data(TensorData::new(earlier, [n, n]), &device);
    let taken_before = earlier.matmul(picked.clone().reshape([n, 1])).reshape([n]);
    let remaining = taken_before.neg().add_scalar(1.0).clamp_min(PROBABILITY_FLOOR);
    (picked.clamp_min(PROBABILITY_FLOOR).log() - remaining.log()).sum()
}

impl<B: DecodeAutodiff> Objective<B> for PruningHeadGrpo<B> {
    type Model = Twig<B>;

    fn loss(&mut self, twig: &Twig<B>, step: usize) -> Result<(Tensor<B, 1>, usize)> {
        let frozen = twig.valid();
        let mut rng = StdRng::seed_from_u64(self.settings.seed ^ (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut terms = Vec::new();
        for b in 0..self.batch_size {
            let index = (step * self.batch_size + b) % self.train.len().max(1);
            let Some(question) = self.question(&frozen, &self.train.get(index))? else { continue };
            let last_input = Tensor::<B, 3>::from_inner(question.last_input.clone());
            let rope = RopeAngles {
                cos: Tensor::from_inner(question.rope.cos.clone()),
                sin: Tensor::from_inner(question.rope.sin.clone()),
            };
            let policy = twig
                .pruning_distribution(last_input, &rope, question.query, &question.visual)
                .ok_or_else(|| TrainError::Config("the twig has no pruning head to train".into()))?;
            let probabilities: Vec<f32> = policy.clone().into_data().convert::<f32>().into_vec::<f32>().expect("f32");
            let kept = self.kept_count(step, &mut rng, question.visual.len());
            let mut draws = Vec::with_capacity(self.settings.samples);
            for _ in 0..self.settings.samples {
                let order = draw_without_replacement(&probabilities, kept, &mut rng);
                let mut keep = order.clone();
                keep.sort_unstable();
                draws.push((order, -self.answer_loss(&question, &keep)?));
            }
            let rewards: Vec<f64> = draws.iter().map(|(_, r)| *r).collect();
            let mean = rewards.iter().sum::<f64>() / rewards.len() as f64;
            let std = (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rewards.len() as f64).sqrt();
            if std < REWARD_TIE {
                continue;
            }
            for (order, reward) in draws {
                let advantage = (reward - mean) / std;
                terms.push(
                    draw_log_probability(policy.clone(), &order).mul_scalar(-advantage / self.settings.samples as f64),
                );
            }
        }
        let questions = terms.len() / self.settings.samples.max(1);
        if terms.is_empty() {
            // Every group tied (or no image): nothing to learn from this batch.
            let zero = twig.pruning_head.as_ref().map(|head| head.q_gate.weight.val().sum().mul_scalar(0.0));
            return zero
                .map(|z| (z, 0))
                .ok_or_else(|| TrainError::Config("the twig has no pruning head to train".into()));
        }
        Ok((Tensor::cat(terms, 0).sum().div_scalar(questions.max(1) as f64), questions))
    }

    /// On held-out questions, at each budget: `nll_at_{budget}` = the reference answer's mean
    /// token loss with the head's top R' visual tokens (what the policy ranks by at inference).
    fn evaluate(&mut self, twig: &Twig<B>) -> Result<Vec<(String, f64)>> {
        let twig = twig.valid();
        let budgets = self.settings.budgets.clone();
        let mut sums = vec![(0.0, 0usize); budgets.len()];
        for index in 0..self.eval.len() {
            let Some(question) = self.question(&twig, &self.eval.get(index))? else { continue };
            let Some(policy) = twig.pruning_distribution(
                question.last_input.clone(),
                &question.rope,
                question.query,
                &question.visual,
            ) else {
                return Err(TrainError::Config("the twig has no pruning head to evaluate".into()));
            };
            let scores: Vec<f32> = policy.into_data().convert::<f32>().into_vec::<f32>().expect("f32");
            for (sum, &budget) in sums.iter_mut().zip(&budgets) {
                let keep = twigvlm_ttp::selection::top_indices(&scores, self.kept_at(budget, question.visual.len()));
                sum.0 += self.answer_loss(&question, &keep)?;
                sum.1 += 1;
            }
        }
        Ok(budgets
            .iter()
            .zip(sums)
            .map(|(budget, (total, n))| (format!("nll_at_{budget}"), total / n.max(1) as f64))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn draws_are_distinct_and_follow_the_probabilities() {
        let mut rng = StdRng::seed_from_u64(1);
        let p = [0.7f32, 0.1, 0.1, 0.05, 0.05];
        let mut first = [0usize; 5];
        for _ in 0..2000 {
            let order = draw_without_replacement(&p, 3, &mut rng);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 3);
            first[order[0]] += 1;
        }
        // The first index drawn follows p itself.
        assert!((first[0] as f64 / 2000.0 - 0.7).abs() < 0.04, "{first:?}");
    }

    #[test]
    fn the_log_probability_of_an_ordered_draw_is_plackett_luce() {
        let p = Tensor::<Flex, 1>::from_floats([0.5, 0.3, 0.2], &Default::default());
        let got = draw_log_probability(p, &[1, 0]).into_scalar().elem::<f64>();
        // 0.3 × 0.5 / (1 − 0.3)
        assert!((got - (0.3f64 * 0.5 / 0.7).ln()).abs() < 1e-6, "{got}");
        // A full order's probabilities over all orders sum to one.
        let orders = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
        let total: f64 = orders
            .iter()
            .map(|o| {
                let p = Tensor::<Flex, 1>::from_floats([0.5, 0.3, 0.2], &Default::default());
                draw_log_probability(p, o).into_scalar().elem::<f64>().exp()
            })
            .sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
    }
}
