//! `tokenizer.json` from GGUF tokenizer metadata. Byte-level BPE (`tokenizer.ggml.model = gpt2`)
//! with the pre-tokenizer named by `tokenizer.ggml.pre`; control and user-defined tokens become
//! special added tokens.

use serde_json::{json, Value};

use super::reader::{GgufFile, MetadataValue};

/// llama.cpp token types (`llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

fn strings(file: &GgufFile, key: &str) -> Result<Vec<String>, String> {
    let items = file.get(key).and_then(MetadataValue::as_array).ok_or_else(|| format!("missing `{key}`"))?;
    items.iter().map(|v| v.as_str().map(String::from).ok_or_else(|| format!("`{key}` holds a non-string"))).collect()
}

fn byte_level(add_prefix_space: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": true, "use_regex": true})
}

/// The HF pre-tokenizer matching llama.cpp's `tokenizer.ggml.pre` name.
fn pre_tokenizer(pre: &str) -> Result<Value, String> {
    match pre {
        "default" | "gpt2" => Ok(byte_level(false)),
        // SmolLM / SmolLM2: single digits, then GPT-2's byte-level regex.
        "smollm" => Ok(json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level(false),
        ]})),
        other => Err(format!("tokenizer.ggml.pre `{other}` is not supported (gpt2, default, smollm)")),
    }
}

/// Builds the tokenizer JSON (HF `tokenizers` format) described by the GGUF metadata.
pub fn tokenizer_json(file: &GgufFile) -> Result<Value, String> {
    let model = file.get("tokenizer.ggml.model").and_then(MetadataValue::as_str).unwrap_or("(none)");
    if model != "gpt2" {
        return Err(format!("tokenizer.ggml.model `{model}` is not supported (gpt2 byte-level BPE)"));
    }
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let merges = strings(file, "tokenizer.ggml.merges")?;
    let types: Vec<i64> = match file.get("tokenizer.ggml.token_type").and_then(MetadataValue::as_array) {
        Some(items) => items.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    let pre = file.get("tokenizer.ggml.pre").and_then(MetadataValue::as_str).unwrap_or("default");
    let vocab: serde_json::Map<String, Value> =
        tokens.iter().enumerate().map(|(id, t)| (t.clone(), Value::from(id))).collect();
    let added: Vec<Value> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &kind))| kind == TOKEN_TYPE_CONTROL || kind == TOKEN_TYPE_USER_DEFINED)
        .map(|(id, (content, _))| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    let add_bos = file.get("tokenizer.ggml.add_bos_token").and_then(MetadataValue::as_bool).unwrap_or(false);
    let bos = file.get("tokenizer.ggml.bos_token_id").and_then(MetadataValue::as_u64);
    let post_processor = match (add_bos, bos) {
        (true, Some(bos)) => {
            let token = tokens.get(bos as usize).ok_or("bos_token_id out of range")?;
            json!({"type": "TemplateProcessing",
                   "single": [{"SpecialToken": {"id": token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                   "pair": [{"SpecialToken": {"id": token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                            {"Sequence": {"id": "B", "type_id": 1}}],
                   "special_tokens": {token.clone(): {"id": token, "ids": [bos], "tokens": [token]}}})
        }
        _ => Value::Null,
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(pre)?,
        "post_processor": post_processor,
        "decoder": byte_level(true),
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    }))
}
