//! The speed benchmark: every mode (a prefill policy with a decoder) answers the same prompts in
//! one process, interleaved round-robin so that machine noise hits all modes alike, after one
//! untimed warm-up each. Speed-ups are ratios to `vanilla` from the same run.

use image::DynamicImage;
use serde::Serialize;
use serde_with::{DeserializeFromStr, SerializeDisplay};
use strum::{Display, EnumMessage, EnumString, VariantArray};
use twigvlm_backbone::ops::DecodeOps;
use twigvlm_engine::{
    uses_twig, DecoderKind, DraftConfig, DraftLength, DraftTree, Engine, GenerateRequest, PrefillPolicy, Prompt,
    PruningSpec, VisualBudget,
};
use twigvlm_ssd::SpeculativeStats;

/// A benchmarked way of generating.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Display,
    EnumString,
    VariantArray,
    EnumMessage,
    SerializeDisplay,
    DeserializeFromStr,
)]
pub enum BenchMode {
    /// Unpruned prefill, plain decoding.
    #[strum(serialize = "vanilla")]
    Vanilla,
    /// FastV pruning, plain decoding.
    #[strum(serialize = "fastv")]
    FastV,
    /// Twig-guided pruning, plain decoding.
    #[strum(serialize = "ttp")]
    Ttp,
    /// Unpruned prefill, self-speculative decoding.
    #[strum(serialize = "ssd")]
    Ssd,
    /// Twig-guided pruning and self-speculative decoding (TwigVLM).
    #[strum(serialize = "ttp+ssd")]
    TtpSsd,
    /// Unpruned prefill, self-speculative decoding with the adaptive draft length.
    #[strum(serialize = "ssd-adaptive")]
    SsdAdaptive,
    /// Unpruned prefill, self-speculative decoding drafting a tree ([`BenchOptions::draft_tree`]).
    #[strum(serialize = "ssd-tree")]
    SsdTree,
    /// Twig-guided pruning and self-speculative decoding drafting a tree.
    #[strum(serialize = "ttp+ssd-tree")]
    TtpSsdTree,
}

impl BenchMode {
    /// Whether the mode runs the twig (and needs one attached).
    pub fn uses_twig(self) -> bool {
        let any_budget = VisualBudget::Tokens(0.0);
        uses_twig(self.decoder(), &self.pruning(any_budget))
    }

    fn decoder(self) -> DecoderKind {
        match self {
            BenchMode::Vanilla | BenchMode::FastV | BenchMode::Ttp => DecoderKind::Base,
            BenchMode::Ssd
            | BenchMode::TtpSsd
            | BenchMode::SsdAdaptive
            | BenchMode::SsdTree
            | BenchMode::TtpSsdTree => DecoderKind::Ssd,
        }
    }

    /// How a speculative mode drafts: `chain`'s cap and threshold, the adaptive length or the
    /// tree `tree` where the mode says so.
    fn draft(self, chain: DraftConfig, tree: DraftTree) -> DraftConfig {
        match self {
            BenchMode::SsdAdaptive => DraftConfig { length: DraftLength::Adaptive, ..chain },
            BenchMode::SsdTree | BenchMode::TtpSsdTree => DraftConfig { tree: Some(tree), ..chain },
            _ => chain,
        }
    }

    fn policy(self) -> PrefillPolicy {
        match self {
            BenchMode::Vanilla | BenchMode::Ssd | BenchMode::SsdAdaptive | BenchMode::SsdTree => PrefillPolicy::None,
            BenchMode::FastV => PrefillPolicy::FastV,
            BenchMode::Ttp | BenchMode::TtpSsd | BenchMode::TtpSsdTree => PrefillPolicy::Twig,
        }
    }

    /// The mode whose greedy output this one must reproduce exactly (same policy, plain decoding).
    fn baseline(self) -> BenchMode {
        match self {
            BenchMode::Ssd | BenchMode::SsdAdaptive | BenchMode::SsdTree => BenchMode::Vanilla,
            BenchMode::TtpSsd | BenchMode::TtpSsdTree => BenchMode::Ttp,
            other => other,
        }
    }

