//! `twigvlm train-twig`, `twigvlm train-pruning-head` and `twigvlm twig convert`.

use std::path::PathBuf;

use anyhow::Context;
use twigvlm_backbone::{load_llava, LoadOptions};
use twigvlm_data::eval_shapes;
use twigvlm_engine::VisualBudget;
use twigvlm_engine::{AutodiffJob, BackendJob, BackendKind};
use twigvlm_train::stages::{train_pruning_head, train_twig, PruningHeadStage, TwigStage};
use twigvlm_train::twig::{AttentionDistill, TwigTargets};
use twigvlm_twig::checkpoint::convert;
use twigvlm_twig::{TwigConfig, TwigFormat, TwigHead, TwigInit, TwigMlp};

use super::named::named;
use super::train::{report, LoopArgs};
use twigvlm_backbone::ops::{DecodeAutodiff, DecodeOps};

#[derive(Debug, clap::Args)]
pub struct TrainTwigArgs {
    /// Base model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Training data: a shapes spec with a training seed, or a LLaVA instruction JSON file.
    /// Repeat it to mix sources: each batch then takes from every source in turn, cycling the
    /// shorter ones (e.g. shapes-world questions and distilled chat answers).
    #[arg(long, default_value = "shapes:seed=3,n=4096,task=all")]
    pub data: Vec<String>,
    /// Held-out data for agreement with the base and the twig's own exact match (repeatable, as
    /// --data).
    #[arg(long, default_values_t = [eval_shapes(32, Some("all"))])]
    pub eval_data: Vec<String>,
    /// Directory that JSON datasets' image paths are relative to.
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    /// Base layers before the twig.
    #[arg(long, default_value_t = TwigConfig::PAPER_K)]
    pub k: usize,
    /// Decoder blocks in the twig.
    #[arg(long, default_value_t = TwigConfig::PAPER_T)]
    pub t: usize,
    #[arg(long, value_parser = named::<TwigInit>(), default_value_t = TwigInit::Adjacent)]
    pub init: TwigInit,
    /// Train the twig's own LM head or share the base's (frozen).
    #[arg(long, value_parser = named::<TwigHead>(), default_value_t = TwigHead::Trained)]
    pub twig_head: TwigHead,
    /// Train the blocks' MLPs, or keep them frozen copies of the base layers the twig started from
    /// (only attention, norms and a trained head learn; the checkpoint stores no MLP, three
    /// quarters of each block's size; needs --init adjacent or last).
    #[arg(long, value_parser = named::<TwigMlp>(), default_value_t = TwigMlp::Trained)]
    pub twig_mlp: TwigMlp,
    /// The FinalWipe layer K_f recorded in the twig as the default of pruning with it (the layer
    /// from which the base model no longer reads the image; default: the paper's 24/32 of the
    /// depth).
    #[arg(long)]
    pub default_final_wipe: Option<usize>,
    /// Beyond the paper: also train the twig's selection attention (last block, head mean, last
    /// prompt token over the visual tokens) toward this base layer's, counted from 1 as
    /// `--policies vlm-layer:N` counts (a KL term weighted by --attention-weight).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub attention_teacher: Option<u64>,
    /// Weight of the attention term beside the token loss.
    #[arg(long, default_value_t = 1.0, requires = "attention_teacher")]
    pub attention_weight: f64,
    /// TwigVLM++: give the twig a pruning head (learned gates on its last block's queries and
    /// keys) that the `twig++` policy ranks with; it learns from the attention term
    /// (--attention-teacher), the paper's first stage.
    #[arg(long, requires = "attention_teacher")]
    pub pruning_head: bool,
    /// Start from this trained twig (its K, T and weights) instead of copies of base layers;
    /// with --pruning-head, a head is added to it if it has none.
    #[arg(long, conflicts_with_all = ["k", "t", "init", "twig_head", "twig_mlp"])]
    pub from_twig: Option<PathBuf>,
    /// Train only the pruning head of the --from-twig twig: its blocks, norm and LM head stay as
    /// they are (drafting and the `twig` policy are unchanged); each step runs the base model
    /// up to the teacher layer and the twig without gradients.
    #[arg(long, requires_all = ["pruning_head", "from_twig"])]
    pub pruning_head_only: bool,
    /// Targets: the dataset's answers, or the base model's own predictions (self-distillation).
    #[arg(long, value_parser = named::<TwigTargets>(), default_value_t = TwigTargets::Data)]
    pub targets: TwigTargets,
    /// CLIP directory for original-layout LLaVA checkpoints.
    #[arg(long)]
    pub vision_tower: Option<PathBuf>,
    #[command(flatten)]
    pub run: LoopArgs,
}

