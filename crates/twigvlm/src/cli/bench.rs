//! `twigvlm bench`.

use std::path::PathBuf;

use anyhow::Context;
use twigvlm_data::{eval_shapes, DatasetSpec};
use twigvlm_engine::{BackendJob, DecoderKind, DraftConfig, DraftTree, PruningSpec, VisualBudget, DEFAULT_DRAFT_VOCAB};
use twigvlm_eval::bench::{generation_count, run_bench, BenchMode, BenchOptions, BenchPrompt, BenchReport};
use twigvlm_eval::plot::{bar_chart, Labels};

use super::named::named;
use twigvlm_backbone::ops::DecodeOps;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Prompts: `shapes:seed=<u64>,n=<count>[,task=...]` or a LLaVA instruction JSON file. The
    /// default asks for descriptions, long answers as in the paper's MM-Vet measurement.
    #[arg(long, default_value_t = eval_shapes(4, Some("describe")))]
    pub data: String,
    /// Directory that a JSON dataset's image paths are relative to (default: the file's directory).
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    /// Modes to compare: vanilla, fastv, ttp, ssd, ttp+ssd, ssd-adaptive, ssd-tree,
    /// ttp+ssd-tree (all but the first two need --twig).
    #[arg(long, value_delimiter = ',', value_parser = named::<BenchMode>(), default_value = "vanilla,fastv,ttp,ssd,ttp+ssd")]
    pub modes: Vec<BenchMode>,
    /// Upper bound on generated tokens per answer.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// R̄ of the pruning modes: a count or a share of the image's visual tokens.
    #[arg(long, default_value = "11.1%")]
    pub visual_budget: VisualBudget,
    /// Timed passes over the prompts (after one untimed warm-up pass).
    #[arg(long, default_value_t = 2)]
    pub repeats: usize,
    /// The draft tree of the tree modes: `top_k:depth:nodes`.
    #[arg(long, default_value = "4:5:16")]
    pub draft_tree: DraftTree,
    /// Most tokens in a drafted chain (the chain modes).
    #[arg(long, default_value_t = DraftConfig::default().max_draft)]
    pub max_draft: usize,
    /// A chain stops when the twig's probability of its own next pick is below this.
    #[arg(long, default_value_t = DraftConfig::default().draft_threshold)]
    pub draft_threshold: f32,
    /// Draft only among the first N token ids; 0: the whole vocabulary (see `generate --draft-vocab`).
    #[arg(long, default_value_t = DEFAULT_DRAFT_VOCAB)]
    pub draft_vocab: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Where relspd.json and relspd.png are written.
    #[arg(long, default_value = "bench/results")]
    pub results_dir: PathBuf,
    #[command(flatten)]
    pub model: super::ModelArgs,
}

impl super::ModelCommand for BenchArgs {
    fn model(&self) -> &super::ModelArgs {
        &self.model
    }
}

impl BackendJob for BenchArgs {
    type Output = anyhow::Result<()>;

    fn run<B: DecodeOps>(self, device: B::Device) -> anyhow::Result<()> {
        let args = self;
        anyhow::ensure!(!args.modes.is_empty(), "--modes is empty");
        let dataset = DatasetSpec::parse(&args.data)?.open(args.image_root.as_deref())?;
        let mut prompts = Vec::new();
        for index in 0..dataset.len() {
            let example = dataset.get(index);
            let image = example.image.as_ref().map(|source| source.load()).transpose()?;
            prompts.extend(
                example.turns.iter().map(|turn| BenchPrompt { prompt: turn.user.clone(), image: image.clone() }),
            );
        }
        let uses_twig = args.modes.iter().any(|m| m.uses_twig());
        let mut model = args.model.clone();
        if uses_twig && model.decoder.twig.is_none() {
            let modes: Vec<String> = args.modes.iter().map(BenchMode::to_string).collect();
            anyhow::bail!("--modes {} need --twig DIR", modes.join(","));
        }
        // The modes choose their decoders; the twig is attached for them.
        model.decoder.decoder = Some(if uses_twig { DecoderKind::Ssd } else { DecoderKind::Base });
        let (engine, _) = super::load_engine::<B>(&model, device, &PruningSpec::none(), true)?;
        let options = BenchOptions {
            modes: args.modes.clone(),
            max_new_tokens: args.max_new_tokens,
            visual_budget: args.visual_budget,
            repeats: args.repeats,
            draft_tree: args.draft_tree,
            chain: DraftConfig {
                max_draft: args.max_draft,
                draft_threshold: args.draft_threshold,
                vocab: (args.draft_vocab > 0).then_some(args.draft_vocab),
                ..DraftConfig::default()
            },
        };
        let progress = super::progress_bar(
            generation_count(prompts.len(), &options) as u64,
            "{pos}/{len} generations (eta {eta})",
        );
        let report = run_bench(&engine, &prompts, &options, || progress.inc(1)).context("benchmark failed")?;
        progress.finish_and_clear();
        write_report(&report, &args)
    }
}

fn write_report(report: &BenchReport, args: &BenchArgs) -> anyhow::Result<()> {
    let dir = &args.results_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json_path = dir.join("relspd.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let bars: Vec<(String, f64)> =
        report.rows.iter().filter_map(|r| r.rel_spd.map(|s| (r.mode.to_string(), s))).collect();
    let labels = Labels { title: "Speed relative to vanilla decoding", x: "mode", y: "RelSpd (tokens/s ÷ vanilla's)" };
    if let Err(e) = bar_chart(&dir.join("relspd.png"), &labels, &bars) {
        tracing::warn!("no RelSpd plot: {e:#}");
    }
    if args.json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    let optional = |v: Option<f64>, precision: usize| v.map_or("-".to_string(), |v| format!("{v:.precision$}"));
    println!(
        "{:<9} {:>9} {:>11} {:>10} {:>9} {:>10} {:>7} {:>7} {:>9} {:>9}",
        "mode",
        "tokens/s",
        "prefill ms",
        "decode ms",
        "draft ms",
        "verify ms",
        "tokens",
        "RelSpd",
        "accepted",
        "identical"
    );
    for row in &report.rows {
        println!(
            "{:<9} {:>9.2} {:>11.1} {:>10.1} {:>9} {:>10} {:>7.1} {:>7} {:>9} {:>9}",
            row.mode.to_string(),
            row.tokens_per_s,
            row.prefill_ms,
            row.decode_ms,
            optional(row.draft_ms, 1),
            optional(row.verify_ms, 1),
            row.new_tokens,
            optional(row.rel_spd, 3),
            optional(row.mean_accepted, 2),
            row.first_divergence.map_or("yes".to_string(), |i| format!("no@{i}"))
        );
    }
    println!("{} prompts × {} passes; written to {}", report.prompts, report.repeats, json_path.display());
    Ok(())
}
