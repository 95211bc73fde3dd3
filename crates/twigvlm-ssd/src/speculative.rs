//! Self-speculative decoding: the twig's shallow network (base layers 0..K-1, then the twig)
//! drafts a chain of tokens, and the base checks them all in one forward over its layers K..L-1.
//! Nothing is computed twice: a drafted token's layer 0..K-1 KV entries go straight into the base
//! cache (the shallow network shares those layers with the base), and its layer-K hidden state is
//! kept as the verification input. The output follows the base's own distribution exactly:
//! greedy, it equals the base's greedy output; sampling, it is speculative sampling.
//!
//! One round, with `t` the last emitted token (not yet run):
//! 1. draft: run `t`, then each drafted token, through layers 0..K-1 and the twig; stop at
//!    `max_draft` drafted tokens (or the adaptive cap, [`DraftLength`]), when the twig's top
//!    probability is below `draft_threshold` (decided before drawing, so a drafted token is an unbiased draw from the twig), after a
//!    drafted end-of-sequence token, or at the token budget;
//! 2. verify: layers K..L-1 over the `n + 1` kept hidden states give the base's distribution
//!    after `t` and after every drafted token;
//! 3. accept drafted token x with probability min(1, p(x)/q(x)) (greedy: when it is the base's
//!    pick); at the first rejection draw from norm(max(0, p − q)) instead (greedy: the base's
//!    pick), and when all were accepted draw a bonus token from the last p; emit, and drop the
//!    rejected entries from every cache.

use std::ops::ControlFlow;
use std::time::Instant;

use serde_with::{DeserializeFromStr, SerializeDisplay};
use strum::{Display, EnumMessage, EnumString, VariantArray};
use twigvlm_backbone::{PromptState, StackRunner};

use crate::decode::{DecodeConfig, DecodeOutput, Emitter, StopReason};
use crate::error::{DecodeError, Result};
use crate::network::ShallowNetwork;
use crate::sampling::{Sampler, Sampling};
use crate::speculator::{Round, Speculator};
use crate::tree::DraftTree;
use twigvlm_backbone::ops::DecodeOps;

/// Drafting limits (the paper's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DraftConfig {
    /// Most tokens drafted per round.
    pub max_draft: usize,
    /// Drafting stops when the twig's probability of its own pick falls below this.
    pub draft_threshold: f32,
    pub length: DraftLength,
    /// Greedy decoding drafts this tree instead of a chain ([`crate::tree`]); the chain settings
    /// above then apply to sampled decoding only.
    pub tree: Option<DraftTree>,
    /// The twig drafts only among the first this many token ids, computing that many rows of its
    /// head instead of the whole vocabulary (`None`: all). Byte-pair vocabularies number their
    /// tokens roughly by frequency, so the common ones come first. Lossless: a token past the
    /// limit is never drafted but is emitted whenever the base picks it, and a sampled draft
    /// distribution that is zero past the limit keeps speculative sampling exact.
    pub vocab: Option<usize>,
}

/// The default [`DraftConfig::vocab`]. On the demo model (49 152 tokens, 2 CPU cores) drafting
/// among the first 16 384 or 8 192 ids accepted as many drafts per round as the whole vocabulary
/// (1.56 against 1.54) and cut drafting time by a quarter; 4 096 halved the accepted drafts.
pub const DEFAULT_DRAFT_VOCAB: usize = 16_384;

impl Default for DraftConfig {
    fn default() -> Self {
        Self {
            max_draft: 5,
            draft_threshold: 0.6,
            length: DraftLength::Fixed,
            tree: None,
            vocab: Some(DEFAULT_DRAFT_VOCAB),
        }
    }
}

/// How long a round's draft may be.
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
#[strum(serialize_all = "kebab-case")]
pub enum DraftLength {
    /// Up to `max_draft` every round (the paper).
    #[default]
    Fixed,
    /// Up to a cap that follows the twig's record (beyond the paper): one more after a round
    /// whose drafts, as many as the cap, were all accepted; one fewer after any other round (a
    /// rejection, or drafting stopped short by the confidence threshold). At zero a round is a
    /// plain base step: the twig does not run (the layer-K hidden states it will need are kept,
    /// and its cache catches up on them in one batched forward before it next drafts), and one
    /// draft is tried again after [`ADAPTIVE_RETRY_ROUNDS`] such rounds, twice as many after each
    /// retry that fails. A twig that rarely agrees with the base then costs little more than
    /// plain decoding.
    Adaptive,
}

