//! `cargo xtask cpu-roofline`: decode speed of the vanilla decoder on the ~1B random preset
//! against this machine's memory-bandwidth bound, with the weights stored in f32 and in f16.
//! Decoding one token reads every weight of the language model once (all layers and the head;
//! one embedding row), so tokens/s can never exceed bandwidth ÷ weight bytes, which follow the
//! weights' storage type. The bandwidth comes from a plain copy benchmark run here.
//! Writes `bench/results/cpu-roofline.json`.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde_json::{json, Value};

use crate::{twigvlm, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// New tokens per generation.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Timed passes (after one warm-up).
    #[arg(long, default_value_t = 2)]
    repeats: usize,
}

/// Bytes per copied buffer: far above any cache.
const COPY_BYTES: usize = 1 << 30;
const COPY_ROUNDS: usize = 5;
/// Storage types of the weights timed, with their bytes per weight (flex reads them as stored).
const WEIGHTS_DTYPES: [(&str, f64); 2] = [("f32", 4.0), ("f16", 2.0)];
const PRESET: &str = "llava-1b-shape";

/// Best read+write bandwidth (bytes/s) of copying a large buffer, with `threads` threads each
/// copying its own share.
fn copy_bandwidth(threads: usize) -> f64 {
    let share = COPY_BYTES / threads;
    let mut sources: Vec<Vec<u8>> = (0..threads).map(|i| vec![i as u8 + 1; share]).collect();
    let mut targets: Vec<Vec<u8>> = (0..threads).map(|_| vec![0u8; share]).collect();
    let mut best = 0.0f64;
    for round in 0..COPY_ROUNDS {
        let started = Instant::now();
        std::thread::scope(|scope| {
            for (source, target) in sources.iter().zip(targets.iter_mut()) {
                scope.spawn(move || target.copy_from_slice(source));
            }
        });
        let seconds = started.elapsed().as_secs_f64();
        best = best.max(2.0 * COPY_BYTES as f64 / seconds);
        // Touch the buffers so that no round can be skipped.
        sources[round % threads][0] = round as u8;
        assert_eq!(targets[0].len(), share);
    }
    best
}

/// Weights read per decoded token: every language-model tensor but the embedding matrix.
fn decode_weight_count(config: &Value) -> anyhow::Result<f64> {
    let text = &config["text_config"];
    let get = |key: &str| text[key].as_f64().with_context(|| format!("config.json has no text_config.{key}"));
    let (hidden, intermediate, layers, heads, kv_heads, vocab) = (
        get("hidden_size")?,
        get("intermediate_size")?,
        get("num_hidden_layers")?,
        get("num_attention_heads")?,
        get("num_key_value_heads")?,
        get("vocab_size")?,
    );
    let head_dim = hidden / heads;
    let attention = 2.0 * hidden * heads * head_dim + 2.0 * hidden * kv_heads * head_dim;
    let mlp = 3.0 * hidden * intermediate;
    let norms = 2.0 * hidden;
    Ok(layers * (attention + mlp + norms) + hidden + vocab * hidden)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let root = workspace_root();
    let model = root.join("target/bench-models").join(PRESET);
    if !model.join("model.safetensors").is_file() {
        crate::run(twigvlm().args(["make-model", "--preset", PRESET, "--out"]).arg(&model))?;
    }
    let config: Value = serde_json::from_str(&std::fs::read_to_string(model.join("config.json"))?)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bandwidth = copy_bandwidth(threads);
    let single_thread_bandwidth = copy_bandwidth(1);

    let results = root.join("target/bench-models/roofline-bench");
    let mut runs = Vec::new();
    for (dtype, bytes_per_weight) in WEIGHTS_DTYPES {
        let output = twigvlm()
            .args(["bench", "--modes", "vanilla", "--data", "shapes:seed=1000000,n=1,task=describe", "--json"])
            .args(["--max-new-tokens", &args.max_new_tokens.to_string(), "--repeats", &args.repeats.to_string()])
            .args(["--weights-dtype", dtype])
            .arg("--model")
            .arg(&model)
            .arg("--results-dir")
            .arg(&results)
            .current_dir(&root)
            .output()
            .context("cannot run twigvlm bench")?;
        anyhow::ensure!(output.status.success(), "twigvlm bench failed: {}", String::from_utf8_lossy(&output.stderr));
        let report: Value = serde_json::from_slice(&output.stdout)?;
        let row = &report["rows"][0];
        let (new_tokens, decode_ms) =
            (row["new_tokens"].as_f64().context("new_tokens")?, row["decode_ms"].as_f64().context("decode_ms")?);
        // The first token comes from the prefill.
        let decode_tokens_per_s = (new_tokens - 1.0) / (decode_ms / 1e3);
        let bytes_per_token = decode_weight_count(&config)? * bytes_per_weight;
        let bound = bandwidth / bytes_per_token;
        runs.push(json!({
            "weights_dtype": dtype,
            "weight_bytes_per_token": bytes_per_token,
            "bound_tokens_per_s": bound,
            "decode_tokens_per_s": decode_tokens_per_s,
            "fraction_of_bound": decode_tokens_per_s / bound,
        }));
    }
    let out = json!({
        "model": PRESET,
        "threads": threads,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "copy_bandwidth_one_thread_gb_s": single_thread_bandwidth / 1e9,
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "runs": runs,
    });
    write_json(&root.join("bench/results/cpu-roofline.json"), &out)?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn write_json(path: &Path, value: &Value) -> anyhow::Result<()> {
    std::fs::create_dir_all(path.parent().expect("a results directory"))?;
    std::fs::write(path, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("cannot write {}", path.display()))
}
