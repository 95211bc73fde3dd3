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
use std::time::{Duration, Instant};

use burn::prelude::*;
use twigvlm_backbone::llama::RopeAngles;
use twigvlm_backbone::{AttentionProbe, KvCache, LlamaDecoder};
use twigvlm_ttp::Prefill;
use twigvlm_twig::Twig;

use crate::error::{DecodeError, Result};
use crate::sampling::{argmax, softmax, Sampler, Sampling};
use crate::tree::DraftTree;
use crate::vanilla::{logits_row, DecodeConfig, DecodeOutput, Emitter, StopReason};

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
}

impl Default for DraftConfig {
    fn default() -> Self {
        Self { max_draft: 5, draft_threshold: 0.6, length: DraftLength::Fixed, tree: None }
    }
}

/// How long a round's draft may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
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

impl DraftLength {
    pub const ALL: [DraftLength; 2] = [DraftLength::Fixed, DraftLength::Adaptive];

    pub fn name(self) -> &'static str {
        match self {
            DraftLength::Fixed => "fixed",
            DraftLength::Adaptive => "adaptive",
        }
    }
}

impl std::str::FromStr for DraftLength {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        DraftLength::ALL
            .into_iter()
            .find(|d| d.name() == text)
            .ok_or_else(|| format!("unknown draft length {text:?}: fixed or adaptive"))
    }
}

impl std::fmt::Display for DraftLength {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
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

/// What one draft-and-verify round decided.
pub(crate) struct Round {
    /// Drafted tokens the base checked.
    pub drafted: usize,
    /// The accepted drafted tokens, in order.
    pub accepted: Vec<u32>,
    /// The base's token after them.
    pub correction: u32,
    pub time: RoundTime,
}

/// Where a round's time went (see [`SpeculativeStats`]).
pub(crate) struct RoundTime {
    pub draft: Duration,
    pub verify: Duration,
}

impl RoundTime {
    /// Splits the time since `began` at `drafted` (drafting done) and now (verification done).
    pub(crate) fn since(began: Instant, drafted: Instant) -> Self {
        Self { draft: drafted - began, verify: drafted.elapsed() }
    }
}

/// The base model and its twig, with their caches.
pub(crate) struct Speculator<'a, B: Backend> {
    pub(crate) base: &'a LlamaDecoder<B>,
    pub(crate) twig: &'a Twig<B>,
    pub(crate) base_cache: KvCache<B>,
    pub(crate) twig_cache: KvCache<B>,
    /// Layer-K hidden states (and positions) of rounds without drafting, or of a tree round's
    /// last accepted token, which the twig has not run on yet.
    pub(crate) twig_behind: Vec<(Tensor<B, 3>, usize)>,
    probe: AttentionProbe,
    pub(crate) device: B::Device,
}

