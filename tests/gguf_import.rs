//! `import gguf` round trip: the tiny GGUF (quantised, q/k permuted as llama.cpp writes them) is
//! imported and must reproduce the HF tokenizer's ids and the HF model's logits and greedy tokens.

use std::ops::ControlFlow;

use burn::prelude::*;
use twigvlm_backbone::gguf::{import_gguf, ImportDtype};
use twigvlm_backbone::{load_language_model, AttentionProbe, KvCache};
use twigvlm_integration::*;
use twigvlm_ssd::{decode_vanilla, DecodeConfig, Sampler, Sampling};

type B = TestBackend;

struct Reference {
    text: String,
    prompt_ids: Vec<u32>,
    last_logits: Vec<f32>,
    greedy_ids: Vec<u32>,
    round_trip: Vec<(String, Vec<u32>)>,
}

fn reference() -> Reference {
    let path = fixtures().join("gguf/tiny-llama.reference.json");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ids =
        |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<_>>();
    let texts = json["round_trip_texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string());
    Reference {
        text: json["text"].as_str().unwrap().to_string(),
        prompt_ids: ids(&json["prompt_ids"]),
        last_logits: json["last_logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect(),
        greedy_ids: ids(&json["greedy_ids"]),
        round_trip: texts.zip(json["round_trip_ids"].as_array().unwrap().iter().map(ids)).collect(),
    }
}

/// Imports the tiny GGUF into a directory of its own per test (tests run in parallel).
fn imported(dtype: ImportDtype, test: &str) -> twigvlm_testkit::TempDir {
    let out = twigvlm_testkit::temp_dir(&format!("import-{dtype:?}-{test}"));
    let mut calls = 0;
    let summary = import_gguf(&fixtures().join("gguf/tiny-llama.gguf"), out.path(), dtype, |_, _| calls += 1).unwrap();
    assert_eq!((summary.tensors, calls), (20, 20));
    assert!(summary.tied_embeddings);
    out
}

fn check(dtype: ImportDtype, logits_atol: f32) {
    let dir = imported(dtype, "check");
    let reference = reference();
    let lm = load_language_model::<B>(dir.path(), &Default::default()).unwrap();
    assert!(lm.report.unexpected.is_empty(), "{:?}", lm.report.unexpected);
    assert_eq!(lm.config.rope_theta, 100000.0);
    assert!(lm.config.tie_word_embeddings);

    let prompt = lm.tokenizer.encode(&reference.text, 0).unwrap();
    assert_eq!(prompt.ids, reference.prompt_ids, "tokenisation with special tokens, digits and emoji");
    assert_eq!(
        lm.tokenizer.decode(&prompt.ids).unwrap(),
        reference.text.replace("<|im_start|>", "").replace("<|im_end|>", "")
    );
    for (text, ids) in &reference.round_trip {
        assert_eq!(&lm.tokenizer.encode(text, 0).unwrap().ids, ids, "{text}");
        assert_eq!(&lm.tokenizer.decode(ids).unwrap(), text);
    }

    let device = Default::default();
    let ids: Vec<i32> = prompt.ids.iter().map(|&i| i as i32).collect();
    let embeds = lm.model.embed(Tensor::from_data(TensorData::new(ids.clone(), [1, ids.len()]), &device));
    let positions: Vec<usize> = (0..ids.len()).collect();
    let mut cache = KvCache::new(lm.model.num_layers());
    let out_h = lm.model.forward_layers(
        embeds.clone(),
        &lm.model.rope(&positions, &device),
        0..lm.model.num_layers(),
        &mut cache,
        &AttentionProbe::default(),
    );
    let last = lm.model.logits(out_h.hidden.narrow(1, ids.len() - 1, 1)).into_data().into_vec::<f32>().unwrap();
    let diff = max_abs_diff(&last, &reference.last_logits);
    eprintln!("{dtype:?} import: last-logit max |diff| {diff:.2e}");
    assert!(diff <= logits_atol, "{dtype:?}: {diff}");

    let config = DecodeConfig {
        max_new_tokens: reference.greedy_ids.len(),
        eos_token_ids: vec![2],
        context_length: lm.config.max_position_embeddings,
    };
    let out = decode_vanilla(
        &&lm.model,
        &twigvlm_backbone::Alone,
        embeds,
        &config,
        &mut Sampler::new(Sampling::Greedy, 0),
        |_| ControlFlow::Continue(()),
    )
    .unwrap();
    assert_eq!(out.tokens, reference.greedy_ids);
}

#[test]
fn f32_import_matches_the_hf_model_exactly() {
    check(ImportDtype::F32, LOGITS_ATOL);
}

#[test]
fn f16_import_keeps_greedy_tokens() {
    // f16 storage rounds the dequantised values (a Q8_0 product needs up to 19 mantissa bits).
    check(ImportDtype::F16, 5e-2);
}

#[test]
fn foreign_architectures_and_tensors_are_refused() {
    let tmp = twigvlm_testkit::temp_dir("import-bad");
    let out = tmp.path().join("model");
    let err = import_gguf(&fixtures().join("gguf/unsupported-q4k.gguf"), &out, ImportDtype::F16, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing metadata"), "{err}");
    assert!(!out.exists(), "nothing is written on failure");
    let err = import_gguf(&fixtures().join("gguf/unknown-arch.gguf"), &out, ImportDtype::F16, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("architecture `mamba` is not supported"), "{err}");
    assert!(!out.exists());
}

#[test]
fn imported_chat_template_renders_the_reference_prompt_and_splits_training_turns() {
    let dir = imported(ImportDtype::F32, "template");
    let reference = reference();
    let lm = load_language_model::<B>(dir.path(), &Default::default()).unwrap();
    let question = "What color is the triangle? 42 🙂";
    let text = lm.template.render(question, false).unwrap();
    assert_eq!(text, reference.text);
    assert_eq!(lm.tokenizer.encode(&text, 0).unwrap().ids, reference.prompt_ids);

    let turns = [(question.to_string(), "red".to_string()), ("And the circle?".to_string(), "blue".to_string())];
    let segments = lm.template.training_segments(None, &turns, true).unwrap();
    let (tokens, trained) = lm.tokenizer.encode_segments(&segments, 4).unwrap();
    assert_eq!(tokens.ids.len(), trained.len());
    let span = tokens.image_span.clone().expect("image span");
    assert_eq!(span.len(), 4);
    assert!(trained[..span.end].iter().all(|&t| !t), "nothing before the first answer is trained");
    let answer_ids: Vec<u32> = tokens.ids.iter().zip(&trained).filter(|(_, &t)| t).map(|(&id, _)| id).collect();
    assert_eq!(
        lm.tokenizer.decode(&answer_ids).unwrap(),
        "red\nblue\n",
        "answers and their end-of-turn tokens are trained"
    );
    assert_eq!(answer_ids.iter().filter(|&&id| id == 2).count(), 2, "<|im_end|> closes each answer");
}
