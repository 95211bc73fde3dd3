//! The twig on the tiny llava-hf fixture's language model (4 layers): wiring of the adjacent
//! initialisation, K/T validation, both checkpoint formats, and refusal of a foreign base.

use burn::backend::Flex;
use burn::module::Module;
use burn::prelude::*;
use twigvlm_backbone::config::LlamaConfig;
use twigvlm_backbone::weights::{hf_tensors, StorageDtype, TensorSource};
use twigvlm_backbone::{load_llava, AttentionProbe, KvCache, LlamaDecoder, LoadOptions};
use twigvlm_twig::checkpoint::convert;
use twigvlm_twig::{
    load_twig, save_official, save_twig, Twig, TwigConfig, TwigError, TwigFormat, TwigHead, TwigInit, TwigMlp,
};

type B = Flex;

fn base() -> (LlamaDecoder<B>, LlamaConfig) {
    let loaded = load_llava::<B>(&twigvlm_testkit::tiny_llava(), &LoadOptions::default(), &Default::default()).unwrap();
    (loaded.model.language_model, loaded.config.text)
}

fn scratch(name: &str) -> twigvlm_testkit::TempDir {
    twigvlm_testkit::temp_dir(&format!("twig-{name}"))
}

fn values<M: Module<B>>(module: &M) -> Vec<(String, Vec<f32>)> {
    hf_tensors(module, &|p| p.to_string()).into_iter().map(|(n, _, v)| (n, v)).collect()
}

fn input(base: &LlamaDecoder<B>) -> (Tensor<B, 3>, Vec<usize>) {
    let ids =
        Tensor::<B, 2, Int>::from_data(TensorData::new(vec![3i64, 17, 42, 5, 99, 250], [1, 6]), &Default::default());
    (base.embed(ids), (0..6).collect())
}

fn shallow_logits(base: &LlamaDecoder<B>, twig: &Twig<B>) -> Tensor<B, 3> {
    let device = Default::default();
    let (embeds, positions) = input(base);
    let rope = base.rope(&positions, &device);
    let k = twig.config.k;
    let mut cache = KvCache::new(base.num_layers());
    let hidden = base.forward_layers(embeds, &rope, 0..k, &mut cache, &AttentionProbe::default()).hidden;
    let hidden = twig.forward(hidden, &rope, &mut twig.new_cache(), &AttentionProbe::default()).hidden;
    twig.logits(hidden, &base.lm_head)
}

#[test]
fn adjacent_twig_equals_the_base_truncated_after_layer_k_plus_t() {
    let (base, cfg) = base();
    let device = Default::default();
    let config = TwigConfig::new(1, 2);
    let twig = Twig::init(&base, &cfg, config, &device).unwrap();
    let (embeds, positions) = input(&base);
    let rope = base.rope(&positions, &device);
    let mut cache = KvCache::new(base.num_layers());
    let hidden = base.forward_layers(embeds, &rope, 0..3, &mut cache, &AttentionProbe::default()).hidden;
    let expected = base.logits(hidden);
    let got = shallow_logits(&base, &twig);
    assert_eq!(got.to_data(), expected.to_data(), "adjacent init must reproduce the base's first K+T layers exactly");
    // The whole model differs (it has one more layer), so the check above is not vacuous.
    let full = base.logits(
        base.forward_layers(input(&base).0, &rope, 0..4, &mut KvCache::new(4), &AttentionProbe::default()).hidden,
    );
    assert_ne!(full.to_data(), expected.to_data());

    let shared = Twig::init(&base, &cfg, TwigConfig { head: TwigHead::Shared, ..config }, &device).unwrap();
    assert!(shared.lm_head.is_none());
    assert_eq!(shallow_logits(&base, &shared).to_data(), expected.to_data());
}

#[test]
fn init_modes_copy_the_right_layers() {
    let (base, cfg) = base();
    let device = Default::default();
    let last = Twig::init(&base, &cfg, TwigConfig { init: TwigInit::Last, ..TwigConfig::new(1, 2) }, &device).unwrap();
    assert_eq!(values(&last.layers[0]), values(&base.layers[2]));
    assert_eq!(values(&last.layers[1]), values(&base.layers[3]));
    let random =
        Twig::init(&base, &cfg, TwigConfig { init: TwigInit::Random, ..TwigConfig::new(1, 2) }, &device).unwrap();
    assert_ne!(values(&random.layers[0]), values(&base.layers[1]));
    assert_eq!(random.layers[0].self_attn.q_proj.weight.dims(), base.layers[1].self_attn.q_proj.weight.dims());
}