impl<B: Backend> Speculator<'_, B> {
    pub(crate) fn k(&self) -> usize {
        self.twig.config.k
    }

    /// Runs `embed` at `position` through the shared layers 0..K-1 only (a round without
    /// drafting); the twig catches up on it before it next drafts.
    fn lower(&mut self, embed: Tensor<B, 3>, position: usize) -> Tensor<B, 3> {
        let rope = self.base.rope(&[position], &self.device);
        let hidden = self.shared_layers(embed, &rope);
        self.twig_behind.push((hidden.clone(), position));
        hidden
    }

    /// The base's layers 0..K-1, which the twig shares (filling the base cache).
    fn shared_layers(&mut self, embeds: Tensor<B, 3>, rope: &RopeAngles<B>) -> Tensor<B, 3> {
        self.base.forward_layers(embeds, rope, 0..self.k(), &mut self.base_cache, &self.probe).hidden
    }

    /// Runs the twig's layers over the positions it missed, in one forward, so that its cache
    /// covers every position again.
    pub(crate) fn twig_catch_up(&mut self) {
        if self.twig_behind.is_empty() {
            return;
        }
        let (hidden, positions): (Vec<_>, Vec<_>) = self.twig_behind.drain(..).unzip();
        let rope = self.base.rope(&positions, &self.device);
        self.twig.forward(Tensor::cat(hidden, 1), &rope, &mut self.twig_cache, &self.probe);
    }

    /// Runs `embeds` at `positions` through the shared layers 0..K-1 and the twig's layers
    /// (filling both caches); returns the layer-K and the twig's last hidden states.
    fn shallow_hidden(&mut self, embeds: Tensor<B, 3>, positions: &[usize]) -> (Tensor<B, 3>, Tensor<B, 3>) {
        self.twig_catch_up();
        let rope = self.base.rope(positions, &self.device);
        let hidden = self.shared_layers(embeds, &rope);
        let twig_hidden = self.twig.forward(hidden.clone(), &rope, &mut self.twig_cache, &self.probe).hidden;
        (hidden, twig_hidden)
    }

    /// [`Self::shallow_hidden`] plus the twig's logits at the last position.
    fn shallow(&mut self, embeds: Tensor<B, 3>, positions: &[usize]) -> (Tensor<B, 3>, Vec<f32>) {
        let (hidden, twig_hidden) = self.shallow_hidden(embeds, positions);
        let seq = twig_hidden.dims()[1];
        (hidden, logits_row(self.twig.logits(twig_hidden.narrow(1, seq - 1, 1), &self.base.lm_head)))
    }

    /// Layers K..L-1 over layer-K hidden states at `positions`; the base's logits at every position.
    fn deep(&mut self, hidden: Tensor<B, 3>, positions: &[usize]) -> Vec<Vec<f32>> {
        let rope = self.base.rope(positions, &self.device);
        let layers = self.k()..self.base.num_layers();
        let top = self.base.forward_layers(hidden, &rope, layers, &mut self.base_cache, &self.probe).hidden;
        let rows = logits_row(self.base.logits(top));
        rows.chunks(rows.len() / positions.len()).map(<[f32]>::to_vec).collect()
    }

    fn embed(&self, token: u32) -> Tensor<B, 3> {
        self.base.embed(Tensor::from_data(TensorData::new(vec![token as i32], [1, 1]), &self.device))
    }

    /// One chain round from `token` (emitted, not yet run) at `start`: drafts up to `limit`
    /// tokens while the twig is confident, verifies them in one deep forward with speculative
    /// sampling (greedy: the matching prefix), and drops the rejected entries.
    fn chain_round(
        &mut self,
        mut token: u32,
        start: usize,
        limit: usize,
        threshold: f32,
        sampler: &mut Sampler,
        eos: &[u32],
    ) -> Result<Round> {
        let began = Instant::now();
        let (mut kept, mut drafted, mut draft_probs) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            let position = [start + drafted.len()];
            if drafted.len() == limit || (!drafted.is_empty() && eos.contains(&token)) {
                // Nothing more is drafted after this token: the twig needs only its cache
                // entry, and none now in a round that drafts nothing.
                let hidden = if limit == 0 {
                    self.lower(self.embed(token), position[0])
                } else {
                    self.shallow_hidden(self.embed(token), &position).0
                };
                kept.push(hidden);
                break;
            }
            let (hidden, twig_logits) = self.shallow(self.embed(token), &position);
            kept.push(hidden);
            if draft_confidence(sampler, &twig_logits) < threshold {
                break;
            }
            let q = sampler.distribution(&twig_logits);
            let pick = sampler.draw(&q);
            drafted.push(pick);
            draft_probs.push(q);
            token = pick;
        }

        let positions: Vec<usize> = (start..start + kept.len()).collect();
        let drafted_at = Instant::now();
        let deep_logits = self.deep(Tensor::cat(kept, 1), &positions);
        let time = RoundTime::since(began, drafted_at);
        let targets: Vec<Vec<f32>> = deep_logits.iter().map(|row| sampler.distribution(row)).collect();
        let (accepted, correction) = verify(&targets, &draft_probs, &drafted, sampler);
        self.discard(positions.len() - accepted - 1)?;
        drafted.truncate(accepted);
        Ok(Round { drafted: draft_probs.len(), accepted: drafted, correction, time })
    }

    /// Drops the last `count` entries of every cache (rejected drafts; every layer took the
    /// same new entries this round, whatever length pruning left it with).
    fn discard(&mut self, count: usize) -> Result<()> {
        debug_assert!(count == 0 || self.twig_behind.is_empty(), "only drafting rounds discard, and they run the twig");
        self.base_cache.truncate_last(count)?;
        self.twig_cache.truncate_last(count)?;
        Ok(())
    }
}