impl AutodiffJob for TrainTwigArgs {
    type Output = anyhow::Result<()>;

    fn run<B: DecodeAutodiff>(self, device: B::Device) -> anyhow::Result<()> {
        let stage = TwigStage {
            model: self.model,
            vision_tower: self.vision_tower,
            data: self.data,
            eval_data: self.eval_data,
            image_root: self.image_root,
            config: TwigConfig {
                k: self.k,
                t: self.t,
                init: self.init,
                head: self.twig_head,
                mlp: self.twig_mlp,
                final_wipe: self.default_final_wipe,
                pruning_head: self.pruning_head,
            },
            from_twig: self.from_twig,
            pruning_head_only: self.pruning_head_only,
            targets: self.targets,
            attention: self
                .attention_teacher
                .map(|layer| AttentionDistill { teacher_layer: layer as usize - 1, weight: self.attention_weight }),
        };
        report(&train_twig::<B>(&stage, &self.run.settings(), &device)?);
        Ok(())
    }
}

#[derive(Debug, clap::Args)]
pub struct TrainPruningHeadArgs {
    /// Base model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// The twig whose pruning head trains (from `train-twig --pruning-head`); the result is
    /// written to --out, the input stays as it is.
    #[arg(long)]
    pub twig: PathBuf,
    /// Training data (repeatable, as train-twig's).
    #[arg(long, default_value = "shapes:seed=5,n=4096,task=color+shape+exists+where")]
    pub data: Vec<String>,
    /// Held-out data: the reference answer's loss with the head's selection at each budget.
    #[arg(long, default_values_t = [eval_shapes(16, None)])]
    pub eval_data: Vec<String>,
    /// Directory that JSON datasets' image paths are relative to.
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    /// Keep-sets drawn per question (the group whose rewards are compared).
    #[arg(long, default_value_t = 16)]
    pub samples: usize,
    /// R̄ values each question's budget is drawn from (comma-separated counts or shares).
    #[arg(long, value_delimiter = ',', default_value = "11.1%,22.2%,33.3%")]
    pub visual_budget: Vec<VisualBudget>,
    /// FinalWipe layer K_f of the pruned forwards (default: the twig's, else 24/32 of the depth).
    #[arg(long)]
    pub final_wipe: Option<usize>,
    #[command(flatten)]
    pub run: LoopArgs,
}

impl AutodiffJob for TrainPruningHeadArgs {
    type Output = anyhow::Result<()>;

    fn run<B: DecodeAutodiff>(self, device: B::Device) -> anyhow::Result<()> {
        let stage = PruningHeadStage {
            model: self.model,
            twig: self.twig,
            data: self.data,
            eval_data: self.eval_data,
            image_root: self.image_root,
            samples: self.samples,
            budgets: self.visual_budget,
            final_wipe: self.final_wipe,
        };
        report(&train_pruning_head::<B>(&stage, &self.run.settings(), &device)?);
        Ok(())
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum TwigCommand {
    /// Rewrite a twig between our format and the official TwigVLM layout.
    Convert(ConvertArgs),
}

#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// The base model the twig belongs to.
    #[arg(long)]
    pub model: PathBuf,
    /// Twig directory to read (either format).
    pub from: PathBuf,
    /// Directory to write.
    pub to: PathBuf,
    /// Format to write.
    #[arg(long, value_parser = named::<TwigFormat>())]
    pub to_format: TwigFormat,
    /// K for an official twig that has no twig.json beside it.
    #[arg(long)]
    pub twig_k: Option<usize>,
}

impl BackendJob for ConvertArgs {
    type Output = anyhow::Result<()>;

    fn run<B: DecodeOps>(self, device: B::Device) -> anyhow::Result<()> {
        let args = self;
        let loaded = load_llava::<B>(&args.model, &LoadOptions::default(), &device)
            .with_context(|| format!("cannot load the base model in {}", args.model.display()))?;
        let format = args.to_format;
        let written = convert(
            &args.from,
            &args.to,
            format,
            &loaded.model.language_model,
            &loaded.config.text,
            args.twig_k,
            &device,
        )?;
        println!("wrote {}", written.display());
        Ok(())
    }
}

pub fn run(command: TwigCommand) -> anyhow::Result<()> {
    match command {
        TwigCommand::Convert(args) => BackendKind::Flex.run(args)?,
    }
}
