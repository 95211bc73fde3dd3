//! The cost of one full decoding step of the language model against the number of rows it runs
//! (one token, or the few of a draft verification or of a batch): every layer with its norms,
//! attention over a warm KV cache and the cache append, the final norm and the LM head, and the
//! logits read back to the host. This curve is what speculative decoding and batching live on;
//! [`time_batched_steps`] times the same step for several requests side by side, one row each.

use std::time::Instant;

use burn::prelude::*;
use serde::Serialize;
use twigvlm_backbone::llama::runner::{run_heads, run_stacks};
use twigvlm_backbone::ops::DecodeOps;
use twigvlm_backbone::{AttentionProbe, KvCache, LlamaDecoder};

/// What [`time_steps`] measures.
#[derive(Debug, Clone)]
pub struct StepOptions {
    /// Row counts to time.
    pub rows: Vec<usize>,
    /// Tokens in the cache before each timed step.
    pub cache: usize,
    /// Timed steps per row count (after one untimed step); the median is reported.
    pub repeats: usize,
}

/// One row count's step time.
#[derive(Debug, Clone, Serialize)]
pub struct StepTime {
    pub rows: usize,
    /// Median milliseconds per step.
    pub ms: f64,
    /// `ms` over the one-row step's `ms` (when one row was timed).
    pub relative_to_one_row: Option<f64>,
}

/// Times steps of `rows` new tokens after a cache of `options.cache` tokens, for each row count.
pub fn time_steps<B: DecodeOps>(model: &LlamaDecoder<B>, options: &StepOptions, device: &B::Device) -> Vec<StepTime> {
    let mut cache = KvCache::new(model.num_layers());
    let vocab = model.vocab_size();
    let tokens = |start: usize, count: usize| {
        // Spread ids over the vocabulary; their values do not change the cost.
        let ids: Vec<i64> = (start..start + count).map(|i| ((i * 7919 + 13) % vocab) as i64).collect();
        model.embed(Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, count]), device))
    };
    let step = |cache: &mut KvCache<B>, rows: usize| {
        let positions: Vec<usize> = (options.cache..options.cache + rows).collect();
        let rope = model.rope(&positions, device);
        let layers = 0..model.num_layers();
        let hidden =
            model.forward_layers(tokens(options.cache, rows), &rope, layers, cache, &AttentionProbe::default());
        let logits = model.logits(hidden.hidden).into_data();
        cache.truncate_last(rows).expect("the step appended these rows");
        logits
    };
    let rope = model.rope(&(0..options.cache).collect::<Vec<_>>(), device);
    let prompt = tokens(0, options.cache);
    model.forward_layers(prompt, &rope, 0..model.num_layers(), &mut cache, &AttentionProbe::default());
    time_each(options, |rows| {
        step(&mut cache, rows);
    })
}

/// Times steps of one new token for each of `requests` requests side by side, each with its own
/// cache of `options.cache` tokens, as a batch of decoding requests runs them: the rows share
/// every linear layer and the head, attention runs per request ([`run_stacks`], [`run_heads`]).
/// `options.rows` are the request counts.
pub fn time_batched_steps<B: DecodeOps>(
    model: &LlamaDecoder<B>,
    options: &StepOptions,
    device: &B::Device,
) -> Vec<StepTime> {
    let vocab = model.vocab_size();
    let token = |request: usize| {
        let id = ((request * 7919 + 13) % vocab) as i64;
        model.embed(Tensor::<B, 2, Int>::from_data(TensorData::new(vec![id], [1, 1]), device))
    };
    let mut prompt_cache = KvCache::new(model.num_layers());
    let rope = model.rope(&(0..options.cache).collect::<Vec<_>>(), device);
    let prompt = Tensor::cat((0..options.cache).map(token).collect(), 1);
    model.forward_layers(prompt, &rope, 0..model.num_layers(), &mut prompt_cache, &AttentionProbe::default());
    let most = options.rows.iter().copied().max().unwrap_or(0);
    let mut caches = vec![prompt_cache; most];
    let next = model.rope(&[options.cache], device);
    time_each(options, |requests| {
        let calls = caches[..requests]
            .iter_mut()
            .enumerate()
            .map(|(request, cache)| (model.stack_call(0..model.num_layers(), token(request), &next), cache))
            .collect();
        let hidden = run_stacks(calls).into_iter().map(|out| model.head_call(out.hidden)).collect();
        for logits in run_heads(hidden) {
            logits.into_data();
        }
        for cache in &mut caches[..requests] {
            cache.truncate_last(1).expect("the step appended one row");
        }
    })
}

/// The median of `options.repeats` timed runs of `step(n)` (after one untimed run) for each `n`
/// of `options.rows`, and each relative to `n = 1`.
fn time_each(options: &StepOptions, mut step: impl FnMut(usize)) -> Vec<StepTime> {
    let mut times: Vec<StepTime> = Vec::new();
    for &rows in &options.rows {
        step(rows);
        let mut ms: Vec<f64> = (0..options.repeats.max(1))
            .map(|_| {
                let started = Instant::now();
                step(rows);
                started.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        times.push(StepTime { rows, ms: ms[ms.len() / 2], relative_to_one_row: None });
    }
    if let Some(one) = times.iter().find(|t| t.rows == 1).map(|t| t.ms) {
        times.iter_mut().for_each(|t| t.relative_to_one_row = Some(t.ms / one));
    }
    times
}