    fn pruning(self, budget: VisualBudget) -> PruningSpec {
        match self.policy() {
            PrefillPolicy::None => PruningSpec::none(),
            policy => PruningSpec { policy, budget: Some(budget), final_wipe: None },
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub modes: Vec<BenchMode>,
    pub max_new_tokens: usize,
    /// R̄ of the pruning modes.
    pub visual_budget: VisualBudget,
    /// Timed passes over the prompts.
    pub repeats: usize,
    /// The draft tree of the tree modes.
    pub draft_tree: DraftTree,
    /// The chain's cap and threshold (the speculative modes; its length and tree are set per mode).
    pub chain: DraftConfig,
}

/// One prompt of the benchmark.
#[derive(Debug, Clone)]
pub struct BenchPrompt {
    pub prompt: String,
    pub image: Option<DynamicImage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub mode: BenchMode,
    /// New tokens per second of the whole generation (prefill included).
    pub tokens_per_s: f64,
    /// Mean per generation.
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub new_tokens: f64,
    /// `tokens_per_s` / vanilla's (`None` without a vanilla row).
    pub rel_spd: Option<f64>,
    /// Drafted tokens accepted per verification round (speculative modes).
    pub mean_accepted: Option<f64>,
    pub acceptance_rate: Option<f64>,
    /// Mean per generation, of `decode_ms` (speculative modes): drafting and verification
    /// forwards ([`SpeculativeStats`]); the rest is choosing tokens and cropping caches.
    pub draft_ms: Option<f64>,
    pub verify_ms: Option<f64>,
    /// Every output equals the same policy's plain greedy output.
    pub identical_to_baseline: bool,
    /// The earliest new-token index, over the prompts, at which an output leaves the baseline's
    /// (`None` when identical): a late one points at rounding near a tie, an early one at a bug.
    pub first_divergence: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub prompts: usize,
    pub repeats: usize,
    pub max_new_tokens: usize,
    pub visual_budget: String,
    pub rows: Vec<BenchRow>,
}

#[derive(Default)]
struct Tally {
    runs: usize,
    new_tokens: usize,
    prefill_ms: f64,
    decode_ms: f64,
    speculative: Option<SpeculativeStats>,
    /// Each prompt's output of the last pass.
    outputs: Vec<Vec<u32>>,
}

/// Runs every mode on every prompt: one warm-up pass, then `repeats` timed passes with the
/// modes interleaved per prompt. Baselines missing from `modes` run once, untimed.
pub fn run_bench<B: DecodeOps>(
    engine: &Engine<B>,
    prompts: &[BenchPrompt],
    options: &BenchOptions,
    mut on_generation: impl FnMut(),
) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(!prompts.is_empty(), "the benchmark needs at least one prompt");
    let generate = |mode: BenchMode, prompt: &BenchPrompt| {
        let request = GenerateRequest {
            decoder: mode.decoder(),
            pruning: mode.pruning(options.visual_budget),
            draft: mode.draft(options.chain, options.draft_tree),
            ..GenerateRequest::greedy(Prompt::User(prompt.prompt.clone()), prompt.image.clone(), options.max_new_tokens)
        };
        engine.generate(&request, |_| std::ops::ControlFlow::Continue(()))
    };
    let mut tallies: Vec<Tally> = options.modes.iter().map(|_| Tally::default()).collect();
    for pass in 0..=options.repeats {
        for prompt in prompts {
            for (mode, tally) in options.modes.iter().zip(&mut tallies) {
                let result = generate(*mode, prompt)?;
                on_generation();
                // One line per generation, so that a run cut short (a GPU call's time limit) still
                // tells what it measured.
                tracing::info!(
                    pass,
                    %mode,
                    new_tokens = result.stats.new_tokens,
                    prefill_ms = result.stats.prefill_ms,
                    decode_ms = result.stats.decode_ms,
                    "bench generation"
                );
                if pass == 0 {
                    continue; // warm-up
                }
                tally.runs += 1;
                tally.new_tokens += result.stats.new_tokens;
                tally.prefill_ms += result.stats.prefill_ms;
                tally.decode_ms += result.stats.decode_ms;
                if let Some(s) = result.stats.speculative {
                    let sum = tally.speculative.get_or_insert_with(SpeculativeStats::default);
                    sum.add(&s);
                }
                if pass == options.repeats {
                    tally.outputs.push(result.generated_ids);
                }
            }
        }
    }
    let mut rows = Vec::with_capacity(tallies.len());
    for (mode, tally) in options.modes.iter().zip(&tallies) {
        let baseline = mode.baseline();
        let baseline_outputs = match options.modes.iter().position(|m| *m == baseline) {
            Some(i) => tallies[i].outputs.clone(),
            None => {
                let mut outputs = Vec::with_capacity(prompts.len());
                for prompt in prompts {
                    outputs.push(generate(baseline, prompt)?.generated_ids);
                    on_generation();
                }
                outputs
            }
        };
        let first_divergence = tally
            .outputs
            .iter()
            .zip(&baseline_outputs)
            .filter_map(|(output, reference)| first_difference(output, reference))
            .min();
        let runs = tally.runs.max(1) as f64;
        let seconds = (tally.prefill_ms + tally.decode_ms) / 1e3;
        rows.push(BenchRow {
            mode: *mode,
            tokens_per_s: if seconds > 0.0 { tally.new_tokens as f64 / seconds } else { 0.0 },
            prefill_ms: tally.prefill_ms / runs,
            decode_ms: tally.decode_ms / runs,
            new_tokens: tally.new_tokens as f64 / runs,
            rel_spd: None,
            mean_accepted: tally.speculative.as_ref().map(SpeculativeStats::mean_accepted),
            acceptance_rate: tally.speculative.as_ref().map(SpeculativeStats::acceptance_rate),
            draft_ms: tally.speculative.as_ref().map(|s| s.draft_ms / runs),
            verify_ms: tally.speculative.as_ref().map(|s| s.verify_ms / runs),
            identical_to_baseline: first_divergence.is_none(),
            first_divergence,
        });
    }
    let vanilla = rows.iter().find(|r| r.mode == BenchMode::Vanilla).map(|r| r.tokens_per_s);
    for row in &mut rows {
        row.rel_spd = vanilla.filter(|&v| v > 0.0).map(|v| row.tokens_per_s / v);
    }
    Ok(BenchReport {
        prompts: prompts.len(),
        repeats: options.repeats,
        max_new_tokens: options.max_new_tokens,
        visual_budget: options.visual_budget.to_string(),
        rows,
    })
}

/// The first index at which two token sequences differ, counting a missing token as a difference.
fn first_difference(a: &[u32], b: &[u32]) -> Option<usize> {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => Some(i),
        None if a.len() != b.len() => Some(a.len().min(b.len())),
        None => None,
    }
}

/// Generations [`run_bench`] runs at most (for a progress bar).
pub fn generation_count(prompts: usize, options: &BenchOptions) -> usize {
    let missing = options.modes.iter().filter(|m| !options.modes.contains(&m.baseline())).count();
    prompts * (options.modes.len() * (options.repeats + 1) + missing)
}

#[cfg(test)]
mod tests {
    use super::first_difference;

    #[test]
    fn first_difference_finds_the_earliest_mismatch_or_a_length_change() {
        assert_eq!(first_difference(&[1, 2, 3], &[1, 2, 3]), None);
        assert_eq!(first_difference(&[1, 2, 3], &[1, 5, 3]), Some(1));
        assert_eq!(first_difference(&[1, 2], &[1, 2, 3]), Some(2));
        assert_eq!(first_difference(&[], &[]), None);
    }
}
