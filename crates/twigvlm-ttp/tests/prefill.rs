//! The pruned prefill on the tiny llava-hf fixture's language model (4 layers) with a 10-token
//! stand-in image: which tokens each layer keeps, what the selection reads, and the errors.

use std::ops::Range;

use burn::backend::Flex;
use burn::prelude::*;
use twigvlm_backbone::{
    load_llava, AttentionProbe, Interrupt, KvCache, LlamaDecoder, LoadOptions, LoadedLlava, PrefillSteps, PromptState,
};
use twigvlm_ttp::{prefill, LayerPlan, Prefill, PruningSpec, TtpError};
use twigvlm_twig::{Twig, TwigConfig};

type B = Flex;

const PROMPT: [i64; 16] = [3, 17, 42, 5, 99, 250, 7, 8, 9, 10, 11, 120, 121, 122, 64, 90];
const IMAGE: Range<usize> = 3..13;
const LAYERS: usize = 4;

fn fixture() -> LoadedLlava<B> {
    load_llava::<B>(&twigvlm_testkit::tiny_llava(), &LoadOptions::default(), &Default::default()).unwrap()
}

fn embeds(base: &LlamaDecoder<B>, ids: &[i64]) -> Tensor<B, 3> {
    base.embed(Tensor::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), &Default::default()))
}

fn spec(policy: &str, budget: &str, final_wipe: Option<usize>) -> PruningSpec {
    PruningSpec { policy: policy.parse().unwrap(), budget: Some(budget.parse().unwrap()), final_wipe }
}

