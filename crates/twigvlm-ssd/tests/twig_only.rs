//! Decoding with the twig's shallow network alone, on the tiny llava-hf fixture's language model
//! (4 layers): its wiring against the base, and its two KV caches against a full recompute.

mod common;

use std::ops::ControlFlow;

use burn::prelude::*;
use common::{fixture, B};
use twigvlm_backbone::{Alone, LlamaDecoder};
use twigvlm_ssd::{decode_vanilla, CausalNetwork, DecodeConfig, Sampler, Sampling, ShallowNetwork};
use twigvlm_twig::{Twig, TwigConfig};

const NEW_TOKENS: usize = 12;

fn prompt(base: &LlamaDecoder<B>) -> Tensor<B, 3> {
    let ids =
        Tensor::<B, 2, Int>::from_data(TensorData::new(vec![3i64, 17, 42, 5, 99, 250, 7], [1, 7]), &Default::default());
    base.embed(ids)
}

fn greedy<'m, N: CausalNetwork<'m, B>>(network: &N, base: &LlamaDecoder<B>) -> (Vec<u32>, Vec<f32>) {
    let config = DecodeConfig { max_new_tokens: NEW_TOKENS, eos_token_ids: vec![], context_length: 512 };
    let out = decode_vanilla(network, &Alone, prompt(base), &config, &mut Sampler::new(Sampling::Greedy, 0), |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    (out.tokens, out.prompt_logits)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn a_twig_copying_every_layer_above_k_decodes_exactly_like_the_base() {
    let llava = fixture();
    let base = &llava.model.language_model;
    let twig = Twig::init(base, &llava.config.text, TwigConfig::new(1, 3), &Default::default()).unwrap();
    let (base_tokens, base_logits) = greedy(&base, base);
    let (twig_tokens, twig_logits) = greedy(&ShallowNetwork { base, twig: &twig }, base);
    assert_eq!(twig_tokens, base_tokens);
    assert!(max_diff(&twig_logits, &base_logits) <= 1e-5);
}

#[test]
fn the_shallow_networks_caches_match_a_full_recompute() {
    let llava = fixture();
    let base = &llava.model.language_model;
    let twig = Twig::init(base, &llava.config.text, TwigConfig::new(1, 2), &Default::default()).unwrap();
    let shallow = ShallowNetwork { base, twig: &twig };
    let (tokens, _) = greedy(&shallow, base);
    assert_eq!(tokens.len(), NEW_TOKENS);

    // Feed the prompt and the generated tokens but the last in one pass: its last logits must
    // pick the last generated token, as the cached step-by-step run did.
    let device = Default::default();
    let ids: Vec<i64> = tokens[..NEW_TOKENS - 1].iter().map(|&t| t as i64).collect();
    let generated = base.embed(Tensor::from_data(TensorData::new(ids, [1, NEW_TOKENS - 1]), &device));
    let all = Tensor::cat(vec![prompt(base), generated], 1);
    let positions: Vec<usize> = (0..all.dims()[1]).collect();
    let logits = shallow.last_logits(&Alone, all, &positions, &mut shallow.new_cache());
    let recomputed = logits.argmax(2).into_data().convert::<i64>().into_vec::<i64>().unwrap()[0];
    assert_eq!(recomputed as u32, tokens[NEW_TOKENS - 1]);
}
