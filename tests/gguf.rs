//! GGUF reading and dequantisation against the reference `gguf` Python package
//! (`xtask/fixtures/make_gguf_fixtures.py`), and clear errors on broken files.

use twigvlm_backbone::gguf::{GgmlType, GgufFile};
use twigvlm_backbone::weights::TensorSource;
use twigvlm_integration::*;

fn gguf_path(name: &str) -> std::path::PathBuf {
    fixtures().join("gguf").join(name)
}

#[test]
fn header_and_metadata() {
    let file = GgufFile::open(&gguf_path("tiny-llama.gguf")).unwrap();
    assert_eq!(file.version, 3);
    assert_eq!(file.get("general.architecture").and_then(|v| v.as_str()), Some("llama"));
    assert_eq!(file.get("llama.block_count").and_then(|v| v.as_u64()), Some(2));
    assert_eq!(file.get("llama.rope.freq_base").and_then(|v| v.as_f64()), Some(100000.0));
    assert_eq!(file.get("tokenizer.ggml.model").and_then(|v| v.as_str()), Some("gpt2"));
    assert!(file.get("tokenizer.chat_template").and_then(|v| v.as_str()).unwrap().contains("<|im_start|>"));
    let tokens = file.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()).unwrap();
    assert_eq!(tokens[2].as_str(), Some("<|im_end|>"));
    // 2 layers × 9 tensors + embedding + final norm.
    assert_eq!(file.tensors.len(), 20);
    let q = file.tensor_info("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.ggml_type, q.shape()), (GgmlType::Q4_0, vec![64, 64]));
}

#[test]
fn every_type_dequantises_like_the_reference_package() {
    let file = GgufFile::open(&gguf_path("tiny-llama.gguf")).unwrap();
    let mut reference = TensorSource::default();
    reference.add_safetensors(&gguf_path("tiny-llama.dequant.safetensors")).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for info in &file.tensors {
        let want = reference.get(&info.name).unwrap_or_else(|| panic!("no reference for {}", info.name));
        assert_eq!(info.shape(), want.shape, "{}", info.name);
        let got = file.tensor_f32(&info.name).unwrap();
        assert_close(&info.name, &got, &want.read_f32(&info.name).unwrap(), 1e-6);
        seen.insert(info.ggml_type.name());
    }
    let all: std::collections::BTreeSet<String> =
        ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"].map(String::from).into();
    assert_eq!(seen, all, "the fixture covers every supported type");
}

#[test]
fn unsupported_types_are_named() {
    let file = GgufFile::open(&gguf_path("unsupported-q4k.gguf")).unwrap();
    let msg = file.tensor_f32("blk.0.attn_q.weight").unwrap_err().to_string();
    assert!(msg.contains("blk.0.attn_q.weight") && msg.contains("ggml type 12") && msg.contains("Q4_1"), "{msg}");
}

#[test]
fn truncated_and_foreign_files_are_refused() {
    let bytes = std::fs::read(gguf_path("tiny-llama.gguf")).unwrap();
    let dir = twigvlm_testkit::temp_dir("gguf");
    for (name, content, needle) in [
        ("tail.gguf", &bytes[..bytes.len() - 100], "ends past the end of the file"),
        ("header.gguf", &bytes[..2000], "truncated file"),
        ("magic.gguf", &b"GGML\x03\x00\x00\x00"[..], "bad magic"),
        ("version.gguf", &b"GGUF\x01\x00\x00\x00"[..], "version 1"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let msg = GgufFile::open(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains(needle) && msg.contains(name), "{name}: {msg}");
    }
}
