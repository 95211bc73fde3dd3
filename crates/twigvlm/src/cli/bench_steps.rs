//! `twigvlm bench-steps`.

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;
use twigvlm_backbone::ops::DecodeOps;
use twigvlm_backbone::weights::StorageDtype;
use twigvlm_backbone::{load_llava, LoadOptions};
use twigvlm_engine::{BackendJob, BackendKind};
use twigvlm_eval::plot::{line_chart, Labels, Series};
use twigvlm_eval::steps::{time_batched_steps, time_steps, StepOptions, StepTime};

use super::named::named;

#[derive(Debug, clap::Args)]
pub struct BenchStepsArgs {
    /// Model directory (its language model is timed).
    #[arg(long)]
    pub model: PathBuf,
    /// Compute backend.
    #[arg(long, value_parser = named::<BackendKind>(), default_value_t = BackendKind::Flex)]
    pub backend: BackendKind,
    /// Storage types of the linear weights to time, one model load each.
    #[arg(long, value_delimiter = ',', value_parser = named::<StorageDtype>(), default_value = "f32,f16")]
    pub weights_dtypes: Vec<StorageDtype>,
    /// Rows per step to time.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,6,8,16")]
    pub rows: Vec<usize>,
    /// Tokens in the KV cache before each step.
    #[arg(long, default_value_t = 100)]
    pub cache: usize,
    /// Timed steps per row count (after one untimed step); the median is reported.
    #[arg(long, default_value_t = 10)]
    pub repeats: usize,
    /// Where `<name>.json` and `<name>.png` are written.
    #[arg(long, default_value = "bench/results/decode-steps")]
    pub results_dir: PathBuf,
    /// File name of the results (default: the model directory's name).
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Serialize)]
struct Report {
    model: String,
    backend: BackendKind,
    threads: usize,
    cache: usize,
    repeats: usize,
    results: Vec<DtypeSteps>,
}

#[derive(Serialize)]
struct DtypeSteps {
    weights_dtype: String,
    /// One request, `rows` new tokens.
    steps: Vec<StepTime>,
    /// `rows` requests side by side, one new token each (a batch of decoding requests).
    batched: Vec<StepTime>,
}

impl BackendJob for BenchStepsArgs {
    type Output = anyhow::Result<()>;

    fn run<B: DecodeOps>(self, device: B::Device) -> anyhow::Result<()> {
        anyhow::ensure!(!self.rows.is_empty() && !self.rows.contains(&0), "--rows must list positive row counts");
        let options = StepOptions { rows: self.rows.clone(), cache: self.cache, repeats: self.repeats };
        let mut results = Vec::new();
        for &dtype in &self.weights_dtypes {
            let load = LoadOptions { weights_dtype: Some(dtype), ..Default::default() };
            let loaded = load_llava::<B>(&self.model, &load, &device)
                .with_context(|| format!("cannot load the model in {}", self.model.display()))?;
            eprintln!("timing {} with {dtype} weights", self.model.display());
            let steps = time_steps(&loaded.model.language_model, &options, &device);
            let batched = time_batched_steps(&loaded.model.language_model, &options, &device);
            for (step, side_by_side) in steps.iter().zip(&batched) {
                let relative = |t: &StepTime| t.relative_to_one_row.map_or(String::new(), |r| format!(" ({r:.2}×)"));
                println!(
                    "{dtype:>4}  {:>2} rows  {:8.2} ms{}   {:>2} requests  {:8.2} ms{}",
                    step.rows,
                    step.ms,
                    relative(step),
                    side_by_side.rows,
                    side_by_side.ms,
                    relative(side_by_side)
                );
            }
            results.push(DtypeSteps { weights_dtype: dtype.to_string(), steps, batched });
        }
        let name = match &self.name {
            Some(name) => name.clone(),
            None => self.model.file_name().map_or("model".into(), |n| n.to_string_lossy().into_owned()),
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let report = Report {
            model: self.model.display().to_string(),
            backend: self.backend,
            threads,
            cache: self.cache,
            repeats: self.repeats,
            results,
        };
        std::fs::create_dir_all(&self.results_dir)?;
        let json = self.results_dir.join(format!("{name}.json"));
        std::fs::write(&json, serde_json::to_string_pretty(&report)? + "\n")?;
        let curve = |name: String, steps: &[StepTime]| Series {
            name,
            points: steps.iter().map(|s| (s.rows as f64, s.ms)).collect(),
        };
        let series: Vec<Series> = report
            .results
            .iter()
            .flat_map(|r| {
                [
                    curve(format!("{} weights, one request", r.weights_dtype), &r.steps),
                    curve(format!("{} weights, one row per request", r.weights_dtype), &r.batched),
                ]
            })
            .collect();
        let title = format!("{name}: one decoding step ({threads} threads, {} cached tokens)", self.cache);
        let labels =
            Labels { title: &title, x: "rows per step (tokens of one request, or requests)", y: "ms per step" };
        line_chart(&self.results_dir.join(format!("{name}.png")), &labels, &series)?;
        eprintln!("written to {}", json.display());
        Ok(())
    }
}