fn run(base: &LlamaDecoder<B>, twig: Option<&Twig<B>>, spec: &PruningSpec) -> Prefill<B> {
    prefill(base, twig, embeds(base, &PROMPT), Some(IMAGE), spec, false, &PrefillSteps::uninterrupted()).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn keeping_every_visual_token_without_final_wipe_changes_nothing() {
    let llava = fixture();
    let base = &llava.model.language_model;
    let twig = Twig::init(base, &llava.config.text, TwigConfig::new(1, 2), &Default::default()).unwrap();
    let unpruned = run(base, Some(&twig), &PruningSpec::none());
    assert!(unpruned.pruning.is_none());
    // R̄ = 9.5 with K = 1, K_f = L = 4: R' = ceil((4·9.5 − 10) / 3) = N_v, and the gathered
    // sequence keeps its position ids.
    for policy in ["twig", "fastv", "random:1"] {
        let full = run(base, Some(&twig), &spec(policy, "9.5", Some(LAYERS)));
        let outcome = full.pruning.as_ref().expect("the pruning path ran");
        assert_eq!(outcome.kept_visual_indices, (0..10).collect::<Vec<_>>());
        assert!(max_abs_diff(&full.state.last_logits, &unpruned.state.last_logits) < 1e-5, "{policy}");
        assert_eq!(full.state.base_cache.lengths(), unpruned.state.base_cache.lengths());
    }
}

#[test]
fn every_layer_cache_has_the_planned_length() {
    let llava = fixture();
    let base = &llava.model.language_model;
    let twig = Twig::init(base, &llava.config.text, TwigConfig::new(1, 2), &Default::default()).unwrap();
    for (final_wipe, budget) in [(None, "4"), (Some(3), "30%"), (Some(2), "6"), (Some(LAYERS), "2")] {
        let spec = spec("twig", budget, final_wipe);
        let out =
            prefill(base, Some(&twig), embeds(base, &PROMPT), Some(IMAGE), &spec, true, &PrefillSteps::uninterrupted())
                .unwrap();
        let outcome = out.pruning.as_ref().unwrap();
        let plan = LayerPlan::new(LAYERS, 1, outcome.final_wipe).unwrap();
        assert_eq!(
            out.state.base_cache.lengths(),
            plan.cache_lengths(PROMPT.len(), IMAGE.len(), outcome.r_prime),
            "{spec:?}"
        );
        assert_eq!(
            out.state.twig_cache.as_ref().unwrap().lengths(),
            [PROMPT.len(); 2],
            "the twig keeps every visual token"
        );
        let kept = &outcome.kept_visual_indices;
        assert!(kept.windows(2).all(|w| w[0] < w[1]) && kept.iter().all(|&i| i < IMAGE.len()), "{kept:?}");
        assert_eq!(kept.len(), outcome.r_prime);
        let expected_average = (IMAGE.len() + (outcome.final_wipe - 1) * kept.len()) as f64 / LAYERS as f64;
        assert_eq!(outcome.avg_visual_tokens, expected_average);
    }
    // No FinalWipe requested: the paper's 24/32 of 4 layers is layer 3.
    assert_eq!(run(base, Some(&twig), &spec("twig", "4", None)).pruning.unwrap().final_wipe, 3);
}

/// Head-mean attention of the last prompt token over the image, from a plain unpruned forward.
fn reference_row(base: &LlamaDecoder<B>, twig: Option<&Twig<B>>, base_layer: usize) -> Vec<f32> {
    let positions: Vec<usize> = (0..PROMPT.len()).collect();
    let rope = base.rope(&positions, &Default::default());
    let mut cache = KvCache::new(LAYERS);
    let all_rows = AttentionProbe { rows: positions.clone(), layers: Vec::new() };
    let layers = if twig.is_some() { 0..1 } else { 0..LAYERS };
    let out = base.forward_layers(embeds(base, &PROMPT), &rope, layers, &mut cache, &all_rows);
    let probs = match twig {
        Some(twig) => twig.forward(out.hidden, &rope, &mut twig.new_cache(), &all_rows).attention.pop().unwrap().1,
        None => out.attention.into_iter().find(|(layer, _)| *layer == base_layer).unwrap().1,
    };
    // [1, heads, rows, keys]: the last row, mean over heads, the image's keys.
    let [_, heads, rows, keys] = probs.dims();
    let values = probs.into_data().convert::<f32>().into_vec::<f32>().unwrap();
    IMAGE
        .map(|key| (0..heads).map(|h| values[(h * rows + rows - 1) * keys + key]).sum::<f32>() / heads as f32)
        .collect()
}

#[test]
fn selections_read_the_attention_of_an_unpruned_forward() {
    let llava = fixture();
    let base = &llava.model.language_model;
    let twig = Twig::init(base, &llava.config.text, TwigConfig::new(1, 2), &Default::default()).unwrap();
    let twig_row = run(base, Some(&twig), &spec("twig", "3", None)).pruning.unwrap().visual_scores;
    assert!(max_abs_diff(&twig_row, &reference_row(base, Some(&twig), 0)) < 1e-5);
    // FastV reads layer K (1-indexed) = index 1 with K = 2 (no twig); vlm-layer:4 reads the
    // deepest layer, above the pruning point.
    for (policy, index) in [("fastv", 1), ("vlm-layer:1", 0), ("vlm-layer:4", 3)] {
        let row = run(base, None, &spec(policy, "3", None)).pruning.unwrap().visual_scores;
        assert!(max_abs_diff(&row, &reference_row(base, None, index)) < 1e-5, "{policy}");
    }
}

#[test]
fn nothing_is_pruned_when_there_is_nothing_to_prune() {
    let llava = fixture();
    let base = &llava.model.language_model;
    let unpruned = run(base, None, &PruningSpec::none());
    // Text only.
    let text_only = prefill(
        base,
        None,
        embeds(base, &PROMPT),
        None,
        &spec("fastv", "3", None),
        false,
        &PrefillSteps::uninterrupted(),
    )
    .unwrap();
    assert!(text_only.pruning.is_none());
    assert!(max_abs_diff(&text_only.state.last_logits, &unpruned.state.last_logits) < 1e-6);
    // A budget of every visual token (FinalWipe included), or above them.
    for budget in ["10", "100%", "11"] {
        let generous = run(base, None, &spec("random", budget, Some(3)));
        assert!(generous.pruning.is_none(), "{budget}");
        assert_eq!(generous.state.base_cache.lengths(), [PROMPT.len(); LAYERS]);
    }
}

#[test]
fn final_wipe_alone_drops_the_image_from_its_layer_on() {
    let llava = fixture();
    let base = &llava.model.language_model;
    let alone = PruningSpec { policy: "none".parse().unwrap(), budget: None, final_wipe: Some(3) };
    let out = run(base, None, &alone);
    let outcome = out.pruning.expect("FinalWipe ran");
    assert_eq!(outcome.kept_visual_indices, (0..IMAGE.len()).collect::<Vec<_>>());
    let text = PROMPT.len() - IMAGE.len();
    assert_eq!(out.state.base_cache.lengths(), [PROMPT.len(), PROMPT.len(), PROMPT.len(), text]);
}

#[test]
fn an_interrupt_stops_the_prefill_between_layers() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let llava = fixture();
    let base = &llava.model.language_model;
    let twig = Twig::init(base, &llava.config.text, TwigConfig::new(1, 2), &Default::default()).unwrap();
    for spec in [PruningSpec::none(), spec("twig", "3", None), spec("vlm-layer:4", "3", None)] {
        // In chunks of 5 tokens, so that stops fall inside the prompt as well as between stages.
        let run_until = |requested: &(dyn Fn() -> bool + Sync)| {
            let steps = PrefillSteps::new(Interrupt::new(requested)).with_chunk_tokens(5);
            prefill(base, Some(&twig), embeds(base, &PROMPT), Some(IMAGE), &spec, true, &steps)
        };
        // Every check of a whole prefill, counted; then the prefill stopped at each of them.
        let checks = AtomicUsize::new(0);
        assert!(run_until(&|| checks.fetch_add(1, Ordering::Relaxed) == usize::MAX).is_ok());
        let total = checks.load(Ordering::Relaxed);
        assert!(total > PROMPT.len().div_ceil(5) * LAYERS, "{spec:?}: {total} checks");
        for stop_at in 0..total {
            let seen = AtomicUsize::new(0);
            let result = run_until(&|| seen.fetch_add(1, Ordering::Relaxed) >= stop_at);
            assert!(matches!(result, Err(TtpError::Interrupted(_))), "{spec:?} stopped at check {stop_at}");
        }
    }
}

