//! `twigvlm import gguf`: a llama.cpp GGUF Llama → a HF-style model directory (`config.json`,
//! `model.safetensors`, `tokenizer.json`, `tokenizer_config.json` with the chat template), so the
//! rest of the project loads it like any other checkpoint.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::reader::{GgufFile, MetadataValue};
use crate::error::{BackboneError, Result};
use crate::weights::{write_safetensors, NamedTensor};

/// Storage precision of the imported weights.
pub use crate::weights::StorageDtype as ImportDtype;

/// What an import wrote.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    pub out_dir: PathBuf,
    pub tensors: usize,
    pub parameters: usize,
    pub tied_embeddings: bool,
}

/// The Llama hyper-parameters stored in GGUF metadata.
struct LlamaHyper {
    layers: usize,
    hidden: usize,
    ffn: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    context: usize,
    rope_theta: f64,
    rms_eps: f64,
    vocab: usize,
}

const SUPPORTED_ARCHITECTURE: &str = "llama";

fn error(file: &GgufFile, reason: String) -> BackboneError {
    BackboneError::Checkpoint { path: file.path().to_path_buf(), reason }
}

impl LlamaHyper {
    fn read(file: &GgufFile) -> Result<Self> {
        let arch = file.get("general.architecture").and_then(MetadataValue::as_str).unwrap_or("(none)");
        if arch != SUPPORTED_ARCHITECTURE {
            return Err(error(
                file,
                format!("architecture `{arch}` is not supported (supported: {SUPPORTED_ARCHITECTURE})"),
            ));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let int = |k: &str| -> Result<usize> {
            file.get(&key(k))
                .and_then(MetadataValue::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| error(file, format!("missing metadata `{}`", key(k))))
        };
        let heads = int("attention.head_count")?;
        let hidden = int("embedding_length")?;
        let vocab = match file.get("tokenizer.ggml.tokens").and_then(MetadataValue::as_array) {
            Some(tokens) => tokens.len(),
            None => int("vocab_size")?,
        };
        Ok(Self {
            layers: int("block_count")?,
            hidden,
            ffn: int("feed_forward_length")?,
            heads,
            kv_heads: int("attention.head_count_kv").unwrap_or(heads),
            head_dim: int("rope.dimension_count").unwrap_or(hidden / heads.max(1)),
            context: int("context_length")?,
            rope_theta: file.get(&key("rope.freq_base")).and_then(MetadataValue::as_f64).unwrap_or(10_000.0),
            rms_eps: file.get(&key("attention.layer_norm_rms_epsilon")).and_then(MetadataValue::as_f64).ok_or_else(
                || error(file, format!("missing metadata `{}`", key("attention.layer_norm_rms_epsilon"))),
            )?,
            vocab,
        })
    }
}

/// HF name of a GGUF Llama tensor, and how many heads to un-permute its rows by (q and k only).
fn hf_name(name: &str, hyper: &LlamaHyper) -> Option<(String, Option<usize>)> {
    match name {
        "token_embd.weight" => return Some(("model.embed_tokens.weight".into(), None)),
        "output_norm.weight" => return Some(("model.norm.weight".into(), None)),
        "output.weight" => return Some(("lm_head.weight".into(), None)),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (hf, heads) = match part {
        "attn_norm.weight" => ("input_layernorm.weight", None),
        "ffn_norm.weight" => ("post_attention_layernorm.weight", None),
        "attn_q.weight" => ("self_attn.q_proj.weight", Some(hyper.heads)),
        "attn_k.weight" => ("self_attn.k_proj.weight", Some(hyper.kv_heads)),
        "attn_v.weight" => ("self_attn.v_proj.weight", None),
        "attn_output.weight" => ("self_attn.o_proj.weight", None),
        "ffn_gate.weight" => ("mlp.gate_proj.weight", None),
        "ffn_up.weight" => ("mlp.up_proj.weight", None),
        "ffn_down.weight" => ("mlp.down_proj.weight", None),
        _ => return None,
    };
    (layer < hyper.layers).then(|| (format!("model.layers.{layer}.{hf}"), heads))
}

/// Undoes llama.cpp's q/k row permutation: within each head, GGUF interleaves the two rotary halves
/// (rows `2i`, `2i+1`); HF keeps them as blocks (`i`, `i + d/2`).
fn unpermute_rows(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let per_head = rows / heads;
    let half = per_head / 2;
    let mut out = vec![0.0; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * per_head + i * 2 + j;
                let dst = h * per_head + j * half + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Imports `gguf_path` into `out_dir` (which must not exist or be empty). `progress(done, total)`
/// is called after each tensor.
pub fn import_gguf(
    gguf_path: &Path,
    out_dir: &Path,
    dtype: ImportDtype,
    mut progress: impl FnMut(usize, usize),
) -> Result<ImportSummary> {
    let file = GgufFile::open(gguf_path)?;
    let hyper = LlamaHyper::read(&file)?;
    if out_dir.exists() && std::fs::read_dir(out_dir).map_err(|e| BackboneError::io(out_dir, e))?.next().is_some() {
        return Err(BackboneError::io(
            out_dir,
            std::io::Error::new(std::io::ErrorKind::AlreadyExists, "the output directory exists and is not empty"),
        ));
    }
    let tokenizer = super::tokenizer::tokenizer_json(&file).map_err(|reason| error(&file, reason))?;
    // Check that the JSON is a tokenizer the runtime accepts before writing anything.
    tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&tokenizer).expect("serialisable"))
        .map_err(|e| error(&file, format!("the converted tokenizer is invalid: {e}")))?;

    let mut tensors: Vec<NamedTensor> = Vec::new();
    let total = file.tensors.len();
    for (done, info) in file.tensors.iter().enumerate() {
        let (name, heads) = hf_name(&info.name, &hyper).ok_or_else(|| {
            error(&file, format!("tensor `{}` has no place in a Llama model (rope scaling factors and other extras are not supported)", info.name))
        })?;
        let shape = info.shape();
        let mut values = file.tensor_f32(&info.name)?;
        if let (Some(heads), [rows, cols]) = (heads, shape.as_slice()) {
            values = unpermute_rows(&values, *rows, *cols, heads);
        }
        tensors.push((name, shape, values));
        progress(done + 1, total);
    }
    let tied = !tensors.iter().any(|t| t.0 == "lm_head.weight");
    let parameters = tensors.iter().map(|t| t.2.len()).sum();

    let staging = out_dir.with_file_name(format!(
        ".{}.importing-{}",
        out_dir.file_name().and_then(|n| n.to_str()).unwrap_or("model"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| BackboneError::io(&staging, e))?;
    write_safetensors(&staging.join("model.safetensors"), &tensors, dtype)?;
    let eos = file.get("tokenizer.ggml.eos_token_id").and_then(MetadataValue::as_u64);
    let bos = file.get("tokenizer.ggml.bos_token_id").and_then(MetadataValue::as_u64);
    let config = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "vocab_size": hyper.vocab, "hidden_size": hyper.hidden, "intermediate_size": hyper.ffn,
        "num_hidden_layers": hyper.layers, "num_attention_heads": hyper.heads, "num_key_value_heads": hyper.kv_heads,
        "head_dim": hyper.head_dim, "max_position_embeddings": hyper.context, "rms_norm_eps": hyper.rms_eps,
        "rope_theta": hyper.rope_theta, "tie_word_embeddings": tied, "bos_token_id": bos, "eos_token_id": eos,
        "torch_dtype": dtype.torch_name(),
        "imported_from": gguf_path.file_name().and_then(|n| n.to_str()),
    });
    write_json(&staging.join("config.json"), &config)?;
    write_json(&staging.join("tokenizer.json"), &tokenizer)?;
    let token = |id: Option<u64>| -> Option<String> {
        let tokens = file.get("tokenizer.ggml.tokens")?.as_array()?;
        tokens.get(id? as usize)?.as_str().map(String::from)
    };
    let template = file.get("tokenizer.chat_template").and_then(MetadataValue::as_str);
    write_json(
        &staging.join("tokenizer_config.json"),
        &json!({"bos_token": token(bos), "eos_token": token(eos), "chat_template": template,
                "add_bos_token": file.get("tokenizer.ggml.add_bos_token").and_then(MetadataValue::as_bool).unwrap_or(false)}),
    )?;
    if let Some(template) = template {
        let path = staging.join("chat_template.jinja");
        std::fs::write(&path, template).map_err(|e| BackboneError::io(&path, e))?;
    }
    if out_dir.exists() {
        std::fs::remove_dir(out_dir).map_err(|e| BackboneError::io(out_dir, e))?;
    }
    std::fs::rename(&staging, out_dir).map_err(|e| BackboneError::io(out_dir, e))?;
    Ok(ImportSummary { out_dir: out_dir.to_path_buf(), tensors: tensors.len(), parameters, tied_embeddings: tied })
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("serialisable");
    std::fs::write(path, text).map_err(|e| BackboneError::io(path, e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn unpermute_restores_rotate_half_order() {
        // One head of 4 rows (d/2 = 2), one column: GGUF order [a0, b0, a1, b1] → HF [a0, a1, b0, b1].
        let gguf = [10.0, 20.0, 11.0, 21.0];
        assert_eq!(super::unpermute_rows(&gguf, 4, 1, 1), vec![10.0, 11.0, 20.0, 21.0]);
    }
}