#[test]
fn bad_k_and_t_are_refused() {
    let (base, cfg) = base();
    let device = Default::default();
    for (k, t, needle) in
        [(0, 2, "K must be at least 1"), (1, 0, "T must be at least 1"), (2, 3, "exceeds the base model's 4 layers")]
    {
        let err = Twig::init(&base, &cfg, TwigConfig::new(k, t), &device).unwrap_err();
        assert!(err.to_string().contains(needle), "K={k} T={t}: {err}");
    }
}

#[test]
fn both_checkpoint_formats_round_trip() {
    let (base, cfg) = base();
    let device = Default::default();
    let twig = Twig::init(&base, &cfg, TwigConfig::new(1, 2), &device).unwrap();
    let training = serde_json::json!({"steps": 3});

    let ours = scratch("ours");
    save_twig(ours.path(), &twig, &base, training.clone(), StorageDtype::F32).unwrap();
    let loaded = load_twig(ours.path(), &base, &cfg, None, &device).unwrap();
    assert_eq!(loaded.format, TwigFormat::Ours);
    assert_eq!(loaded.twig.config, twig.config);
    assert_eq!(loaded.meta.unwrap().training, training);
    assert_eq!(values(&loaded.twig), values(&twig));

    // Official layout: bf16, K not recorded by the weights.
    let official = scratch("official");
    save_official(official.path(), &twig, &base, training).unwrap();
    std::fs::remove_file(official.path().join("twig.json")).unwrap();
    let err = load_twig(official.path(), &base, &cfg, None, &device).err().unwrap();
    assert!(matches!(err, TwigError::MissingK { .. }), "{err}");
    let loaded = load_twig(official.path(), &base, &cfg, Some(1), &device).unwrap();
    assert_eq!(loaded.format, TwigFormat::Official);
    assert_eq!((loaded.twig.config.k, loaded.twig.config.t), (1, 2));
    for ((name, got), (_, want)) in values(&loaded.twig).iter().zip(values(&twig)) {
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= w.abs() / 128.0 + 1e-6, "{name}: {g} vs {w} beyond bf16 rounding");
        }
    }

    // Official → ours keeps K and T.
    let converted = scratch("converted");
    convert(official.path(), converted.path(), TwigFormat::Ours, &base, &cfg, Some(1), &device).unwrap();
    let again = load_twig(converted.path(), &base, &cfg, None, &device).unwrap();
    assert_eq!((again.twig.config.k, again.twig.config.t), (1, 2));
}

#[test]
fn a_twig_for_another_base_is_refused() {
    let (base, cfg) = base();
    let device = Default::default();
    let twig = Twig::init(&base, &cfg, TwigConfig::new(1, 2), &device).unwrap();
    let dir = scratch("foreign");
    save_twig(dir.path(), &twig, &base, serde_json::Value::Null, StorageDtype::F16).unwrap();
    let mut other = base.clone();
    other.layers[0].self_attn.q_proj.weight =
        other.layers[0].self_attn.q_proj.weight.clone().map(|w| w.mul_scalar(1.5));
    let err = load_twig(dir.path(), &other, &cfg, None, &device).err().unwrap();
    assert!(matches!(err, TwigError::WrongBase { .. }), "{err}");
    assert!(err.to_string().contains("another base model"));
    let err = load_twig(scratch("empty").path(), &base, &cfg, None, &device).err().unwrap();
    assert!(matches!(err, TwigError::NotATwig { .. }), "{err}");
}

#[test]
fn a_twig_with_frozen_mlps_stores_none_and_takes_them_from_the_base() {
    let (base, cfg) = base();
    let device = Default::default();
    let random = TwigConfig { init: TwigInit::Random, mlp: TwigMlp::Frozen, ..TwigConfig::new(1, 2) };
    let err = Twig::init(&base, &cfg, random, &device).err().unwrap();
    assert!(err.to_string().contains("random"), "{err}");

    for init in [TwigInit::Adjacent, TwigInit::Last] {
        let config = TwigConfig { init, mlp: TwigMlp::Frozen, ..TwigConfig::new(1, 2) };
        let mut twig = Twig::init(&base, &cfg, config, &device).unwrap();
        // Trained attention, so that a load taking everything from the base would be caught.
        twig.layers[1].self_attn.q_proj.weight =
            twig.layers[1].self_attn.q_proj.weight.clone().map(|w| w.mul_scalar(0.5));
        let dir = scratch(&format!("frozen-mlp-{init:?}"));
        save_twig(dir.path(), &twig, &base, serde_json::Value::Null, StorageDtype::F32).unwrap();
        let mut stored = TensorSource::default();
        stored.add_safetensors(&dir.path().join("twig.safetensors")).unwrap();
        let names: Vec<&str> = stored.names().collect();
        assert!(names.iter().any(|n| n.contains(".self_attn.")), "{names:?}");
        assert!(!names.iter().any(|n| n.contains(".mlp.")), "frozen MLPs must not be stored: {names:?}");
        let loaded = load_twig(dir.path(), &base, &cfg, None, &device).unwrap();
        assert_eq!(loaded.twig.config, config);
        assert_eq!(values(&loaded.twig), values(&twig), "{init:?}: the MLPs come back from the right base layers");

        // The official layout holds every tensor, so it loads as a twig with trained MLPs.
        let official = scratch(&format!("frozen-mlp-official-{init:?}"));
        save_official(official.path(), &twig, &base, serde_json::Value::Null).unwrap();
        let converted = load_twig(official.path(), &base, &cfg, None, &device).unwrap();
        assert_eq!(converted.twig.config.mlp, TwigMlp::Trained);

        // Without twig.json nothing says where the missing MLPs come from.
        let bare = scratch(&format!("frozen-mlp-bare-{init:?}"));
        std::fs::copy(dir.path().join("twig.safetensors"), bare.path().join("model.safetensors")).unwrap();
        let err = load_twig(bare.path(), &base, &cfg, Some(1), &device).err().unwrap();
        assert!(matches!(err, TwigError::MissingMlp { .. }), "{err}");
    }
}