#[test]
fn bad_requests_get_clear_errors() {
    let llava = fixture();
    let base = &llava.model.language_model;
    let attempt = |spec: &PruningSpec, span: Range<usize>| {
        prefill(base, None, embeds(base, &PROMPT), Some(span), spec, false, &PrefillSteps::uninterrupted()).err()
    };
    assert!(matches!(attempt(&spec("twig", "3", None), IMAGE), Some(TtpError::MissingTwig)));
    assert!(matches!(attempt(&spec("random", "3", Some(2)), IMAGE), Some(TtpError::InvalidLayers(_))));
    assert!(matches!(attempt(&spec("random", "3", Some(5)), IMAGE), Some(TtpError::InvalidLayers(_))));
    assert!(matches!(attempt(&spec("vlm-layer:5", "3", None), IMAGE), Some(TtpError::InvalidLayers(_))));
    assert!(matches!(
        attempt(&PruningSpec { budget: None, ..spec("fastv", "3", None) }, IMAGE),
        Some(TtpError::MissingBudget(_))
    ));
    assert!(matches!(attempt(&spec("fastv", "3", None), 6..16), Some(TtpError::ImageAtPromptEnd)));
    let message = attempt(&spec("random", "3", Some(2)), IMAGE).unwrap().to_string();
    assert!(message.contains("K_f=2") && message.contains("K=2"), "{message}");
}

