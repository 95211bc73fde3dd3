//! What a generation returns.

use serde::Serialize;
use twigvlm_backbone::PromptTokens;
use twigvlm_ssd::{SpeculativeStats, StopReason};
use twigvlm_ttp::PruningOutcome;

/// Timings of one generation.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateStats {
    /// Vision tower + projector + prompt prefill.
    pub prefill_ms: f64,
    /// Decoding after the first token.
    pub decode_ms: f64,
    /// Tokens generated.
    pub new_tokens: usize,
    /// New tokens per second of decoding (the first token comes from the prefill).
    pub tokens_per_s: f64,
    /// Why generation ended.
    pub stop_reason: StopReason,
    /// Draft-and-verify rounds of the `ssd` decoder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speculative: Option<SpeculativeStats>,
    /// What token pruning kept (`r_prime`, `kept_visual_indices`, …), when it pruned.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub pruning: Option<PruningOutcome>,
    /// Prompt tokens whose caches came from an earlier prompt ([`crate::Engine::keep_prompt_caches`]):
    /// neither they nor the image among them ran again.
    pub reused_prompt_tokens: usize,
}

/// What a generation produced, plus the intermediate tensors `--dump-tensors` writes.
#[derive(Debug, Clone)]
pub struct GenerateResult {
    /// The prompt as the model saw it.
    pub prompt: PromptTokens,
    /// The generated token ids.
    pub generated_ids: Vec<u32>,
    /// The generated text.
    pub text: String,
    /// Timings and what the decoder and pruning did.
    pub stats: GenerateStats,
    /// `[3, size, size]` values fed to the vision tower (with `capture_tensors`).
    pub pixel_values: Option<(Vec<f32>, [usize; 3])>,
    /// Projector output `[visual_tokens, hidden]` (with `capture_tensors`).
    pub image_features: Option<(Vec<f32>, [usize; 2])>,
    /// Logits at the last prompt position.
    pub last_logits: Vec<f32>,
}
