//! Checkpoint loading and bad input: every failure names what is wrong.

use std::path::Path;

use twigvlm_backbone::preprocess::{decode_image, load_image};
use twigvlm_backbone::weights::{write_safetensors, NamedTensor, StorageDtype, TensorSource};
use twigvlm_backbone::{load_llava, BackboneError, ImageAspect, LoadOptions};
use twigvlm_integration::*;
use twigvlm_testkit::{temp_dir, TempDir};

type B = TestBackend;

/// Copies a fixture model directory, rewriting its single safetensors file through `edit`.
fn edited_copy(model: &str, edit: impl FnOnce(&mut Vec<NamedTensor>)) -> TempDir {
    let dir = temp_dir(model);
    for entry in std::fs::read_dir(model_dir(model)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let mut source = TensorSource::default();
    source.add_safetensors(&model_dir(model).join("model.safetensors")).unwrap();
    let mut tensors: Vec<NamedTensor> = source
        .names()
        .map(|n| {
            let raw = source.get(n).unwrap();
            (n.to_string(), raw.shape.clone(), raw.read_f32(n).unwrap())
        })
        .collect();
    edit(&mut tensors);
    write_safetensors(&dir.path().join("model.safetensors"), &tensors, StorageDtype::F32).unwrap();
    dir
}

fn load(dir: &Path) -> Result<(), BackboneError> {
    load_llava::<B>(dir, &LoadOptions::default(), &Default::default()).map(|_| ())
}

#[test]
fn mis_shaped_tensor_names_the_tensor_and_both_shapes() {
    const NAME: &str = "model.language_model.layers.1.self_attn.k_proj.weight";
    let dir = edited_copy("tiny-llava-hf5", |tensors| {
        let t = tensors.iter_mut().find(|t| t.0 == NAME).unwrap();
        t.1 = vec![16, 128];
    });
    let err = load(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BackboneError::ShapeMismatch { .. }), "{msg}");
    assert!(msg.contains(NAME) && msg.contains("[16, 128]") && msg.contains("[32, 64]"), "{msg}");
}

#[test]
fn missing_tensor_is_named() {
    const NAME: &str = "model.language_model.layers.3.mlp.up_proj.weight";
    let dir = edited_copy("tiny-llava-hf5", |tensors| tensors.retain(|t| t.0 != NAME));
    let msg = load(dir.path()).unwrap_err().to_string();
    assert!(msg.contains(NAME) && msg.contains("missing") && msg.contains("[160, 64]"), "{msg}");
}

#[test]
fn unused_tensors_are_reported() {
    let dir = edited_copy("tiny-llava-hf5", |tensors| {
        tensors.push(("model.language_model.extra.weight".into(), vec![2], vec![1.0, 2.0]))
    });
    let llava = load_llava::<B>(dir.path(), &LoadOptions::default(), &Default::default()).unwrap();
    assert_eq!(llava.report.unexpected, vec!["model.language_model.extra.weight".to_string()]);
    // post_layernorm and the unused last vision layer are ignored by design, not reported.
    assert!(llava.report.ignored.iter().any(|n| n.contains("post_layernorm")));
    assert!(llava.report.ignored.iter().any(|n| n.contains("encoder.layers.2.")));
}

#[test]
fn unknown_layout_is_an_error() {
    let dir = edited_copy("tiny-llava-hf5", |tensors| {
        for t in tensors.iter_mut() {
            t.0 = t.0.replace("model.language_model.", "transformer.");
        }
    });
    let err = load(dir.path()).unwrap_err();
    assert!(matches!(err, BackboneError::UnknownLayout { .. }), "{err}");
}

#[test]
fn directory_without_weights_is_an_error() {
    let dir = temp_dir("empty");
    std::fs::copy(model_dir("tiny-llava-hf5").join("config.json"), dir.path().join("config.json")).unwrap();
    let msg = load(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("no weights found"), "{msg}");
}

