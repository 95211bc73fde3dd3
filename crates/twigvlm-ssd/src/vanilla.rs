//! Plain autoregressive decoding: one prefill over the prompt, then one token per forward.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use burn::prelude::*;
use twigvlm_backbone::LlamaDecoder;
use twigvlm_ttp::Prefill;

use crate::error::{DecodeError, Result};
use crate::network::CausalNetwork;
use crate::sampling::Sampler;

/// Limits and stopping rules of one generation.
#[derive(Debug, Clone)]
pub struct DecodeConfig {
    pub max_new_tokens: usize,
    /// Generation stops after emitting any of these.
    pub eos_token_ids: Vec<u32>,
    /// Positions the model supports (`max_position_embeddings`).
    pub context_length: usize,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    MaxNewTokens,
    ContextFull,
    Cancelled,
}

/// Generated tokens and what it took.
#[derive(Debug, Clone)]
pub struct DecodeOutput {
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    /// Logits at the last prompt position.
    pub prompt_logits: Vec<f32>,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

impl DecodeConfig {
    /// A prompt must be non-empty and leave room for at least one generated token.
    pub fn check_prompt(&self, prompt_len: usize) -> Result<()> {
        if prompt_len == 0 || prompt_len >= self.context_length {
            return Err(DecodeError::PromptTooLong { prompt: prompt_len, context: self.context_length });
        }
        Ok(())
    }
}

/// Generates from prompt embeddings `[1, prompt_len, hidden]` (positions `0..prompt_len`) with
/// `model` alone and no pruning: the base model, or the twig's shallow network for twig-only
/// decoding. `on_token` sees every token as it is produced and may stop generation.
pub fn decode_vanilla<B: Backend, N: CausalNetwork<B>>(
    model: &N,
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
    let prompt_logits = logits_row(model.last_logits(prompt_embeds, &positions, &mut cache));
    let primed = Primed { cache, prompt_len, prompt_logits, prefill_time: started.elapsed() };
    decode_from(model, primed, config, sampler, on_token)
}

/// Plain decoding by the base model from a prefill run under any pruning policy (each base
/// layer's cache keeps the length the prefill left it with).
pub fn decode_vanilla_prefilled<B: Backend>(
    base: &LlamaDecoder<B>,
    prefill: Prefill<B>,
    config: &DecodeConfig,
    sampler: &mut Sampler,
    on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<DecodeOutput> {
    config.check_prompt(prefill.prompt_len)?;
    let primed = Primed {
        cache: prefill.base_cache,
        prompt_len: prefill.prompt_len,
        prompt_logits: prefill.last_logits,
        prefill_time: prefill.time,
    };
    decode_from(base, primed, config, sampler, on_token)
}

/// A network's state after the prompt.
struct Primed<C> {
    cache: C,
    prompt_len: usize,
    prompt_logits: Vec<f32>,
    prefill_time: Duration,
}

fn decode_from<B: Backend, N: CausalNetwork<B>>(
    model: &N,
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
        logits = logits_row(model.last_logits(model.embed(ids), &[position], &mut cache));
    };
    Ok(DecodeOutput { tokens: emitter.tokens, stop, prompt_logits, prefill_time, decode_time: started.elapsed() })
}

/// The generated tokens and the stopping rules every decoder shares.
pub(crate) struct Emitter<'a, F: FnMut(u32) -> ControlFlow<()>> {
    config: &'a DecodeConfig,
    on_token: F,
    pub tokens: Vec<u32>,
}

impl<'a, F: FnMut(u32) -> ControlFlow<()>> Emitter<'a, F> {
    pub fn new(config: &'a DecodeConfig, on_token: F) -> Self {
        Self { config, on_token, tokens: Vec::new() }
    }

    /// `MaxNewTokens` once no more tokens may be generated.
    pub fn budget_spent(&self) -> Option<StopReason> {
        (self.tokens.len() >= self.config.max_new_tokens).then_some(StopReason::MaxNewTokens)
    }

    /// Tokens that may still be generated.
    pub fn budget(&self) -> usize {
        self.config.max_new_tokens.saturating_sub(self.tokens.len())
    }

    /// Outputs `token`; returns why generation stops after it, if it does.
    pub fn emit(&mut self, token: u32) -> Option<StopReason> {
        self.tokens.push(token);
        if (self.on_token)(token).is_break() {
            return Some(StopReason::Cancelled);
        }
        if self.config.eos_token_ids.contains(&token) {
            return Some(StopReason::Eos);
        }
        self.budget_spent()
    }
}

/// `[1, 1, vocab]` → host vector.
pub(crate) fn logits_row<B: Backend>(logits: Tensor<B, 3>) -> Vec<f32> {
    logits.into_data().convert::<f32>().into_vec::<f32>().expect("f32 logits")
}