/// Rounds without drafting before an adaptive cap of zero tries one draft again.
pub const ADAPTIVE_RETRY_ROUNDS: usize = 8;
/// The longest wait between retries (the wait doubles after each failed retry).
pub const ADAPTIVE_MAX_RETRY_ROUNDS: usize = 128;

/// The draft cap of the coming round.
struct DraftCap {
    config: DraftConfig,
    cap: usize,
    rounds_without_draft: usize,
    /// Rounds at a cap of zero before the next retry.
    retry_after: usize,
    /// The coming round is a retry after a pause.
    retrying: bool,
}

impl DraftCap {
    fn new(config: DraftConfig) -> Self {
        Self {
            config,
            cap: config.max_draft,
            rounds_without_draft: 0,
            retry_after: ADAPTIVE_RETRY_ROUNDS,
            retrying: false,
        }
    }

    fn limit(&self) -> usize {
        match self.config.length {
            DraftLength::Fixed => self.config.max_draft,
            DraftLength::Adaptive => self.cap,
        }
    }

    /// Adapts the cap to a round that drafted `drafted` tokens under it, `accepted` of them kept.
    fn record(&mut self, drafted: usize, accepted: usize) {
        debug_assert!(accepted <= drafted && drafted <= self.config.max_draft);
        if self.config.length == DraftLength::Fixed {
            return;
        }
        if self.cap == 0 {
            self.rounds_without_draft += 1;
            if self.rounds_without_draft >= self.retry_after {
                (self.cap, self.rounds_without_draft, self.retrying) = (1.min(self.config.max_draft), 0, true);
            }
            return;
        }
        let was_retry = std::mem::take(&mut self.retrying);
        if accepted > 0 {
            self.retry_after = ADAPTIVE_RETRY_ROUNDS;
        }
        if accepted == self.cap {
            self.cap = (self.cap + 1).min(self.config.max_draft);
        } else {
            self.cap -= 1;
            if self.cap == 0 && was_retry {
                // A retry that failed: wait longer before the next.
                self.retry_after = (self.retry_after * 2).min(ADAPTIVE_MAX_RETRY_ROUNDS);
            }
        }
    }
}

/// What the rounds did. No `PartialEq`: two runs that decide alike still take different times;
/// compare [`SpeculativeStats::counts`].
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SpeculativeStats {
    /// Draft-and-verify rounds (each emits at least one token).
    pub rounds: usize,
    pub drafted: usize,
    /// Drafted tokens the base agreed with.
    pub accepted: usize,
    /// Wall-clock milliseconds of the rounds' drafting: the round's tokens through base layers
    /// 0..K-1 (which the base needs too) and the twig, and the twig's logits.
    pub draft_ms: f64,
    /// Milliseconds of verification forwards: base layers K..L-1 over the round's tokens and the
    /// base's logits, read back. The rest of the decode time is choosing tokens and cropping
    /// caches. On asynchronous (GPU) backends work is timed where its results are read, which
    /// puts a draft's last shared-layer step into verification.
    pub verify_ms: f64,
}

impl SpeculativeStats {
    /// Rounds, drafted and accepted tokens: what the rounds decided, without their times.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.rounds, self.drafted, self.accepted)
    }

    /// Adds another generation's rounds (bench totals).
    pub fn add(&mut self, other: &SpeculativeStats) {
        self.rounds += other.rounds;
        self.drafted += other.drafted;
        self.accepted += other.accepted;
        self.draft_ms += other.draft_ms;
        self.verify_ms += other.verify_ms;
    }

    fn record(&mut self, round: &Round) {
        self.rounds += 1;
        self.drafted += round.drafted;
        self.accepted += round.accepted.len();
        self.draft_ms += round.time.draft.as_secs_f64() * 1e3;
        self.verify_ms += round.time.verify.as_secs_f64() * 1e3;
    }

    /// Mean accepted drafted tokens per round.
    pub fn mean_accepted(&self) -> f64 {
        self.accepted as f64 / self.rounds.max(1) as f64
    }

    /// Share of drafted tokens accepted.
    pub fn acceptance_rate(&self) -> f64 {
        self.accepted as f64 / self.drafted.max(1) as f64
    }
}

