//! `twigvlm train vision|projector|projector-words|instruct`: the demo model's training stages (the twig has its
//! own command).

use std::path::PathBuf;

use anyhow::{bail, Context};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use twigvlm_backbone::clip::ClipVisionTower;
use twigvlm_backbone::projector::Projector;
use twigvlm_backbone::weights::{hf_tensors, write_safetensors, StorageDtype, TensorSource, WeightLoader};
use twigvlm_backbone::{
    load_language_model_with, read_llava_spec, ImagePreprocessor, LlavaConfig, LoadedLanguageModel, CAUSAL_LM_BODY,
};
use twigvlm_data::{Dataset, DatasetSpec, SeedRange, ShapesDataset};
use twigvlm_engine::{AutodiffJob, BackendKind};
use twigvlm_train::alignment::{AlignedParts, AlignmentObjective, SequencePadding, TunedLayerParts};
use twigvlm_train::demo::{PROJECTOR_FILE, TUNED_LM_FILE, VISION_FILE};
use twigvlm_train::examples::{ConversationEncoder, VisualInput};
use twigvlm_train::patch_words::PatchWordsObjective;
use twigvlm_train::trainable::trainable;
use twigvlm_train::vision::{PatchClassifier, VisionObjective};
use twigvlm_train::{train, LrSchedule, OptimizerConfig, TrainOptions, TrainReport};

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

/// Checkpoint name prefix of the vision tower in a llava-hf model directory.
pub const VISION_PREFIX: &str = "vision_tower.vision_model";
pub const PROJECTOR_PREFIX: &str = "multi_modal_projector";

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
    #[arg(long, value_parser = super::named::named::<BackendKind>(), default_value_t = BackendKind::Flex)]
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

/// A stage's defaults for what the command line leaves out.
#[derive(Debug, Clone, Copy)]
pub struct StageDefaults {
    pub steps: usize,
    pub lr: f64,
    pub warmup: f64,
}

/// Vision tower, projector and instruction stages.
pub const DEMO_STAGE_DEFAULTS: StageDefaults = StageDefaults { steps: 300, lr: 1e-3, warmup: 0.15 };

impl LoopArgs {
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
            log_every: 10,
            out_dir: self.out.clone(),
            resume: self.resume,
            show_progress: !self.quiet,
            time_limit: self.time_limit,
        }
    }

    /// What training.json (and a twig's twig.json) records about a run.
    pub fn summary(
        &self,
        stage: &str,
        data: &str,
        eval_data: &str,
        options: &TrainOptions,
        report: &TrainReport,
    ) -> serde_json::Value {
        serde_json::json!({"stage": stage, "data": data, "eval_data": eval_data, "steps": report.steps_done,
            "planned_steps": options.steps, "time_limit_s": self.time_limit.map(|t| t.as_secs_f64()),
            "batch_size": self.batch_size, "lr": options.schedule.peak, "seconds": report.seconds, "history": report.history})
    }

    /// Writes training.json and prints the last held-out metrics.
    pub fn finish(
        &self,
        summary: &serde_json::Value,
        report: &TrainReport,
        written: &std::path::Path,
    ) -> anyhow::Result<()> {
        std::fs::write(self.out.join("training.json"), serde_json::to_string_pretty(summary)?)?;
        let stage = summary["stage"].as_str().unwrap_or("training");
        if let Some(last) = report.history.iter().rev().find(|h| !h.eval.is_empty()) {
            let metrics: Vec<String> = last.eval.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
            println!("{stage} trained in {:.0} s: {}", report.seconds, metrics.join(", "));
        }
        println!("wrote {}", written.display());
        Ok(())
    }
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
    #[arg(long, default_value = "shapes:seed=1000000,n=64")]
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
    #[arg(long, default_value = "shapes:seed=1000000,n=128")]
    pub eval_data: String,
    #[command(flatten)]
    pub run: LoopArgs,
}

fn shapes(spec: &str, expected: SeedRange, what: &str) -> anyhow::Result<ShapesDataset> {
    match DatasetSpec::parse(spec)? {
        DatasetSpec::Shapes(data) if SeedRange::of(data.seed) == expected => Ok(data),
        DatasetSpec::Shapes(data) => bail!(
            "{what} seed {} is in the {:?} range; training seeds are below {} and evaluation seeds from it on",
            data.seed,
            SeedRange::of(data.seed),
            twigvlm_data::EVAL_SEED_START
        ),
        DatasetSpec::LlavaJson(_) | DatasetSpec::Mixture(_) => bail!("{what} must be a shapes spec for this stage"),
    }
}

/// The model spec and the train/held-out data every stage starts from.
fn stage_inputs(
    config_dir: &std::path::Path,
    data: &str,
    eval_data: &str,
) -> anyhow::Result<(LlavaConfig, ImagePreprocessor, ShapesDataset, ShapesDataset)> {
    let (config, preprocessor) =
        read_llava_spec(config_dir).with_context(|| format!("reading {}", config_dir.display()))?;
    Ok((
        config,
        preprocessor,
        shapes(data, SeedRange::Train, "--data")?,
        shapes(eval_data, SeedRange::Eval, "--eval-data")?,
    ))
}

