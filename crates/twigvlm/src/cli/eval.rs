//! `twigvlm eval`.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use anyhow::Context;
use twigvlm_backbone::ops::DecodeOps;
use twigvlm_data::{eval_shapes, DatasetSpec, SeedRange, EVAL_SEED_START};
use twigvlm_engine::{BackendJob, BatchLimits, PrefillPolicy, PruningSpec, VisualBudget};
use twigvlm_eval::eval::{evaluate, EvalOptions, EvalReport};
use twigvlm_eval::relacc::{cell_count, plot_relacc, relacc_table, RelAccReport};
use twigvlm_eval::stats::Interval;

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// `shapes:seed=<u64>,n=<count>[,task=short|describe|all]` (evaluation seeds start at 1000000),
    /// `easy-vqa:split=test[,n=<count>]` (fetched with pip once, kept in target/datasets) or a
    /// LLaVA instruction JSON file.
    #[arg(long, default_value_t = eval_shapes(100, Some("all")))]
    pub data: String,
    /// Directory that a JSON dataset's image paths are relative to (default: the file's directory).
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    /// Skip the blank-image baseline (halves the time).
    #[arg(long)]
    pub no_blank_baseline: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Score every listed prefill policy at every --visual-budget beside the unpruned model
    /// (the RelAcc table), e.g. `none,fastv,vlm-layer:K,vlm-layer:K+T,random,twig`.
    #[arg(long, value_delimiter = ',')]
    pub policies: Vec<PrefillPolicy>,
    /// R̄ values for --policies: counts or shares of the image's visual tokens (`11.1%,22.2%`).
    #[arg(long, value_delimiter = ',', requires = "policies")]
    pub visual_budget: Vec<VisualBudget>,
    /// FinalWipe layer K_f for --policies (default: 24/32 of the depth; FastV has none).
    #[arg(long, requires = "policies")]
    pub final_wipe: Option<usize>,
    /// Where --policies writes relacc.json and relacc.png.
    #[arg(long, default_value = "bench/results")]
    pub results_dir: PathBuf,
    /// Questions answered at once, their forwards batched (the answers do not depend on it).
    #[arg(long, default_value_t = NonZeroUsize::MIN)]
    pub batch: NonZeroUsize,
    #[command(flatten)]
    pub model: super::ModelArgs,
}

impl super::ModelCommand for EvalArgs {
    fn model(&self) -> &super::ModelArgs {
        &self.model
    }
}

impl BackendJob for EvalArgs {
    type Output = anyhow::Result<()>;

    fn run<B: DecodeOps>(self, device: B::Device) -> anyhow::Result<()> {
        let args = self;
        let spec = DatasetSpec::parse(&args.data)?;
        if spec.seed_range() == Some(SeedRange::Train) {
            tracing::warn!(
                "--data is training data; held-out scores need a seed from {EVAL_SEED_START} or easy-vqa's test split"
            );
        }
        let dataset = spec.open(args.image_root.as_deref())?;
        let questions = dataset.question_count();
        let relacc = !args.policies.is_empty();
        anyhow::ensure!(
            !relacc || !args.visual_budget.is_empty(),
            "--policies needs --visual-budget (one or more, comma-separated)"
        );
        let (engine, decoder) = super::load_engine::<B>(&args.model, device, &PruningSpec::none(), relacc)?;
        let batch = BatchLimits { max_requests: args.batch, ..BatchLimits::default() };
        let cells = if relacc { cell_count(&args.policies, &args.visual_budget) } else { 1 };
        let progress = super::progress_bar((questions * cells) as u64, "{pos}/{len} questions ({per_sec}, eta {eta})");
        if relacc {
            let report = relacc_table(
                &engine,
                &dataset,
                &args.policies,
                &args.visual_budget,
                args.final_wipe,
                &EvalOptions { decoder, batch, ..EvalOptions::default() },
                |cell, done| progress.set_position((cell * questions + done) as u64),
            )
            .context("evaluation failed")?;
            progress.finish_and_clear();
            return write_relacc(&report, &args.results_dir, args.json);
        }
        let options =
            EvalOptions { blank_image_baseline: !args.no_blank_baseline, decoder, batch, ..EvalOptions::default() };
        let report = evaluate(&engine, &dataset, &options, |done| progress.set_position(done as u64))
            .context("evaluation failed")?;
        progress.finish_and_clear();
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print_table(&report);
        }
        Ok(())
    }
}