/// Self-speculative decoding from the state of a prefill (run under any pruning policy, with
/// the twig's cache kept): tokens distributed as the base's under `sampler` (greedy: exactly the base's
/// greedy tokens), produced in draft-and-verify rounds: `network` (the twig's shallow network)
/// drafts, its base verifies, and `runner` runs their forwards.
pub fn decode_speculative<'m, B: DecodeOps>(
    network: ShallowNetwork<'m, B>,
    runner: &dyn StackRunner<'m, B>,
    prompt: PromptState<B>,
    config: &DecodeConfig,
    draft: &DraftConfig,
    sampler: &mut Sampler,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<(DecodeOutput, SpeculativeStats)> {
    let PromptState { base_cache, twig_cache, last_logits: prompt_logits, prompt_len, time: prefill_time } = prompt;
    config.check_prompt(prompt_len)?;
    let twig_cache = twig_cache.ok_or(DecodeError::MissingTwigCache)?;
    let ShallowNetwork { base, twig } = network;
    let device = base.embed_tokens.weight.device();
    let mut run = Speculator {
        base,
        twig,
        runner,
        base_cache,
        twig_cache,
        twig_behind: Vec::new(),
        device,
        draft_vocab: draft.vocab.filter(|&n| n > 0 && n < base.vocab_size()),
        drafting: false,
    };

    let started = Instant::now();
    let mut stats = SpeculativeStats::default();
    let mut cap = DraftCap::new(*draft);
    let mut emitter = Emitter::new(config, &mut on_token);
    let stop = 'rounds: {
        if let Some(stop) = emitter.budget_spent() {
            break 'rounds stop;
        }
        let mut next = sampler.sample(&prompt_logits);
        loop {
            if let Some(stop) = emitter.emit(next) {
                break 'rounds stop;
            }
            // `next` is emitted but not yet run; it sits at `start`.
            let start = prompt_len + emitter.tokens.len() - 1;
            if start + 1 >= config.context_length {
                break 'rounds StopReason::ContextFull;
            }
            // Drafted tokens run at start+1.. and must leave room for the token after them.
            let room = emitter.budget().min(config.context_length - start - 2);
            let round = match (&draft.tree, sampler.sampling) {
                (Some(tree), Sampling::Greedy) => {
                    run.tree_round(next, start, tree.depth.min(room), tree, &config.eos_token_ids)
                }
                _ => {
                    let round = run.chain_round(
                        next,
                        start,
                        cap.limit().min(room),
                        draft.draft_threshold,
                        sampler,
                        &config.eos_token_ids,
                    )?;
                    cap.record(round.drafted, round.accepted.len());
                    round
                }
            };
            stats.record(&round);
            for &token in &round.accepted {
                if let Some(stop) = emitter.emit(token) {
                    break 'rounds stop;
                }
            }
            next = round.correction;
        }
    };
    Ok((
        DecodeOutput { tokens: emitter.tokens, stop, prompt_logits, prefill_time, decode_time: started.elapsed() },
        stats,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_adaptive_cap_follows_the_record_and_retries_after_a_pause() {
        let mut cap = DraftCap::new(DraftConfig {
            max_draft: 3,
            draft_threshold: 0.0,
            length: DraftLength::Adaptive,
            tree: None,
            vocab: None,
        });
        assert_eq!(cap.limit(), 3);
        cap.record(3, 3);
        assert_eq!(cap.limit(), 3, "never above max_draft");
        cap.record(3, 1);
        cap.record(2, 2);
        assert_eq!(cap.limit(), 3, "one fewer after a rejection, one more after a full acceptance");
        cap.record(1, 1);
        assert_eq!(cap.limit(), 2, "a draft stopped short by the threshold lowers the cap too");
        for _ in 0..2 {
            cap.record(0, 0);
        }
        assert_eq!(cap.limit(), 0);
        for _ in 0..ADAPTIVE_RETRY_ROUNDS - 1 {
            cap.record(0, 0);
            assert_eq!(cap.limit(), 0);
        }
        cap.record(0, 0);
        assert_eq!(cap.limit(), 1, "one draft is tried again");
        cap.record(1, 0);
        for _ in 0..2 * ADAPTIVE_RETRY_ROUNDS - 1 {
            cap.record(0, 0);
        }
        assert_eq!(cap.limit(), 0, "after a failed retry the wait doubles");
        cap.record(0, 0);
        assert_eq!(cap.limit(), 1);
        cap.record(1, 1);
        assert_eq!((cap.limit(), cap.retry_after), (2, ADAPTIVE_RETRY_ROUNDS), "an accepted draft resets the wait");
        let mut fixed = DraftCap::new(DraftConfig::default());
        fixed.record(5, 0);
        assert_eq!(fixed.limit(), 5);
    }
}
