//! `cargo xtask bench-hf`: greedy decoding in HF transformers (eager, f32, CPU, same thread count)
//! and in `twigvlm generate` (with f32 and with f16 weights), side by side in one run, on the tiny
//! fixture and on a mid-size random model written on the fly. Writes
//! `bench/results/hf-baseline.json`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context};
use serde_json::{json, Value};

use crate::{python, run as run_command, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// New tokens per generation.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Timed repetitions per engine (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Skip the mid-size model (the tiny fixture only).
    #[arg(long)]
    tiny_only: bool,
}

struct Case {
    name: &'static str,
    model: PathBuf,
    image: PathBuf,
    prompt: &'static str,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let root = workspace_root();
    let python = python::venv()?;
    run_command(Command::new("cargo").args(["build", "--release", "-p", "twigvlm"]))?;
    let mut cases = vec![Case {
        name: "tiny-llava-hf5",
        model: root.join("tests/fixtures/tiny-llava-hf5"),
        image: root.join("tests/fixtures/images/shapes-80x60.png"),
        prompt: "What is shown in this image?",
    }];
    if !args.tiny_only {
        let mid = root.join("target/bench-models/mid-llava");
        if !mid.join("config.json").is_file() {
            run_command(
                Command::new(&python)
                    .arg("xtask/bench/make_midsize.py")
                    .arg("--out")
                    .arg(&mid)
                    .arg("--tokenizer-from")
                    .arg(root.join("tests/fixtures/tiny-llava-hf5")),
            )?;
        }
        cases.push(Case {
            name: "mid-llava (d1024, 12 layers, 576 visual tokens)",
            model: mid,
            image: root.join("tests/fixtures/images/shapes-80x60.png"),
            prompt: "Describe the image in detail.",
        });
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows = Vec::new();
    for case in &cases {
        let hf = hf_run(&python, case, &args, threads)?;
        for weights in WEIGHTS_DTYPES {
            let ours = ours_run(case, &args, weights)?;
            let ratio = ours["tokens_per_s"].as_f64().unwrap_or(0.0) / hf["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
            let prefill_ratio =
                hf["prefill_ms"].as_f64().unwrap_or(f64::NAN) / ours["prefill_ms"].as_f64().unwrap_or(f64::NAN);
            let same_tokens = hf["generated_ids"] == ours["generated_ids"];
            println!(
                "{:<50} {weights} weights | decode tok/s: HF {:>8.1}  twigvlm {:>8.1}  ratio {:>5.2}x | prefill ms: HF {:>8.1}  twigvlm {:>8.1} | same tokens: {same_tokens}",
                case.name,
                hf["tokens_per_s"].as_f64().unwrap_or(0.0),
                ours["tokens_per_s"].as_f64().unwrap_or(0.0),
                ratio,
                hf["prefill_ms"].as_f64().unwrap_or(0.0),
                ours["prefill_ms"].as_f64().unwrap_or(0.0),
            );
            rows.push(json!({
                "model": case.name, "threads": threads, "max_new_tokens": args.max_new_tokens,
                "repeats": args.repeats, "weights_dtype": weights, "hf": hf, "twigvlm": ours,
                "decode_speed_ratio": ratio, "prefill_speed_ratio": prefill_ratio, "same_tokens": same_tokens,
            }));
        }
    }
    let out = root.join("bench/results/hf-baseline.json");
    std::fs::create_dir_all(out.parent().unwrap())?;
    let tmp = out.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&json!({ "rows": rows }))?)?;
    std::fs::rename(&tmp, &out)?;
    println!("wrote {}", out.display());
    Ok(())
}

fn hf_run(python: &Path, case: &Case, args: &Args, threads: usize) -> anyhow::Result<Value> {
    let out = Command::new(python)
        .current_dir(workspace_root())
        .arg("xtask/bench/hf_generate.py")
        .arg("--model")
        .arg(&case.model)
        .arg("--image")
        .arg(&case.image)
        .args(["--prompt", case.prompt])
        .args(["--max-new-tokens", &args.max_new_tokens.to_string()])
        .args(["--threads", &threads.to_string(), "--repeats", &args.repeats.to_string()])
        .output()
        .context("running hf_generate.py")?;
    ensure!(out.status.success(), "hf_generate.py failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Storage types of the weights twigvlm runs with (HF transformers widens everything to f32).
const WEIGHTS_DTYPES: [&str; 2] = ["f32", "f16"];

/// Median over `repeats` runs of `twigvlm generate --json` (one warm-up first).
fn ours_run(case: &Case, args: &Args, weights: &str) -> anyhow::Result<Value> {
    let binary = workspace_root().join("target/release/twigvlm");
    let once = || -> anyhow::Result<Value> {
        let out = Command::new(&binary)
            .arg("generate")
            .arg("--model")
            .arg(&case.model)
            .arg("--image")
            .arg(&case.image)
            .args(["--prompt", case.prompt, "--max-new-tokens", &args.max_new_tokens.to_string(), "--json"])
            .args(["--weights-dtype", weights])
            .output()?;
        ensure!(out.status.success(), "twigvlm failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    once()?;
    let mut runs = (0..args.repeats).map(|_| once()).collect::<anyhow::Result<Vec<_>>>()?;
    runs.sort_by(|a, b| a["stats"]["tokens_per_s"].as_f64().partial_cmp(&b["stats"]["tokens_per_s"].as_f64()).unwrap());
    let median = &runs[runs.len() / 2];
    let prefill: Vec<f64> = {
        let mut p: Vec<f64> = runs.iter().filter_map(|r| r["stats"]["prefill_ms"].as_f64()).collect();
        p.sort_by(f64::total_cmp);
        p
    };
    Ok(json!({
        "engine": "twigvlm (flex)", "prompt_tokens": median["prompt_ids"].as_array().map_or(0, Vec::len),
        "new_tokens": median["stats"]["new_tokens"], "prefill_ms": prefill[prefill.len() / 2],
        "decode_ms": median["stats"]["decode_ms"], "tokens_per_s": median["stats"]["tokens_per_s"],
        "generated_ids": median["generated_ids"],
    }))
}