fn print_table(report: &EvalReport) {
    let percent = |v: f64| format!("{:.1}", 100.0 * v);
    let optional = |v: Option<f64>| v.map_or("-".to_string(), percent);
    const TOTAL: &str = "all short";
    let width = report.per_task.keys().map(String::len).chain([TOTAL.len()]).max().unwrap_or_default();
    println!(
        "{:<width$} {:>5} {:>9} {:>12} {:>9}  majority answer",
        "task", "n", "accuracy", "blank image", "majority"
    );
    for (task, t) in &report.per_task {
        println!(
            "{task:<width$} {:>5} {:>9} {:>12} {:>9}  {}",
            t.n,
            percent(t.accuracy),
            optional(t.blank_image_accuracy),
            percent(t.majority_accuracy),
            t.majority_answer
        );
    }
    println!(
        "{TOTAL:<width$} {:>5} {:>9} {:>12} {:>9}",
        report.per_task.values().map(|t| t.n).sum::<usize>(),
        percent(report.accuracy),
        optional(report.blank_image_accuracy),
        percent(report.majority_accuracy)
    );
    if let Some(d) = &report.describe {
        println!(
            "{:<width$} {:>5}  F1 {:.3} (precision {:.3}, recall {:.3}); blank image F1 {}",
            "describe",
            d.n,
            d.f1,
            d.precision,
            d.recall,
            d.blank_image_f1.map_or("-".to_string(), |f| format!("{f:.3}"))
        );
    }
    println!("{} questions in {:.1} s ({} decoder)", report.n, report.seconds, report.decoder);
}

/// Prints the table (or JSON) and writes relacc.json and relacc.png under `dir`.
fn write_relacc(report: &RelAccReport, dir: &Path, json: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let text = serde_json::to_string_pretty(report)?;
    let json_path = dir.join("relacc.json");
    std::fs::write(&json_path, &text).with_context(|| format!("cannot write {}", json_path.display()))?;
    if let Err(e) = plot_relacc(report, &dir.join("relacc.png")) {
        tracing::warn!("no RelAcc plot: {e:#}");
    }
    if json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    let percent = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}", 100.0 * v));
    let interval =
        |i: Option<Interval>| i.map_or("-".to_string(), |i| format!("{:.1}-{:.1}", 100.0 * i.low, 100.0 * i.high));
    println!(
        "{:<16} {:>8} {:>4} {:>4} {:>9} {:>9} {:>11} {:>8} {:>11} {:>8}",
        "policy", "budget", "K_f", "R'", "avg vis.", "accuracy", "95% CI", "RelAcc", "95% CI", "desc F1"
    );
    for row in &report.rows {
        println!(
            "{:<16} {:>8} {:>4} {:>4} {:>9.1} {:>9} {:>11} {:>8} {:>11} {:>8}",
            row.policy,
            row.visual_budget.as_deref().unwrap_or("-"),
            row.final_wipe,
            row.r_prime,
            row.avg_visual_tokens,
            percent(Some(row.accuracy)),
            interval(Some(row.accuracy_ci)),
            percent(row.rel_acc),
            interval(row.rel_acc_ci),
            row.describe_f1.map_or("-".to_string(), |f| format!("{f:.3}"))
        );
    }
    println!(
        "{} questions per row, N_v = {}; written to {}",
        report.questions,
        report.visual_tokens,
        json_path.display()
    );
    Ok(())
}
