//! The prefill under a pruning policy. Layers 0..K-1 run once on the whole prompt; the twig (when
//! attached) runs on their output, so its cache holds every visual token for drafting; the
//! chosen visual tokens continue into layers K..K_f-1 with their original position ids; layers
//! from K_f on see text only. Every base layer's cache ends with its own length.

use std::ops::Range;
use std::time::Instant;

use burn::prelude::*;
use twigvlm_backbone::{AttentionProbe, KvCache, LlamaDecoder, PrefillSteps, PromptState};
use twigvlm_twig::{prefill_unpruned, Twig};

use crate::budget::LayerPlan;
use crate::error::{Result, TtpError};
use crate::policy::{PruningPlan, PruningSpec, Scores, TwigPlace};
use crate::selection::{head_mean_row, random_scores, top_indices};
use twigvlm_backbone::ops::DecodeOps;

/// A prefill's state for the decoder, and what pruning did.
#[derive(Debug)]
pub struct Prefill<B: Backend> {
    /// What a decoder continues from.
    pub state: PromptState<B>,
    /// What pruning kept; `None` when nothing was pruned.
    pub pruning: Option<PruningOutcome>,
}

/// What a pruned prefill kept.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PruningOutcome {
    pub policy: String,
    pub visual_budget: String,
    /// K: the first layer whose input is pruned.
    pub prune_layer: usize,
    /// K_f: the first layer that sees no visual token (the depth: no FinalWipe).
    pub final_wipe: usize,
    /// N_v: the image's visual tokens.
    pub visual_tokens: usize,
    /// R': visual tokens kept in layers K..K_f-1.
    pub r_prime: usize,
    /// The average visual tokens per layer that R' gives.
    pub avg_visual_tokens: f64,
    /// 0-based within the image's visual tokens, ascending.
    pub kept_visual_indices: Vec<usize>,
    /// The score that ranked each visual token (head-mean attention, or random draws).
    #[serde(skip)]
    pub visual_scores: Vec<f32>,
}

/// Runs the prompt `embeds` (`[1, prompt_len, hidden]`, the image at `image_span`) through
/// `base` under `spec`. The twig runs when the policy ranks with it or `keep_twig_cache` asks
/// for its cache (self-speculative decoding drafts from it). Every stage runs in chunks of
/// `steps` tokens, asking its interrupt before every layer of every chunk
/// ([`TtpError::Interrupted`]); ranking sees the whole prompt through the ranking layer before
/// any later layer runs.
pub fn prefill<'m, B: DecodeOps>(
    base: &'m LlamaDecoder<B>,
    twig: Option<&'m Twig<B>>,
    embeds: Tensor<B, 3>,
    image_span: Option<Range<usize>>,
    spec: &PruningSpec,
    keep_twig_cache: bool,
    steps: &PrefillSteps<'_, 'm, B>,
) -> Result<Prefill<B>> {
    let started = Instant::now();
    let device = embeds.device();
    let prompt_len = embeds.dims()[1];
    let num_layers = base.num_layers();
    let place = twig.map(|t| TwigPlace::of(&t.config));
    let plan = spec.plan(num_layers, place)?;
    let pruned = match (&plan, image_span) {
        (Some(plan), Some(span)) if !span.is_empty() => match plan.kept_visual_tokens(span.len()) {
            Some(_) if span.end >= prompt_len => return Err(TtpError::ImageAtPromptEnd),
            Some(r_prime) => Some((plan, span, r_prime)),
            None => None,
        },
        _ => None,
    };

    let Some((plan, span, r_prime)) = pruned else {
        let state = prefill_unpruned(base, twig.filter(|_| keep_twig_cache), embeds, steps)?;
        return Ok(Prefill { state: PromptState { time: started.elapsed(), ..state }, pruning: None });
    };
    let split = plan.layers.prune_layer;
    let query = prompt_len - 1;
    let probe_at = |layer: usize| AttentionProbe { rows: vec![query], layers: vec![layer] };
    let positions: Vec<usize> = (0..prompt_len).collect();
    let rope = base.rope(&positions, &device);
    let mut base_cache = KvCache::new(num_layers);

    let low_probe = match plan.scores {
        Scores::BaseLayer(layer) if layer < split => probe_at(layer),
        _ => AttentionProbe::default(),
    };
    let mut low = base.prefill_layers(embeds, &rope, 0..split, &mut base_cache, &low_probe, steps)?;
    let steps = &steps.under_way();

    let mut twig_cache = None;
    let mut twig_ranking = None;
    let ranks_with_twig = matches!(plan.scores, Scores::Twig | Scores::TwigHead);
    if let Some(twig) = twig.filter(|_| keep_twig_cache || ranks_with_twig) {
        let mut cache = twig.new_cache();
        twig_ranking = Some(match plan.scores {
            Scores::TwigHead => {
                let no_probe = AttentionProbe::default();
                let (_, last_input) =
                    twig.prefill_with_last_input(low.hidden.clone(), &rope, &mut cache, &no_probe, steps)?;
                let distribution = twig.pruning_distribution(last_input, &rope, query, &span);
                distribution.map(|scores| scores.into_data().convert::<f32>().into_vec::<f32>().expect("f32 scores"))
            }
            Scores::Twig => {
                let output =
                    twig.prefill(low.hidden.clone(), &rope, &mut cache, &probe_at(twig.config.t - 1), steps)?;
                output.attention.into_iter().next().map(|(_, probs)| head_mean_row(probs, span.clone()))
            }
            _ => {
                twig.prefill(low.hidden.clone(), &rope, &mut cache, &AttentionProbe::default(), steps)?;
                None
            }
        });
        twig_cache = Some(cache);
    }

    let visual_scores = match plan.scores {
        Scores::BaseLayer(_) if !low.attention.is_empty() => head_mean_row(low.attention.remove(0).1, span.clone()),
        Scores::BaseLayer(layer) => {
            // The ablation's deeper layer sees the unpruned prompt: layers K..N-1 run once more
            // on a scratch cache (only this policy computes anything twice).
            let mut scratch = KvCache::new(num_layers);
            let deeper = base.prefill_layers(
                low.hidden.clone(),
                &rope,
                split..layer + 1,
                &mut scratch,
                &probe_at(layer),
                steps,
            )?;
            head_mean_row(deeper.attention.into_iter().next().expect("probed layer").1, span.clone())
        }
        Scores::Twig | Scores::TwigHead => twig_ranking.flatten().expect("the twig ran and ranked"),
        Scores::Random { seed } => random_scores(span.len(), seed),
        Scores::Unranked => vec![0.0; span.len()],
    };
    let kept = top_indices(&visual_scores, r_prime);
    let pruned = PrunedRows { span: &span, kept: &kept, prompt_len };
    let top = run_pruned(base, low.hidden, &plan.layers, &pruned, &mut base_cache, steps)?;
    let last_logits = base.last_position_logits(top);
    let state = PromptState { base_cache, twig_cache, last_logits, prompt_len, time: started.elapsed() };
    Ok(Prefill { state, pruning: Some(outcome(plan, span.len(), kept, visual_scores)) })
}