/// Self-speculative decoding after `prefill` (run under any pruning policy, with the twig's
/// cache kept): tokens distributed as the base's under `sampler` (greedy: exactly the base's
/// greedy tokens), produced in draft-and-verify rounds.
pub fn decode_speculative<B: Backend>(
    base: &LlamaDecoder<B>,
    twig: &Twig<B>,
    prefill: Prefill<B>,
    config: &DecodeConfig,
    draft: &DraftConfig,
    sampler: &mut Sampler,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<(DecodeOutput, SpeculativeStats)> {
    let Prefill { base_cache, twig_cache, last_logits: prompt_logits, prompt_len, time: prefill_time, .. } = prefill;
    config.check_prompt(prompt_len)?;
    let twig_cache = twig_cache.ok_or(DecodeError::MissingTwigCache)?;
    let device = base.embed_tokens.weight.device();
    let mut run = Speculator {
        base,
        twig,
        base_cache,
        twig_cache,
        twig_behind: Vec::new(),
        probe: AttentionProbe::default(),
        device,
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

/// The twig's top probability at the next position, known before anything is drawn: at
/// temperature 1 when greedy, else under the sampling rule.
fn draft_confidence(sampler: &Sampler, twig_logits: &[f32]) -> f32 {
    match sampler.sampling {
        Sampling::Greedy => softmax(twig_logits, 1.0)[argmax(twig_logits) as usize],
        Sampling::TopP { .. } => sampler.distribution(twig_logits).into_iter().fold(0.0, f32::max),
    }
}

/// Speculative sampling over one round: `targets[i]` is the base's distribution where
/// `drafted[i]` (drawn from `drafts[i]`) was proposed; `targets` has one more row, after the
/// last drafted token. Returns how many drafted tokens are accepted and the token after them.
pub fn verify(targets: &[Vec<f32>], drafts: &[Vec<f32>], drafted: &[u32], sampler: &mut Sampler) -> (usize, u32) {
    for (i, &token) in drafted.iter().enumerate() {
        let (p, q) = (&targets[i], &drafts[i]);
        let ratio = p[token as usize] / q[token as usize];
        if ratio >= 1.0 || sampler.uniform() < ratio {
            continue;
        }
        let residual: Vec<f32> = p.iter().zip(q).map(|(p, q)| (p - q).max(0.0)).collect();
        // p ≤ q everywhere only when p = q up to rounding, and then nothing is rejected in exact
        // arithmetic; draw from p itself.
        let correction = if residual.iter().any(|&r| r > 0.0) { sampler.draw(&residual) } else { sampler.draw(p) };
        return (i, correction);
    }
    (drafted.len(), sampler.draw(&targets[drafted.len()]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draft x ~ q, verify against p: the first emitted token must be distributed as p.
    #[test]
    fn speculative_sampling_emits_the_target_distribution() {
        let sampling = Sampling::TopP { temperature: 1.0, top_p: 1.0 };
        let mut sampler = Sampler::new(sampling, 7);
        let p = vec![0.5, 0.3, 0.15, 0.05, 0.0];
        let q = vec![0.1, 0.6, 0.1, 0.0, 0.2];
        let trials = 200_000;
        let mut counts = [0usize; 5];
        let mut accepted_total = 0;
        for _ in 0..trials {
            let x = sampler.draw(&q);
            let (accepted, correction) = verify(&[p.clone(), p.clone()], &[q.clone()], &[x], &mut sampler);
            accepted_total += accepted;
            counts[if accepted == 1 { x } else { correction } as usize] += 1;
        }
        for (token, &count) in counts.iter().enumerate() {
            let share = count as f64 / trials as f64;
            // 200k draws: standard error ≤ 0.0012.
            assert!((share - p[token] as f64).abs() < 0.006, "token {token}: {share} vs {}", p[token]);
        }
        // Acceptance rate = Σ min(p, q) = 0.1 + 0.3 + 0.1 = 0.5.
        assert!((accepted_total as f64 / trials as f64 - 0.5).abs() < 0.01);
    }

    #[test]
    fn the_adaptive_cap_follows_the_record_and_retries_after_a_pause() {
        let mut cap = DraftCap::new(DraftConfig {
            max_draft: 3,
            draft_threshold: 0.0,
            length: DraftLength::Adaptive,
            tree: None,
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

    #[test]
    fn greedy_verification_accepts_the_matching_prefix() {
        let mut sampler = Sampler::new(Sampling::Greedy, 0);
        let one_hot = |i: usize| (0..4).map(|j| if i == j { 1.0 } else { 0.0 }).collect::<Vec<f32>>();
        let targets = [one_hot(2), one_hot(1), one_hot(3)];
        let drafts = [one_hot(2), one_hot(0)];
        assert_eq!(verify(&targets, &drafts, &[2, 0], &mut sampler), (1, 1));
        assert_eq!(verify(&targets, &[one_hot(2), one_hot(1)], &[2, 1], &mut sampler), (2, 3));
    }
}