/// The pruning head's distribution over rows 1..5 asked from row 5, and the twig's last-block
/// attention of row 5 over the same rows renormalised, from one forward.
fn head_and_block_rankings(base: &LlamaDecoder<B>, twig: &Twig<B>) -> (Vec<f32>, Vec<f32>) {
    let device = Default::default();
    let (embeds, positions) = input(base);
    let rope = base.rope(&positions, &device);
    let mut cache = KvCache::new(base.num_layers());
    let hidden = base.forward_layers(embeds, &rope, 0..twig.config.k, &mut cache, &AttentionProbe::default()).hidden;
    let probe = AttentionProbe { rows: vec![5], layers: vec![twig.config.t - 1] };
    let (output, last_input) = twig.forward_with_last_input(hidden, &rope, &mut twig.new_cache(), &probe);
    let visual = 1..5;
    let head = twig.pruning_distribution(last_input, &rope, 5, &visual).unwrap();
    let attention = output.attention[0].1.clone().mean_dim(1).narrow(3, 1, 4).reshape([4]);
    let vec = |t: Tensor<B, 1>| t.into_data().convert::<f32>().into_vec::<f32>().unwrap();
    let attention = vec(attention);
    let total: f32 = attention.iter().sum();
    (vec(head), attention.iter().map(|a| a / total).collect())
}

#[test]
fn a_pruning_head_ranks_the_visual_rows_and_round_trips() {
    let (base, cfg) = base();
    let device = Default::default();
    let twig = Twig::init(&base, &cfg, TwigConfig { pruning_head: true, ..TwigConfig::new(1, 2) }, &device).unwrap();
    let (head, attention) = head_and_block_rankings(&base, &twig);
    assert_eq!(head.len(), 4);
    assert!((head.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{head:?}");
    // Gates near ½ soften each head's attention (a lower temperature), so the head's ranking
    // starts close to the block's and flatter than it.
    let spread = |p: &[f32]| p.iter().cloned().fold(f32::MIN, f32::max) - p.iter().cloned().fold(f32::MAX, f32::min);
    assert!(spread(&head) < spread(&attention), "{head:?} vs {attention:?}");
    // Without a head there is no distribution, and the policy reads the block's attention.
    let plain = Twig::init(&base, &cfg, TwigConfig::new(1, 2), &device).unwrap();
    let (embeds, positions) = input(&base);
    let rope = base.rope(&positions, &device);
    assert!(plain.pruning_distribution(embeds, &rope, 5, &(1..5)).is_none());

    for (format, dir) in [(TwigFormat::Ours, scratch("head-ours")), (TwigFormat::Official, scratch("head-official"))] {
        match format {
            TwigFormat::Ours => {
                save_twig(dir.path(), &twig, &base, serde_json::Value::Null, StorageDtype::F32).unwrap()
            }
            TwigFormat::Official => save_official(dir.path(), &twig, &base, serde_json::Value::Null).unwrap(),
        }
        let loaded = load_twig::<B>(dir.path(), &base, &cfg, None, &device).unwrap().twig;
        assert!(loaded.config.pruning_head, "{format}");
        let (reloaded, _) = head_and_block_rankings(&base, &loaded);
        let tolerance = if format == TwigFormat::Official { 2e-2 } else { 1e-6 };
        for (a, b) in head.iter().zip(&reloaded) {
            assert!((a - b).abs() < tolerance, "{format}: {head:?} vs {reloaded:?}");
        }
    }
}
