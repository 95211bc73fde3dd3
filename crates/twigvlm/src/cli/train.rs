//! `twigvlm train vision|projector|projector-words|instruct`: the demo model's training stages (the
//! twig has its own command). The stages themselves are `twigvlm_train::stages`; this file turns
//! arguments into their inputs and reports what they wrote.

use std::path::PathBuf;

use twigvlm_data::eval_shapes;
use twigvlm_engine::{AutodiffJob, BackendKind};
use twigvlm_train::alignment::TunedLayerParts;
use twigvlm_train::stages::{
    train_alignment, train_patch_words, train_vision, AlignmentStage, LanguageStage, RunSettings, StageOutcome,
    VisionStage,
};

use super::named::named;
use twigvlm_backbone::ops::DecodeAutodiff;

#[derive(Debug, clap::Subcommand)]
pub enum TrainCommand {
    /// Stage 0: train the vision tower from scratch on shapes-world with per-patch heads.
    Vision(VisionArgs),
    /// Stage 1: train the projector between a trained vision tower and a language model, both frozen.
    Projector(ProjectorArgs),
    /// Stage 1 by regression: train the projector to map each patch onto the language model's
    /// embeddings of the words that describe it (colour, shape or "empty", row, column); no
    /// language-model layer runs, so it is minutes on a CPU.
    ProjectorWords(ProjectorArgs),
    /// Stage 2: train the projector and the language model's top layers together.
    Instruct(InstructArgs),
}

/// Options every stage shares.
#[derive(Debug, clap::Args)]
pub struct LoopArgs {
    /// Optimisation steps (default: the stage's own).
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Peak learning rate (default: the stage's own).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Share of the steps spent warming the learning rate up (default: the stage's own).
    #[arg(long)]
    pub warmup: Option<f64>,
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f32,
    #[arg(long, default_value_t = 100)]
    pub eval_every: usize,
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    /// Output directory: the trained tensors, training.json and the resumable checkpoint.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Seed of the random initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_parser = named::<BackendKind>(), default_value_t = BackendKind::Flex)]
    pub backend: BackendKind,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Wall-clock budget in seconds: the run measures its pace over its first steps and fits
    /// its length (and learning-rate schedule) to end inside it; --steps is then the most it runs.
    #[arg(long, value_parser = parse_seconds)]
    pub time_limit: Option<std::time::Duration>,
}

fn parse_seconds(text: &str) -> Result<std::time::Duration, String> {
    let seconds: f64 = text.parse().map_err(|e| format!("{text:?} is not a number of seconds: {e}"))?;
    std::time::Duration::try_from_secs_f64(seconds)
        .map_err(|e| format!("{text:?} is not a usable number of seconds: {e}"))
}

impl LoopArgs {
    pub fn settings(&self) -> RunSettings {
        RunSettings {
            steps: self.steps,
            batch_size: self.batch_size,
            lr: self.lr,
            warmup: self.warmup,
            weight_decay: self.weight_decay,
            eval_every: self.eval_every,
            checkpoint_every: self.checkpoint_every,
            out: self.out.clone(),
            resume: self.resume,
            seed: self.seed,
            show_progress: !self.quiet,
            time_limit: self.time_limit,
            kernels_per_shape: self.backend.compiles_kernels_per_shape(),
        }
    }
}

/// Prints the last held-out metrics of a stage and what it wrote.
pub fn report(outcome: &StageOutcome) {
    let summary = &outcome.summary;
    if let Some(eval) = summary.last_eval() {
        let metrics: Vec<String> = eval.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
        println!("{} trained in {:.0} s: {}", summary.stage, summary.seconds, metrics.join(", "));
    }
    println!("wrote {}", outcome.written.display());
}

#[derive(Debug, clap::Args)]
pub struct ProjectorArgs {
    /// Model directory whose config.json and preprocessor_config.json define the VLM.
    #[arg(long)]
    pub config: PathBuf,
    /// Output directory of `train vision` (vision_tower.safetensors).
    #[arg(long)]
    pub vision: PathBuf,
    /// The language model directory (e.g. from `twigvlm import gguf`).
    #[arg(long)]
    pub language_model: PathBuf,
    /// Training data: a shapes spec with a training seed; `turns=k` asks k questions per image
    /// (one conversation; with `instruct --freeze-projector` each question trains as if asked alone).
    #[arg(long, default_value = "shapes:seed=1,n=100000,turns=4")]
    pub data: String,
    /// Held-out data for the teacher-forced exact match.
    #[arg(long, default_value_t = eval_shapes(64, None))]
    pub eval_data: String,
    #[command(flatten)]
    pub run: LoopArgs,
}

