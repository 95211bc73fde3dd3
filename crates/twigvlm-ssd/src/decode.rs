//! What every decoder shares: the limits and stopping rules of a generation ([`DecodeConfig`],
//! [`StopReason`]), what it returns ([`DecodeOutput`]) and the emitter that applies the rules to
//! each produced token.

use std::ops::ControlFlow;
use std::time::Duration;

use burn::prelude::*;
use serde_with::{DeserializeFromStr, SerializeDisplay};
use strum::{Display, EnumString, VariantArray};

use crate::error::{DecodeError, Result};
use twigvlm_backbone::ops::DecodeOps;

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
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Display, EnumString, VariantArray, SerializeDisplay, DeserializeFromStr,
)]
#[strum(serialize_all = "snake_case")]
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
pub(crate) fn logits_row<B: DecodeOps>(logits: Tensor<B, 3>) -> Vec<f32> {
    logits.into_data().convert::<f32>().into_vec::<f32>().expect("f32 logits")
}
