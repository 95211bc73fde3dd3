//! The per-layer KV cache: incremental decoding equals a full forward, cropping then recomputing
//! equals never having computed, and layers may hold different lengths.

use burn::prelude::*;
use twigvlm_backbone::{load_llava, AttentionProbe, KvCache, LlamaDecoder, LoadOptions};
use twigvlm_integration::*;

type B = TestBackend;

fn decoder() -> LlamaDecoder<B> {
    load_llava::<B>(&model_dir("tiny-llava-hf5"), &LoadOptions::default(), &Default::default())
        .unwrap()
        .model
        .language_model
}

fn ids(tokens: &[i32]) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(tokens.to_vec(), [1, tokens.len()]), &Default::default())
}

fn host(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data().into_vec::<f32>().unwrap()
}

/// Logits of `tokens[start..]` after feeding `tokens[..start]` first.
fn logits_from(lm: &LlamaDecoder<B>, cache: &mut KvCache<B>, tokens: &[i32], start: usize) -> Vec<f32> {
    let positions: Vec<usize> = (start..tokens.len()).collect();
    let rope = lm.rope(&positions, &Default::default());
    let out = lm.forward_layers(
        lm.embed(ids(&tokens[start..])),
        &rope,
        0..lm.num_layers(),
        cache,
        &AttentionProbe::default(),
    );
    host(lm.logits(out.hidden))
}

const TOKENS: [i32; 9] = [1, 40, 77, 123, 9, 300, 5, 88, 17];

#[test]
fn incremental_decoding_matches_full_forward() {
    let lm = decoder();
    let vocab = lm.vocab_size();
    let full = logits_from(&lm, &mut KvCache::new(lm.num_layers()), &TOKENS, 0);
    let mut cache = KvCache::new(lm.num_layers());
    logits_from(&lm, &mut cache, &TOKENS[..5], 0);
    for step in 5..TOKENS.len() {
        let row = logits_from(&lm, &mut cache, &TOKENS[..step + 1], step);
        assert_close(&format!("position {step}"), &row, &full[step * vocab..(step + 1) * vocab], 1e-4);
    }
    assert_eq!(cache.lengths(), vec![TOKENS.len(); lm.num_layers()]);
}

#[test]
fn crop_then_recompute_matches() {
    let lm = decoder();
    let vocab = lm.vocab_size();
    let mut cache = KvCache::new(lm.num_layers());
    let expected = logits_from(&lm, &mut cache, &TOKENS, 0);
    // Roll back three entries (as a rejected draft would be), feed other tokens, then the originals.
    cache.truncate_last(3).unwrap();
    let mut other = TOKENS;
    other[6..].copy_from_slice(&[2, 3, 4]);
    logits_from(&lm, &mut cache, &other, 6);
    cache.truncate_last(3).unwrap();
    let again = logits_from(&lm, &mut cache, &TOKENS, 6);
    assert_close("after crop", &again, &expected[6 * vocab..], 1e-4);
}

#[test]
fn layers_can_hold_different_lengths_and_positions_stay_explicit() {
    let lm = decoder();
    let device = Default::default();
    // Layer 0 sees all 9 tokens; layers 1.. see tokens 0, 1, 5..9 only, at their original positions.
    let kept: Vec<usize> = vec![0, 1, 5, 6, 7, 8];
    let mut cache = KvCache::new(lm.num_layers());
    let all: Vec<usize> = (0..TOKENS.len()).collect();
    let out = lm.forward_layers(
        lm.embed(ids(&TOKENS)),
        &lm.rope(&all, &device),
        0..1,
        &mut cache,
        &AttentionProbe::default(),
    );
    let index = Tensor::<B, 1, Int>::from_data(
        TensorData::new(kept.iter().map(|&k| k as i32).collect::<Vec<_>>(), [kept.len()]),
        &device,
    );
    let pruned = out.hidden.select(1, index);
    let out =
        lm.forward_layers(pruned, &lm.rope(&kept, &device), 1..lm.num_layers(), &mut cache, &AttentionProbe::default());
    let mut lengths = vec![kept.len(); lm.num_layers()];
    lengths[0] = TOKENS.len();
    assert_eq!(cache.lengths(), lengths);
    // The next token at position 9 attends per layer to what that layer holds.
    let next = lm.forward_layers(
        lm.embed(ids(&[42])),
        &lm.rope(&[9], &device),
        0..lm.num_layers(),
        &mut cache,
        &AttentionProbe::last_row(1),
    );
    assert_eq!(next.attention[0].1.dims(), [1, 4, 1, 10]);
    assert_eq!(next.attention[1].1.dims(), [1, 4, 1, 7]);
    assert!(host(out.hidden).iter().all(|v| v.is_finite()));
    assert!(cache.truncate_last(8).is_err(), "cannot drop more than a layer holds");
}
