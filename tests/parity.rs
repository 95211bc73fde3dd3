//! Parity with HF transformers on the tiny fixtures (`xtask/fixtures/make_llava_fixtures.py`):
//! vision tower and projector (atol 1e-4), hidden states and logits (1e-3), last-query attention
//! per layer and head (1e-4), prompt ids and 20 greedy tokens (exact), for every checkpoint layout.
//! Everything after preprocessing runs on the reference pixel values.

use burn::prelude::*;
use twigvlm_backbone::preprocess::load_image;
use twigvlm_backbone::{load_llava, AttentionProbe, KvCache, LoadOptions, LoadedLlava};
use twigvlm_integration::*;
use twigvlm_ssd::{decode_vanilla, DecodeConfig, Sampler, Sampling, StopReason};

type B = TestBackend;

fn host<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().expect("f32")
}

/// Our bicubic reproduces Pillow's fixed-point filter and transformers' rescale/normalise
/// arithmetic, so preprocessing of losslessly decoded images agrees to float rounding.
const PIXEL_ATOL: f32 = 1e-6;
/// JPEG decoders may differ (the `image` crate's zune-jpeg vs Pillow's libjpeg-turbo, chroma
/// upsampling and IDCT rounding). On the noise fixture, the worst case for JPEG, the decoded
/// pixels differ by a few 8-bit levels; the mean stays well under one level (1/255/std ≈ 0.015).
const JPEG_PIXEL_MAX_ATOL: f32 = 0.15;
const JPEG_PIXEL_MEAN_ATOL: f32 = 0.01;

fn check_model(model: &str) {
    let device = Default::default();
    let llava: LoadedLlava<B> = load_llava(&model_dir(model), &LoadOptions::default(), &device).expect("fixture loads");
    assert!(llava.report.unexpected.is_empty(), "unexpected tensors: {:?}", llava.report.unexpected);
    // The 4.x fixture holds the same weights as the 5.x one under other names and dtype.
    let reference = Reference::load(if model == "tiny-llava-hf4" { "tiny-llava-hf5" } else { model });
    assert!(!reference.cases.is_empty());
    for case in &reference.cases {
        check_case(model, &llava, &reference, case, &device);
    }
}

