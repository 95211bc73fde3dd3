//! Plain autoregressive decoding: one prefill over the prompt, then one token per forward.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use burn::prelude::*;
use twigvlm_backbone::{LlamaDecoder, PromptState, StackRunner};

use crate::decode::{logits_row, DecodeConfig, DecodeOutput, Emitter, StopReason};
use crate::error::Result;
use crate::network::CausalNetwork;
use crate::sampling::Sampler;
use twigvlm_backbone::ops::DecodeOps;

/// Generates from prompt embeddings `[1, prompt_len, hidden]` (positions `0..prompt_len`) with
/// `model` alone and no pruning: the base model, or the twig's shallow network for twig-only
/// decoding; `runner` runs its forwards. `on_token` sees every token as it is produced and may
/// stop generation.
pub fn decode_vanilla<'m, B: DecodeOps, N: CausalNetwork<'m, B>>(
    model: &N,
    runner: &dyn StackRunner<'m, B>,
    prompt_embeds: Tensor<B, 3>,
    config: &DecodeConfig,
    sampler: &mut Sampler,
    on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<DecodeOutput> {
    let prompt_len = prompt_embeds.dims()[1];
    config.check_prompt(prompt_len)?;
    let mut cache = model.new_cache();
    let started = Instant::now();
    let positions: Vec<usize> = (0..prompt_len).collect();
    let prompt_logits = logits_row(model.last_logits(runner, prompt_embeds, &positions, &mut cache));
    let primed = Primed { cache, prompt_len, prompt_logits, prefill_time: started.elapsed() };
    decode_from(model, runner, primed, config, sampler, on_token)
}

/// Plain decoding by the base model from the state of a prefill run under any pruning policy (each base
/// layer's cache keeps the length the prefill left it with); `runner` runs its forwards.
pub fn decode_vanilla_prefilled<'m, B: DecodeOps>(
    base: &'m LlamaDecoder<B>,
    runner: &dyn StackRunner<'m, B>,
    prompt: PromptState<B>,
    config: &DecodeConfig,
    sampler: &mut Sampler,
    on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<DecodeOutput> {
    config.check_prompt(prompt.prompt_len)?;
    let primed = Primed {
        cache: prompt.base_cache,
        prompt_len: prompt.prompt_len,
        prompt_logits: prompt.last_logits,
        prefill_time: prompt.time,
    };
    decode_from(&base, runner, primed, config, sampler, on_token)
}

/// A network's state after the prompt.
struct Primed<C> {
    cache: C,
    prompt_len: usize,
    prompt_logits: Vec<f32>,
    prefill_time: Duration,
}

fn decode_from<'m, B: DecodeOps, N: CausalNetwork<'m, B>>(
    model: &N,
    runner: &dyn StackRunner<'m, B>,
    primed: Primed<N::Cache>,
    config: &DecodeConfig,
    sampler: &mut Sampler,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<DecodeOutput> {
    let Primed { mut cache, prompt_len, prompt_logits, prefill_time } = primed;
    let device = model.device();
    let started = Instant::now();
    let mut emitter = Emitter::new(config, &mut on_token);
    let mut logits = prompt_logits.clone();
    let stop = loop {
        if let Some(stop) = emitter.budget_spent() {
            break stop;
        }
        if let Some(stop) = emitter.emit(sampler.sample(&logits)) {
            break stop;
        }
        let position = prompt_len + emitter.tokens.len() - 1;
        if position + 1 >= config.context_length {
            break StopReason::ContextFull;
        }
        let token = *emitter.tokens.last().expect("a token was just emitted");
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![token as i32], [1, 1]), &device);
        logits = logits_row(model.last_logits(runner, model.embed(ids), &[position], &mut cache));
    };
    Ok(DecodeOutput { tokens: emitter.tokens, stop, prompt_logits, prefill_time, decode_time: started.elapsed() })
}