/// Layers K..L-1 over the layer-K hidden states of a whole sequence (`[1, len, hidden]`) with
/// only the `kept` visual tokens (indices within `span`, ascending) and none from K_f on, as a
/// pruned prefill runs them: the last layer's hidden states and the position of each of their
/// rows. Teacher forcing a sequence that holds an answer after the prompt gives what that answer
/// costs under this selection (what a learned ranking is rewarded by).
pub fn forward_kept<B: DecodeOps>(
    base: &LlamaDecoder<B>,
    hidden_k: Tensor<B, 3>,
    layers: &LayerPlan,
    span: &Range<usize>,
    kept: &[usize],
) -> Result<(Tensor<B, 3>, Vec<usize>)> {
    let len = hidden_k.dims()[1];
    let pruned = PrunedRows { span, kept, prompt_len: len };
    let mut cache = KvCache::new(base.num_layers());
    let top = run_pruned(base, hidden_k, layers, &pruned, &mut cache, &PrefillSteps::uninterrupted())?;
    let kept_positions = kept.iter().map(|&i| span.start + i).filter(|_| !layers.has_final_wipe());
    let positions = (0..span.start).chain(kept_positions).chain(span.end..len).collect();
    Ok((top, positions))
}

/// Which rows of a prompt of `prompt_len` tokens go on past layer K: the text, and the `kept`
/// visual tokens (indices within `span`).
struct PrunedRows<'a> {
    span: &'a Range<usize>,
    kept: &'a [usize],
    prompt_len: usize,
}

/// Layers K..L-1 over the layer-K hidden states with only the kept visual tokens, and none from
/// K_f on.
fn run_pruned<'m, B: DecodeOps>(
    base: &'m LlamaDecoder<B>,
    hidden: Tensor<B, 3>,
    layers: &LayerPlan,
    pruned: &PrunedRows,
    cache: &mut KvCache<B>,
    steps: &PrefillSteps<'_, 'm, B>,
) -> Result<Tensor<B, 3>> {
    let PrunedRows { span, kept, prompt_len } = *pruned;
    let device = hidden.device();
    let text_after = span.end..prompt_len;
    let rows: Vec<usize> =
        (0..span.start).chain(kept.iter().map(|&i| span.start + i)).chain(text_after.clone()).collect();
    let kept_hidden = gather_rows(hidden, &rows);
    let middle = base.prefill_layers(
        kept_hidden,
        &base.rope(&rows, &device),
        layers.prune_layer..layers.wipe_layer,
        cache,
        &AttentionProbe::default(),
        steps,
    )?;
    if !layers.has_final_wipe() {
        return Ok(middle.hidden);
    }
    let text_rows: Vec<usize> = (0..span.start).chain(span.start + kept.len()..rows.len()).collect();
    let text_positions: Vec<usize> = (0..span.start).chain(text_after).collect();
    let text = gather_rows(middle.hidden, &text_rows);
    let top = base.prefill_layers(
        text,
        &base.rope(&text_positions, &device),
        layers.wipe_layer..layers.num_layers,
        cache,
        &AttentionProbe::default(),
        steps,
    )?;
    Ok(top.hidden)
}

/// `[1, seq, hidden]` → `[1, rows, hidden]`.
fn gather_rows<B: DecodeOps>(hidden: Tensor<B, 3>, rows: &[usize]) -> Tensor<B, 3> {
    let index = Tensor::<B, 1, Int>::from_data(
        TensorData::new(rows.iter().map(|&r| r as i32).collect::<Vec<_>>(), [rows.len()]),
        &hidden.device(),
    );
    hidden.select(1, index)
}

fn outcome(plan: &PruningPlan, visual_tokens: usize, kept: Vec<usize>, visual_scores: Vec<f32>) -> PruningOutcome {
    PruningOutcome {
        policy: plan.policy.to_string(),
        visual_budget: plan.budget.to_string(),
        prune_layer: plan.layers.prune_layer,
        final_wipe: plan.layers.wipe_layer,
        visual_tokens,
        r_prime: kept.len(),
        avg_visual_tokens: plan.layers.average_visual_tokens(kept.len(), visual_tokens),
        kept_visual_indices: kept,
        visual_scores,
    }
}