/// Every layer's cached keys and values, as f32.
fn cache_values(cache: &KvCache<B>) -> Vec<Vec<f32>> {
    let host = |t: Tensor<B, 4>| t.into_data().convert::<f32>().into_vec::<f32>().unwrap();
    (0..cache.num_layers())
        .map(|layer| cache.layer(layer).entries().map_or_else(Vec::new, |(k, v)| [host(k), host(v)].concat()))
        .collect()
}

fn argmax(logits: &[f32]) -> usize {
    logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap()
}

/// `tokens` greedy tokens continuing a prefill through every base layer.
fn greedy(base: &LlamaDecoder<B>, state: &PromptState<B>, tokens: usize) -> Vec<usize> {
    let mut cache = state.base_cache.clone();
    let mut logits = state.last_logits.clone();
    let mut out = Vec::with_capacity(tokens);
    for position in state.prompt_len..state.prompt_len + tokens {
        let next = argmax(&logits);
        out.push(next);
        let rope = base.rope(&[position], &Default::default());
        let hidden =
            base.forward_layers(embeds(base, &[next as i64]), &rope, 0..LAYERS, &mut cache, &AttentionProbe::default());
        logits = base.last_position_logits(hidden.hidden);
    }
    out
}

#[test]
fn a_prefill_in_chunks_gives_the_caches_selection_and_tokens_of_one_forward() {
    const TOLERANCE: f32 = 1e-5;
    const TOKENS: usize = 6;
    let llava = fixture();
    let base = &llava.model.language_model;
    let twig = Twig::init(base, &llava.config.text, TwigConfig::new(1, 2), &Default::default()).unwrap();
    let specs = [
        PruningSpec::none(),
        spec("twig", "4", Some(3)),
        spec("twig", "30%", Some(LAYERS)),
        spec("fastv", "3", None),
        spec("vlm-layer:4", "3", Some(3)),
        spec("random:1", "4", Some(2)),
    ];
    let run_in = |spec: &PruningSpec, chunk: usize| {
        let steps = PrefillSteps::uninterrupted().with_chunk_tokens(chunk);
        prefill(base, Some(&twig), embeds(base, &PROMPT), Some(IMAGE), spec, true, &steps).unwrap()
    };
    for spec in &specs {
        let whole = run_in(spec, PROMPT.len());
        let whole_tokens = greedy(base, &whole.state, TOKENS);
        let whole_base = cache_values(&whole.state.base_cache);
        let whole_twig = cache_values(whole.state.twig_cache.as_ref().unwrap());
        // Chunk edges fall everywhere: inside the image, on its edges, next to the last token.
        for chunk in 1..PROMPT.len() {
            let chunked = run_in(spec, chunk);
            let label = format!("{spec:?} in chunks of {chunk}");
            let selection = |p: &Prefill<B>| p.pruning.as_ref().map(|o| o.kept_visual_indices.clone());
            assert_eq!(selection(&chunked), selection(&whole), "{label}");
            if let (Some(a), Some(b)) = (&chunked.pruning, &whole.pruning) {
                assert!(max_abs_diff(&a.visual_scores, &b.visual_scores) < TOLERANCE, "{label}");
            }
            assert_eq!(chunked.state.base_cache.lengths(), whole.state.base_cache.lengths(), "{label}");
            let caches = cache_values(&chunked.state.base_cache)
                .into_iter()
                .zip(&whole_base)
                .chain(cache_values(chunked.state.twig_cache.as_ref().unwrap()).into_iter().zip(&whole_twig));
            for (layer, (a, b)) in caches.enumerate() {
                assert!(max_abs_diff(&a, b) < TOLERANCE, "{label}: cache {layer}");
            }
            assert!(max_abs_diff(&chunked.state.last_logits, &whole.state.last_logits) < TOLERANCE, "{label}");
            assert_eq!(greedy(base, &chunked.state, TOKENS), whole_tokens, "{label}");
        }
    }
}