#[derive(Debug, clap::Args)]
pub struct InstructArgs {
    #[command(flatten)]
    pub stage: ProjectorArgs,
    /// How many of the language model's top layers train.
    #[arg(long, default_value_t = 8)]
    pub lm_layers: usize,
    /// Output directory of `train projector` (or `projector-words`) to start the projector from
    /// (default: a fresh one).
    #[arg(long)]
    pub projector: Option<PathBuf>,
    /// Keep the projector from `--projector` as it is and tune only the top layers: the layers
    /// below them run without a graph, several times cheaper per step.
    #[arg(long, requires = "projector")]
    pub freeze_projector: bool,
    /// Tune only the attention of the top layers (MLPs and norms stay pretrained; the saved
    /// tuned file holds only the attention tensors, a quarter of a layer).
    #[arg(long)]
    pub attention_only: bool,
    /// Output directory of an earlier `train instruct` run to start the tuned layers from (its
    /// language_model_tuned.safetensors), e.g. one trained on easier scenes: a curriculum.
    #[arg(long)]
    pub tuned_from: Option<PathBuf>,
    /// Text-only conversations (LLaVA instruction JSON) mixed one for one with the --data
    /// conversations, so that the language model keeps answering as it did before this stage:
    /// e.g. the pretrained model's own answers to chat prompts (`twigvlm distill`), as LLaVA-1.5
    /// mixes text-only chats into its instruction data. Needs --freeze-projector.
    #[arg(long, requires = "freeze_projector")]
    pub replay_data: Option<PathBuf>,
    /// More training data mixed one for one with --data (repeatable): a dataset spec such as
    /// `easy-vqa:split=train`, so that the model learns questions phrased in other ways.
    #[arg(long)]
    pub mix_data: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct VisionArgs {
    /// Model directory whose config.json (vision_config) and preprocessor_config.json define the tower.
    #[arg(long)]
    pub config: PathBuf,
    /// Training data: a shapes spec with a training seed (below 1000000); batches wrap around after n.
    #[arg(long, default_value = "shapes:seed=0,n=100000")]
    pub data: String,
    /// Held-out data for the per-patch accuracy.
    #[arg(long, default_value_t = eval_shapes(128, None))]
    pub eval_data: String,
    #[command(flatten)]
    pub run: LoopArgs,
}

impl ProjectorArgs {
    fn stage(&self) -> LanguageStage {
        LanguageStage {
            config: self.config.clone(),
            vision: self.vision.clone(),
            language_model: self.language_model.clone(),
            data: self.data.clone(),
            eval_data: self.eval_data.clone(),
        }
    }
}

impl AutodiffJob for VisionArgs {
    type Output = anyhow::Result<()>;

    fn run<B: DecodeAutodiff>(self, device: B::Device) -> anyhow::Result<()> {
        let stage = VisionStage { config: self.config, data: self.data, eval_data: self.eval_data };
        report(&train_vision::<B>(&stage, &self.run.settings(), &device)?);
        Ok(())
    }
}

/// The language-side stages, run on the backend the arguments name.
enum LanguageJob {
    /// Stage 1 by regression onto the language model's word embeddings.
    PatchWords(LanguageStage, RunSettings),
    /// Stages 1 and 2 by next-token loss.
    Alignment(AlignmentStage, RunSettings),
}

impl AutodiffJob for LanguageJob {
    type Output = anyhow::Result<()>;

    fn run<B: DecodeAutodiff>(self, device: B::Device) -> anyhow::Result<()> {
        let outcome = match self {
            LanguageJob::PatchWords(stage, run) => train_patch_words::<B>(&stage, &run, &device)?,
            LanguageJob::Alignment(stage, run) => train_alignment::<B>(&stage, &run, &device)?,
        };
        report(&outcome);
        Ok(())
    }
}

pub fn run(command: TrainCommand) -> anyhow::Result<()> {
    match command {
        TrainCommand::Vision(args) => args.run.backend.run_autodiff(args)?,
        TrainCommand::Projector(args) => {
            let backend = args.run.backend;
            let stage = AlignmentStage {
                inputs: args.stage(),
                lm_layers: 0,
                projector_from: None,
                freeze_projector: false,
                tuned_parts: TunedLayerParts::Whole,
                tuned_from: None,
                mix_data: Vec::new(),
                replay_data: None,
            };
            backend.run_autodiff(LanguageJob::Alignment(stage, args.run.settings()))?
        }
        TrainCommand::ProjectorWords(args) => {
            args.run.backend.run_autodiff(LanguageJob::PatchWords(args.stage(), args.run.settings()))?
        }
        TrainCommand::Instruct(args) => {
            let backend = args.stage.run.backend;
            let tuned_parts = if args.attention_only { TunedLayerParts::Attention } else { TunedLayerParts::Whole };
            let stage = AlignmentStage {
                inputs: args.stage.stage(),
                lm_layers: args.lm_layers,
                projector_from: args.projector,
                freeze_projector: args.freeze_projector,
                tuned_parts,
                tuned_from: args.tuned_from,
                mix_data: args.mix_data,
                replay_data: args.replay_data,
            };
            backend.run_autodiff(LanguageJob::Alignment(stage, args.stage.run.settings()))?
        }
    }
}