struct VisionJob(VisionArgs);

impl AutodiffJob for VisionJob {
    type Output = anyhow::Result<()>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> anyhow::Result<()> {
        let args = self.0;
        let (config, preprocessor, train_data, eval_data) = stage_inputs(&args.config, &args.data, &args.eval_data)?;
        B::seed(&device, args.run.seed);
        let model = PatchClassifier::<B>::init(&config.vision, &device);
        let mut objective = VisionObjective::<B>::new(
            train_data,
            eval_data,
            preprocessor,
            &config.vision,
            args.run.batch_size,
            device.clone(),
        )?;
        let options = args.run.options(DEMO_STAGE_DEFAULTS);
        let (model, report) = train(&mut objective, model, &options, &device)?;
        let tower = model.valid().tower;
        let tensors = hf_tensors(&tower, &|path| ClipVisionTower::<B::InnerBackend>::hf_name(VISION_PREFIX, path));
        let written = args.run.out.join(VISION_FILE);
        write_safetensors(&written, &tensors, StorageDtype::F32)?;
        args.run.finish(&args.run.summary("vision", &args.data, &args.eval_data, &options, &report), &report, &written)
    }
}

/// Stages 1 and 2: the projector, and in stage 2 the language model's top layers.
struct AlignmentJob {
    args: ProjectorArgs,
    lm_layers: usize,
    projector_from: Option<PathBuf>,
    freeze_projector: bool,
    tuned_parts: TunedLayerParts,
    /// A tuned-layers file to start the language model's tuned layers from.
    tuned_from: Option<PathBuf>,
    /// Text-only conversations mixed into the training data.
    replay_data: Option<PathBuf>,
}

impl AlignmentJob {
    fn stage(&self) -> &'static str {
        if self.lm_layers == 0 {
            "projector"
        } else {
            "instruct"
        }
    }

    /// The shapes data, mixed one for one with the replay conversations when there are any.
    fn training_data(&self, shapes: ShapesDataset) -> anyhow::Result<Dataset> {
        let Some(replay) = &self.replay_data else { return Ok(Dataset::Shapes(shapes)) };
        let text = DatasetSpec::LlavaJson(replay.clone()).open(None)?;
        anyhow::ensure!(!text.is_empty(), "--replay-data {} has no conversations", replay.display());
        Ok(Dataset::Mixture(vec![Dataset::Shapes(shapes), text]))
    }
}

/// The frozen vision tower (with its input pipeline) and language model of a language-side stage,
/// with the tensors of the `tuned_layers` files (an earlier stage 2's) in place of the pretrained ones.
fn language_stage_inputs<B: AutodiffBackend>(
    args: &ProjectorArgs,
    tuned_layers: &[PathBuf],
    config: &LlavaConfig,
    preprocessor: ImagePreprocessor,
    device: &B::Device,
) -> anyhow::Result<(VisualInput<B::InnerBackend>, LoadedLanguageModel<B>)> {
    let vision_file = args.vision.join(VISION_FILE);
    let mut source = TensorSource::default();
    source
        .add_safetensors(&vision_file)
        .with_context(|| format!("reading the vision tower {}", vision_file.display()))?;
    let layers = config.vision_layers_needed().map_err(anyhow::Error::msg)?;
    let vision = ClipVisionTower::<B::InnerBackend>::load(
        &WeightLoader::new(&source, device),
        VISION_PREFIX,
        &config.vision,
        layers,
    )?;
    let lm = load_language_model_with::<B>(&args.language_model, tuned_layers, device)
        .with_context(|| format!("loading the language model in {}", args.language_model.display()))?;
    anyhow::ensure!(
        lm.config.hidden_size == config.text.hidden_size,
        "the language model has hidden size {} but config.json's text_config says {}",
        lm.config.hidden_size,
        config.text.hidden_size
    );
    Ok((VisualInput { vision, feature_select: config.feature_select, preprocessor }, lm))
}

/// Writes `projector` into `out` under the llava-hf names; returns the file.
fn save_projector<B: burn::prelude::Backend>(
    projector: &Projector<B>,
    out: &std::path::Path,
) -> anyhow::Result<PathBuf> {
    let tensors = hf_tensors(projector, &|path| format!("{PROJECTOR_PREFIX}.{path}"));
    let written = out.join(PROJECTOR_FILE);
    write_safetensors(&written, &tensors, StorageDtype::F32)?;
    Ok(written)
}

/// Stage 1 by regression onto the language model's word embeddings.
struct PatchWordsJob(ProjectorArgs);