fn check_case(model: &str, llava: &LoadedLlava<B>, reference: &Reference, case: &ReferenceCase, device: &Device<B>) {
    let what = |part: &str| format!("{model}/{}: {part}", case.name);
    let prompt_text = match case.name.as_str() {
        "shapes" => "What is shown in this image?",
        "noise" => "Describe the colours.",
        "webp" => "What shape is this?",
        "text" => "Tell me a story about a robot.",
        other => panic!("unknown case {other}"),
    };
    let text = llava.template.render(prompt_text, case.image.is_some()).unwrap();
    let prompt = llava.tokenizer.encode(&text, llava.config.visual_tokens_per_image()).unwrap();
    // The reference marks visual positions with the llava-hf image token; ours hold it too when the
    // tokenizer has one (llava-hf), else a placeholder (original LLaVA), so compare the span apart.
    let span = prompt.image_span.clone().unwrap_or(0..0);
    let image_id = case.prompt_ids.get(span.start).copied();
    let ours: Vec<u32> =
        prompt.ids.iter().enumerate().map(|(i, &id)| if span.contains(&i) { image_id.unwrap() } else { id }).collect();
    assert_eq!(ours, case.prompt_ids, "{}", what("prompt ids"));
    if let Some(id) = llava.tokenizer.image_token_id() {
        assert!(prompt.ids[span.clone()].iter().all(|&t| t == id), "{}", what("image positions"));
    }
    assert_eq!(case.prompt_ids.iter().filter(|&&t| Some(t) == image_id && !span.is_empty()).count(), span.len());

    let features = case.image.as_ref().map(|image| {
        let (ref_pixels, shape) = reference.tensor(&case.name, "pixel_values");
        let (pixels, our_shape) = llava.preprocessor.preprocess(&load_image(&image_path(image)).unwrap()).unwrap();
        assert_eq!(our_shape.to_vec(), shape, "{}", what("pixel shape"));
        if image.ends_with(".jpg") {
            let mean = pixels.iter().zip(&ref_pixels).map(|(a, b)| (a - b).abs()).sum::<f32>() / pixels.len() as f32;
            eprintln!(
                "{}: JPEG pixel max |diff| {:.4}, mean {mean:.5}",
                what("pixel_values"),
                max_abs_diff(&pixels, &ref_pixels)
            );
            assert_close(&what("pixel_values"), &pixels, &ref_pixels, JPEG_PIXEL_MAX_ATOL);
            assert!(mean <= JPEG_PIXEL_MEAN_ATOL, "{}: mean |diff| {mean}", what("pixel_values"));
        } else {
            assert_close(&what("pixel_values"), &pixels, &ref_pixels, PIXEL_ATOL);
        }

        let pixels = Tensor::<B, 3>::from_data(TensorData::new(ref_pixels, [shape[0], shape[1], shape[2]]), device)
            .unsqueeze::<4>();
        let vision = llava.model.vision_features(pixels.clone());
        assert_close(
            &what("vision features"),
            &host(vision),
            &reference.tensor(&case.name, "vision_features").0,
            VISION_ATOL,
        );
        let projected = llava.model.image_features(pixels);
        assert_close(
            &what("image features"),
            &host(projected.clone()),
            &reference.tensor(&case.name, "image_features").0,
            VISION_ATOL,
        );
        projected
    });

    let embeds = llava.model.embed_prompt(&prompt, features, device);
    let (ref_hidden, hidden_shape) = reference.tensor(&case.name, "hidden_states");
    let (ref_attention, attention_shape) = reference.tensor(&case.name, "last_attention");
    let lm = &llava.model.language_model;
    let len = prompt.len();
    let per_layer = hidden_shape[1] * hidden_shape[2];
    assert_close(&what("embeddings"), &host(embeds.clone()), &ref_hidden[..per_layer], HIDDEN_ATOL);

    let positions: Vec<usize> = (0..len).collect();
    let rope = lm.rope(&positions, device);
    let mut cache = KvCache::new(lm.num_layers());
    let probe = AttentionProbe::last_row(len);
    let mut hidden = embeds.clone();
    let per_attention = attention_shape[1] * attention_shape[2];
    for layer in 0..lm.num_layers() {
        let out = lm.forward_layers(hidden, &rope, layer..layer + 1, &mut cache, &probe);
        hidden = out.hidden;
        let (_, probs) = &out.attention[0];
        let want = &ref_attention[layer * per_attention..(layer + 1) * per_attention];
        assert_close_probabilities(&what(&format!("layer {layer} last-query attention")), &host(probs.clone()), want);
        // HF's last hidden state is after the final norm; every earlier one is a layer output.
        if layer + 1 < lm.num_layers() {
            let want = &ref_hidden[(layer + 1) * per_layer..(layer + 2) * per_layer];
            assert_close(&what(&format!("layer {layer} hidden state")), &host(hidden.clone()), want, HIDDEN_ATOL);
        }
    }
    let logits = host(lm.logits(hidden));
    assert_close(&what("logits"), &logits, &reference.tensor(&case.name, "logits").0, LOGITS_ATOL);

    let config = DecodeConfig {
        max_new_tokens: case.greedy_ids.len().max(20),
        eos_token_ids: llava.config.text.eos_token_ids.clone(),
        context_length: llava.config.text.max_position_embeddings,
    };
    let mut sampler = Sampler::new(Sampling::Greedy, 0);
    let out = decode_vanilla(&lm, &twigvlm_backbone::Alone, embeds, &config, &mut sampler, |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(out.tokens, case.greedy_ids, "{}", what("greedy tokens"));
    let ends_with_eos = case.greedy_ids.last().is_some_and(|t| config.eos_token_ids.contains(t));
    assert_eq!(out.stop == StopReason::Eos, ends_with_eos, "{}", what("stop reason"));
}

#[test]
fn llava_hf_transformers5_layout_f16() {
    check_model("tiny-llava-hf5");
}

#[test]
fn llava_hf_transformers4_layout_bf16_sharded() {
    check_model("tiny-llava-hf4");
}

#[test]
fn original_llava_layout_pytorch_bin_shards_with_separate_clip() {
    check_model("tiny-llava-original");
}

#[test]
fn tied_embeddings_mha_full_features_last_layer_f32() {
    check_model("tiny-llava-tied");
}

#[test]
fn references_were_made_by_transformers_5() {
    let reference = Reference::load("tiny-llava-hf5");
    assert!(reference.transformers_version.starts_with("5."), "{}", reference.transformers_version);
}
