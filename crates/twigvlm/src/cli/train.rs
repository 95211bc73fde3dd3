//! `twigvlm train vision`: the demo model's training stages (the twig has its own command).

use std::path::PathBuf;

use anyhow::{bail, Context};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use twigvlm::backend::AutodiffJob;
use twigvlm::BackendKind;
use twigvlm_backbone::clip::ClipVisionTower;
use twigvlm_backbone::weights::{hf_tensors, write_safetensors, StorageDtype};
use twigvlm_backbone::read_llava_spec;
use twigvlm_data::{DatasetSpec, SeedRange, ShapesDataset};
use twigvlm_train::vision::{PatchClassifier, VisionObjective};
use twigvlm_train::{train, LrSchedule, OptimizerConfig, TrainOptions};

#[derive(Debug, clap::Subcommand)]
pub enum TrainCommand {
    /// Stage 0: train the vision tower from scratch on shapes-world with per-patch heads.
    Vision(VisionArgs),
}

/// Checkpoint name prefix of the vision tower in a llava-hf model directory.
pub const VISION_PREFIX: &str = "vision_tower.vision_model";
pub const VISION_FILE: &str = "vision_tower.safetensors";

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
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Share of the steps spent warming the learning rate up.
    #[arg(long, default_value_t = 0.15)]
    pub warmup: f64,
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f32,
    #[arg(long, default_value_t = 100)]
    pub eval_every: usize,
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    /// Output directory: vision_tower.safetensors, training.json and the resumable checkpoint.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Seed of the heads' and tower's random initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    pub backend: BackendKind,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
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
        DatasetSpec::LlavaJson(_) => bail!("{what} must be a shapes spec for the vision stage"),
    }
}

struct VisionJob(VisionArgs);

impl AutodiffJob for VisionJob {
    type Output = anyhow::Result<()>;

    fn run<B: AutodiffBackend>(self, device: B::Device) -> anyhow::Result<()> {
        let args = self.0;
        let (config, preprocessor) = read_llava_spec(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
        let train_data = shapes(&args.data, SeedRange::Train, "--data")?;
        let eval_data = shapes(&args.eval_data, SeedRange::Eval, "--eval-data")?;
        B::seed(&device, args.seed);
        let model = PatchClassifier::<B>::init(&config.vision, &device);
        let mut objective = VisionObjective::<B>::new(train_data, eval_data, preprocessor, &config.vision, args.batch_size, device.clone())?;
        let options = TrainOptions {
            steps: args.steps,
            schedule: LrSchedule::warmup_cosine(args.lr, args.steps, args.warmup),
            optimizer: OptimizerConfig { weight_decay: args.weight_decay, ..OptimizerConfig::default() },
            checkpoint_every: args.checkpoint_every,
            eval_every: Some(args.eval_every),
            log_every: 10,
            out_dir: args.out.clone(),
            resume: args.resume,
            show_progress: !args.quiet,
        };
        let (model, report) = train(&mut objective, model, &options, &device)?;
        let tower = model.valid().tower;
        let tensors = hf_tensors(&tower, &|path| ClipVisionTower::<B::InnerBackend>::hf_name(VISION_PREFIX, path));
        write_safetensors(&args.out.join(VISION_FILE), &tensors, StorageDtype::F32)?;
        let summary = serde_json::json!({"stage": "vision", "data": args.data, "eval_data": args.eval_data, "steps": args.steps,
            "batch_size": args.batch_size, "lr": args.lr, "seconds": report.seconds, "history": report.history});
        std::fs::write(args.out.join("training.json"), serde_json::to_string_pretty(&summary)?)?;
        if let Some(last) = report.history.iter().rev().find(|h| !h.eval.is_empty()) {
            let metrics: Vec<String> = last.eval.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
            println!("vision tower trained in {:.0} s: {}", report.seconds, metrics.join(", "));
        }
        println!("wrote {}", args.out.join(VISION_FILE).display());
        Ok(())
    }
}

pub fn run(command: TrainCommand) -> anyhow::Result<()> {
    match command {
        TrainCommand::Vision(args) => {
            let backend = args.backend;
            backend.run_autodiff(VisionJob(args))?
        }
    }
}