impl AutodiffJob for PatchWordsJob {
    type Output = anyhow::Result<()>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> anyhow::Result<()> {
        let args = &self.0;
        let (config, preprocessor, train_data, eval_data) = stage_inputs(&args.config, &args.data, &args.eval_data)?;
        let (visual, lm) = language_stage_inputs::<B>(args, &[], &config, preprocessor, &device)?;
        B::seed(&device, args.run.seed);
        let embeddings = lm.model.embed_tokens.weight.val().inner();
        let mut objective = PatchWordsObjective::<B>::new(
            visual,
            embeddings,
            &lm.tokenizer,
            train_data,
            eval_data,
            args.run.batch_size,
            device.clone(),
        )?;
        let options = args.run.options(DEMO_STAGE_DEFAULTS);
        let (projector, report) =
            train(&mut objective, Projector::<B>::init(&config.projector, &device), &options, &device)?;
        let written = save_projector(&projector.valid(), &args.run.out)?;
        args.run.finish(
            &args.run.summary("projector-words", &args.data, &args.eval_data, &options, &report),
            &report,
            &written,
        )
    }
}

/// The projector saved by an earlier stage in `dir`.
fn load_projector<B: AutodiffBackend>(
    dir: &std::path::Path,
    config: &LlavaConfig,
    device: &B::Device,
) -> anyhow::Result<Projector<B>> {
    let file = dir.join(PROJECTOR_FILE);
    let mut source = TensorSource::default();
    source.add_safetensors(&file).with_context(|| format!("reading the projector {}", file.display()))?;
    let prefixes = [format!("{PROJECTOR_PREFIX}.linear_1"), format!("{PROJECTOR_PREFIX}.linear_2")];
    let layers = if config.projector.activation.is_some() { &prefixes[..] } else { &prefixes[..1] };
    let projector = Projector::<B::InnerBackend>::load(&WeightLoader::new(&source, device), layers, &config.projector)?;
    Ok(trainable(Projector::from_inner(projector)))
}

impl AutodiffJob for AlignmentJob {
    type Output = anyhow::Result<()>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> anyhow::Result<()> {
        let args = &self.args;
        let (config, preprocessor, train_data, eval_data) = stage_inputs(&args.config, &args.data, &args.eval_data)?;
        let (visual, lm) =
            language_stage_inputs::<B>(args, self.tuned_from.as_slice(), &config, preprocessor, &device)?;
        B::seed(&device, args.run.seed);
        let projector = match &self.projector_from {
            Some(dir) => load_projector::<B>(dir, &config, &device)?,
            None => Projector::<B>::init(&config.projector, &device),
        };
        let parts = AlignedParts::new(projector, &lm.model, self.lm_layers, self.tuned_parts)?;
        let mut objective = AlignmentObjective::<B> {
            visual,
            language_model: lm.model,
            encoder: ConversationEncoder { tokenizer: lm.tokenizer, template: lm.template, system: None },
            train: self.training_data(train_data)?,
            eval: eval_data,
            batch_size: args.run.batch_size,
            freeze_projector: self.freeze_projector,
            padding: SequencePadding::for_kernels_compiled_per_shape(args.run.backend.compiles_kernels_per_shape()),
            device: device.clone(),
        };
        let options = args.run.options(DEMO_STAGE_DEFAULTS);
        let (parts, report) = train(&mut objective, parts, &options, &device)?;
        let parts = parts.valid();
        let written = save_projector(&parts.projector, &args.run.out)?;
        if !parts.lm_layers.is_empty() {
            write_safetensors(
                &args.run.out.join(TUNED_LM_FILE),
                &parts.tuned_layer_tensors(CAUSAL_LM_BODY),
                StorageDtype::F16,
            )?;
        }
        let mut summary = args.run.summary(self.stage(), &args.data, &args.eval_data, &options, &report);
        // Where the run started from, so that a curriculum's runs can be traced back.
        summary["projector_from"] =
            serde_json::json!(self.projector_from.as_ref().map(|dir| dir.display().to_string()));
        summary["tuned_from"] = serde_json::json!(self.tuned_from.as_ref().map(|file| file.display().to_string()));
        summary["replay_data"] = serde_json::json!(self.replay_data.as_ref().map(|file| file.display().to_string()));
        args.run.finish(&summary, &report, &written)
    }
}

pub fn run(command: TrainCommand) -> anyhow::Result<()> {
    match command {
        TrainCommand::Vision(args) => {
            let backend = args.run.backend;
            backend.run_autodiff(VisionJob(args))?
        }
        TrainCommand::Projector(args) => {
            let backend = args.run.backend;
            backend.run_autodiff(AlignmentJob {
                args,
                lm_layers: 0,
                projector_from: None,
                freeze_projector: false,
                tuned_parts: TunedLayerParts::Whole,
                tuned_from: None,
                replay_data: None,
            })?
        }
        TrainCommand::ProjectorWords(args) => {
            let backend = args.run.backend;
            backend.run_autodiff(PatchWordsJob(args))?
        }
        TrainCommand::Instruct(args) => {
            let backend = args.stage.run.backend;
            let tuned_parts = if args.attention_only { TunedLayerParts::Attention } else { TunedLayerParts::Whole };
            let job = AlignmentJob {
                args: args.stage,
                lm_layers: args.lm_layers,
                projector_from: args.projector,
                freeze_projector: args.freeze_projector,
                tuned_parts,
                tuned_from: args.tuned_from.map(|dir| dir.join(TUNED_LM_FILE)),
                replay_data: args.replay_data,
            };
            backend.run_autodiff(job)?
        }
    }
}
