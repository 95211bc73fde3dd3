//! `twigvlm distill`.

use std::path::PathBuf;

use anyhow::Context;
use twigvlm_backbone::ops::DecodeOps;
use twigvlm_data::DatasetSpec;
use twigvlm_engine::{BackendJob, DecoderKind, PruningSpec};
use twigvlm_eval::distill::{distill, DistillOptions, DISTILL_FILE};
use twigvlm_eval::eval::AnswerBudget;

#[derive(Debug, clap::Args)]
pub struct DistillArgs {
    /// Questions to answer: `shapes:seed=<u64>,n=<count>[,task=..][,turns=k]` (a training seed)
    /// or a LLaVA instruction JSON file.
    #[arg(long)]
    pub data: String,
    /// Directory that a JSON dataset's image paths are relative to (default: the file's directory).
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    /// Output directory: distill.json and the rendered images it points to.
    #[arg(long)]
    pub out: PathBuf,
    /// Token budget of a short shapes-world answer.
    #[arg(long, default_value_t = AnswerBudget::default().short)]
    pub short_max_new_tokens: usize,
    /// Token budget of a description or a user question.
    #[arg(long, default_value_t = AnswerBudget::default().long)]
    pub long_max_new_tokens: usize,
    /// Write the file after this many new answers.
    #[arg(long, default_value_t = 32)]
    pub save_every: usize,
    /// Complete an existing output file (keeps its answers, generates the missing ones).
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub model: super::ModelArgs,
}

impl super::ModelCommand for DistillArgs {
    fn model(&self) -> &super::ModelArgs {
        &self.model
    }
}

impl BackendJob for DistillArgs {
    type Output = anyhow::Result<()>;

    fn run<B: DecodeOps>(self, device: B::Device) -> anyhow::Result<()> {
        let args = self;
        let spec = DatasetSpec::parse(&args.data)?;
        let dataset = spec.open(args.image_root.as_deref())?;
        let (engine, decoder) = super::load_engine::<B>(&args.model, device, &PruningSpec::none(), false)?;
        anyhow::ensure!(decoder == DecoderKind::Base, "distill answers with the base model; drop --twig and --decoder");
        let options = DistillOptions {
            answer_budget: AnswerBudget { short: args.short_max_new_tokens, long: args.long_max_new_tokens },
            save_every: args.save_every,
            resume: args.resume,
        };
        let progress =
            super::progress_bar(dataset.question_count() as u64, "{pos}/{len} questions ({per_sec}, eta {eta})");
        let summary = distill(&engine, &dataset, &args.out, &options, |done| progress.set_position(done as u64))
            .context("distillation failed")?;
        progress.finish_and_clear();
        println!(
            "{} records in {} ({} answers generated now, {} tokens, {:.1} s)",
            summary.records,
            args.out.join(DISTILL_FILE).display(),
            summary.generated,
            summary.generated_tokens,
            summary.seconds
        );
        Ok(())
    }
}
