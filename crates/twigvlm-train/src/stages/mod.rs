//! Training stages assembled from plain inputs (directories, dataset specs, loop settings): the
//! demo model's vision tower, projector and instruction stages, and a twig (and its pruning head)
//! for any base model.
//! Each stage trains, writes what it trained and a `training.json` that records the run, and
//! returns where the result is.

pub mod alignment;
pub mod pruning_head;
pub mod twig;
pub mod vision;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use twigvlm_data::{Dataset, DatasetSpec, SeedRange, ShapesDataset, EVAL_SEED_START};

use crate::error::{Result, TrainError};
use crate::optimizer::OptimizerConfig;
use crate::schedule::LrSchedule;
use crate::trainer::{StepMetrics, TrainOptions, TrainReport};

pub use alignment::{train_alignment, train_patch_words, AlignmentStage, LanguageStage};
pub use pruning_head::{train_pruning_head, PruningHeadStage};
pub use twig::{train_twig, TwigStage};
pub use vision::{train_vision, VisionStage};

/// The record of a run, beside what it trained.
pub const SUMMARY_FILE: &str = "training.json";
/// Steps between log lines.
const LOG_EVERY: usize = 10;

/// How a stage's training loop runs; what the stage leaves at `None` it decides itself.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub steps: Option<usize>,
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: Option<f64>,
    /// Share of the steps spent warming the learning rate up.
    pub warmup: Option<f64>,
    pub weight_decay: f32,
    pub eval_every: usize,
    pub checkpoint_every: usize,
    /// Where the trained tensors, the summary and the resumable checkpoint go.
    pub out: PathBuf,
    /// Continue from the checkpoint in `out`.
    pub resume: bool,
    /// Seed of the random initialisation.
    pub seed: u64,
    pub show_progress: bool,
    /// The run fits its length to end inside this wall-clock budget (`steps` is then the most).
    pub time_limit: Option<Duration>,
    /// The backend compiles a kernel for each new tensor shape (the GPU ones): sequences are
    /// padded to a few lengths.
    pub kernels_per_shape: bool,
}

/// A stage's own choices for what [`RunSettings`] leaves open.
#[derive(Debug, Clone, Copy)]
pub struct StageDefaults {
    pub steps: usize,
    pub lr: f64,
    pub warmup: f64,
}

/// The demo model's vision tower, projector and instruction stages.
pub const DEMO_STAGE_DEFAULTS: StageDefaults = StageDefaults { steps: 300, lr: 1e-3, warmup: 0.15 };

impl RunSettings {
    /// The training loop's options under a stage's `defaults`.
    pub fn options(&self, defaults: StageDefaults) -> TrainOptions {
        let steps = self.steps.unwrap_or(defaults.steps);
        TrainOptions {
            steps,
            schedule: LrSchedule::warmup_cosine(
                self.lr.unwrap_or(defaults.lr),
                steps,
                self.warmup.unwrap_or(defaults.warmup),
            ),
            optimizer: OptimizerConfig { weight_decay: self.weight_decay, ..OptimizerConfig::default() },
            checkpoint_every: self.checkpoint_every,
            eval_every: Some(self.eval_every),
            log_every: LOG_EVERY,
            out_dir: self.out.clone(),
            resume: self.resume,
            show_progress: self.show_progress,
            time_limit: self.time_limit,
        }
    }
}

/// What `training.json` records about a run (a twig's `twig.json` embeds it too).
#[derive(Debug, Clone, Serialize)]
pub struct StageSummary {
    pub stage: &'static str,
    pub data: String,
    pub eval_data: String,
    /// Steps done.
    pub steps: usize,
    pub planned_steps: usize,
    pub time_limit_s: Option<f64>,
    pub batch_size: usize,
    pub lr: f64,
    pub seconds: f64,
    pub history: Vec<StepMetrics>,
    /// Where an alignment stage started from.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub origin: Option<alignment::AlignmentOrigin>,
    /// What a twig learned from.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub twig: Option<twig::TwigRecipe>,
    /// What a pruning head learned from (its second stage).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub pruning_head: Option<pruning_head::PruningHeadRecipe>,
}

impl StageSummary {
    fn new(
        stage: &'static str,
        (data, eval_data): (String, String),
        run: &RunSettings,
        options: &TrainOptions,
        report: &TrainReport,
    ) -> Self {
        Self {
            stage,
            data,
            eval_data,
            steps: report.steps_done,
            planned_steps: options.steps,
            time_limit_s: run.time_limit.map(|t| t.as_secs_f64()),
            batch_size: run.batch_size,
            lr: options.schedule.peak,
            seconds: report.seconds,
            history: report.history.clone(),
            origin: None,
            twig: None,
            pruning_head: None,
        }
    }

    /// The held-out metrics of the last evaluation.
    pub fn last_eval(&self) -> Option<&[(String, f64)]> {
        self.history.iter().rev().find(|h| !h.eval.is_empty()).map(|h| h.eval.as_slice())
    }
}

/// What a stage produced.
#[derive(Debug, Clone)]
pub struct StageOutcome {
    /// The file of the trained tensors.
    pub written: PathBuf,
    pub summary: StageSummary,
}

/// Writes `summary` as `training.json` into `out`.
fn write_summary(out: &Path, summary: &StageSummary) -> Result<()> {
    let path = out.join(SUMMARY_FILE);
    let text = serde_json::to_string_pretty(summary).expect("the summary serialises");
    std::fs::write(&path, text).map_err(|source| TrainError::Io { path, source })
}

/// Between the specs of a mixture in a summary.
const MIXTURE_SEPARATOR: &str = " + ";

/// Training specs (several make a mixture; held-out data is refused) and held-out specs, opened
/// (a JSON file's relative image paths against `image_root`), with both as a summary records
/// them.
fn training_and_eval_data(
    data: &[String],
    eval_data: &[String],
    image_root: Option<&Path>,
) -> Result<((Dataset, Dataset), (String, String))> {
    let train_spec = DatasetSpec::parse_all(data)?;
    if train_spec.seed_range() == Some(SeedRange::Eval) {
        return Err(TrainError::Config(format!(
            "the training data is held out (an evaluation seed, or easy-vqa's test split); training seeds are below {EVAL_SEED_START}"
        )));
    }
    let opened = (train_spec.open(image_root)?, DatasetSpec::parse_all(eval_data)?.open(image_root)?);
    Ok((opened, (data.join(MIXTURE_SEPARATOR), eval_data.join(MIXTURE_SEPARATOR))))
}

/// The shapes dataset of `spec`, whose seed must be in the `expected` range (`what` names the
/// option in errors).
fn shapes(spec: &str, expected: SeedRange, what: &str) -> Result<ShapesDataset> {
    match DatasetSpec::parse(spec)? {
        DatasetSpec::Shapes(data) if SeedRange::of(data.seed) == expected => Ok(data),
        DatasetSpec::Shapes(data) => Err(TrainError::Config(format!(
            "{what} seed {} is in the {:?} range; training seeds are below {EVAL_SEED_START} and evaluation seeds from it on",
            data.seed,
            SeedRange::of(data.seed),
        ))),
        DatasetSpec::EasyVqa(_) | DatasetSpec::LlavaJson(_) | DatasetSpec::Mixture(_) => {
            Err(TrainError::Config(format!("{what} must be a shapes spec for this stage")))
        }
    }
}