#[test]
fn corrupt_and_non_images_give_clear_errors() {
    let err = load_image(&image_path("corrupt.png")).unwrap_err();
    assert!(matches!(err, BackboneError::Image { .. }), "{err}");
    assert!(err.to_string().contains("corrupt.png"), "{err}");
    let err = load_image(&image_path("not-an-image.png")).unwrap_err().to_string();
    assert!(err.contains("not a recognised image format"), "{err}");
    let err = decode_image(&[], "empty").unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");
    assert!(load_image(&image_path("does-not-exist.png")).unwrap_err().to_string().contains("does-not-exist.png"));
}

#[test]
fn png_jpeg_and_webp_decode() {
    for (name, size) in [("shapes-80x60.png", (80, 60)), ("noise-50x90.jpg", (50, 90)), ("square-64.webp", (64, 64))] {
        let image = load_image(&image_path(name)).unwrap();
        assert_eq!((image.width(), image.height()), size, "{name}");
    }
}

#[test]
fn original_layout_needs_its_clip_directory() {
    let dir = temp_dir("original");
    for entry in std::fs::read_dir(model_dir("tiny-llava-original")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let msg = load(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("--vision-tower"), "{msg}");
    let options =
        LoadOptions { vision_tower_dir: Some(model_dir("tiny-llava-original").join("clip")), ..Default::default() };
    load_llava::<B>(dir.path(), &options, &Default::default()).expect("explicit CLIP directory works");
}

#[test]
fn image_aspect_overrides_the_checkpoints_preprocessing() {
    let original =
        LoadOptions { vision_tower_dir: Some(model_dir("tiny-llava-original").join("clip")), ..Default::default() };
    for (model, options, own) in [
        ("tiny-llava-original", original, ImageAspect::Pad),
        ("tiny-llava-hf5", LoadOptions::default(), ImageAspect::Pad),
    ] {
        let loaded = load_llava::<B>(&model_dir(model), &options, &Default::default()).unwrap();
        assert_eq!(loaded.preprocessor.aspect(), own, "{model}'s own preprocessing");
        for aspect in [ImageAspect::Pad, ImageAspect::Crop] {
            let options = LoadOptions { image_aspect: Some(aspect), ..options.clone() };
            let loaded = load_llava::<B>(&model_dir(model), &options, &Default::default()).unwrap();
            assert_eq!(loaded.preprocessor.aspect(), aspect, "{model} with {aspect}");
            let (_, shape) =
                loaded.preprocessor.preprocess(&load_image(&image_path("shapes-80x60.png")).unwrap()).unwrap();
            let side = loaded.config.vision.image_size;
            assert_eq!(shape, [3, side, side], "{model} with {aspect}");
        }
    }
}

#[test]
fn prompts_are_validated() {
    let llava = load_llava::<B>(&model_dir("tiny-llava-hf5"), &LoadOptions::default(), &Default::default()).unwrap();
    let t = &llava.template;
    assert!(t.render("  ", false).unwrap_err().to_string().contains("empty"));
    assert!(t.render("look: <image>", false).unwrap_err().to_string().contains("no image"));
    assert!(t.render("<image> and <image>", true).unwrap_err().to_string().contains("one image"));
    assert_eq!(
        t.render("Hi", true).unwrap(),
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, \
         detailed, and polite answers to the user's questions. USER: <image>\nHi ASSISTANT:"
    );
    let text_only = llava.tokenizer.encode(&t.render("Hi", false).unwrap(), 16).unwrap();
    assert!(text_only.image_span.is_none());
    assert_eq!(text_only.ids[0], 1, "BOS first, as the HF tokenizer adds it");
}

#[test]
fn streamed_text_equals_the_full_decode() {
    let llava = load_llava::<B>(&model_dir("tiny-llava-hf5"), &LoadOptions::default(), &Default::default()).unwrap();
    let reference = Reference::load("tiny-llava-hf5");
    // All greedy references back to back (about 70 tokens, word pieces with and without leading spaces).
    let ids: Vec<u32> = reference.cases.iter().flat_map(|c| c.greedy_ids.iter().copied()).filter(|&t| t != 2).collect();
    let mut stream = twigvlm_backbone::TextStream::default();
    let streamed: String = ids.iter().map(|&id| stream.push(&llava.tokenizer, id).unwrap()).collect();
    let full = llava.tokenizer.decode(&ids).unwrap();
    assert!(full.len() > 100, "{full}");
    assert_eq!(streamed, full);
}
