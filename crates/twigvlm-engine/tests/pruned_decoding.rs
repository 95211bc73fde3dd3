//! Decoding after a pruned prefill (tiny fixture language model, 4 layers, a 10-token stand-in
//! image): every base layer continues from the length pruning left it with, generated tokens
//! take their original positions, and self-speculative decoding stays lossless under every
//! policy.

use std::ops::{ControlFlow, Range};

use burn::backend::Flex;
use burn::prelude::*;
use twigvlm_backbone::{load_llava, Alone, LlamaDecoder, LoadOptions, LoadedLlava, PrefillSteps};
use twigvlm_ssd::{
    decode_speculative, decode_vanilla_prefilled, DecodeConfig, DraftConfig, Sampler, Sampling, ShallowNetwork,
};
use twigvlm_ttp::{prefill, PruningSpec};
use twigvlm_twig::{Twig, TwigConfig};

type B = Flex;

const PROMPT: [i64; 16] = [3, 17, 42, 5, 99, 250, 7, 8, 9, 10, 11, 120, 121, 122, 64, 90];
const IMAGE: Range<usize> = 3..13;

fn fixture() -> LoadedLlava<B> {
    load_llava::<B>(&twigvlm_testkit::tiny_llava(), &LoadOptions::default(), &Default::default()).unwrap()
}

fn embeds(base: &LlamaDecoder<B>, ids: &[i64]) -> Tensor<B, 3> {
    base.embed(Tensor::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), &Default::default()))
}

fn config(max_new_tokens: usize, eos_token_ids: Vec<u32>) -> DecodeConfig {
    DecodeConfig { max_new_tokens, eos_token_ids, context_length: 512 }
}

fn spec(policy: &str, budget: &str, final_wipe: Option<usize>) -> PruningSpec {
    PruningSpec { policy: policy.parse().unwrap(), budget: Some(budget.parse().unwrap()), final_wipe }
}

fn vanilla(
    base: &LlamaDecoder<B>,
    twig: Option<&Twig<B>>,
    ids: &[i64],
    spec: &PruningSpec,
    config: &DecodeConfig,
) -> Vec<u32> {
    let prefilled =
        prefill(base, twig, embeds(base, ids), Some(IMAGE), spec, false, &PrefillSteps::uninterrupted()).unwrap();
    assert!(prefilled.pruning.is_some(), "{spec:?} pruned nothing");
    decode_vanilla_prefilled(base, &Alone, prefilled.state, config, &mut Sampler::new(Sampling::Greedy, 0), |_| {
        ControlFlow::Continue(())
    })
    .unwrap()
    .tokens
}

#[test]
fn ssd_after_pruning_gives_the_greedy_tokens_of_the_same_pruning() {
    let llava = fixture();
    let base = &llava.model.language_model;
    let twig = Twig::init(base, &llava.config.text, TwigConfig::new(1, 2), &Default::default()).unwrap();
    let config = config(12, vec![]);
    let chain = DraftConfig { max_draft: 4, draft_threshold: 0.0, ..DraftConfig::default() };
    let tree = DraftConfig { tree: Some("3:3:8".parse().unwrap()), ..chain };
    let mut rejected = 0;
    for draft in [chain, tree] {
        for policy in ["fastv", "twig", "random:5", "vlm-layer:K+T", "vlm-layer:1"] {
            for budget in ["3", "50%"] {
                for final_wipe in [None, Some(4)] {
                    let spec = spec(policy, budget, final_wipe);
                    let expected = vanilla(base, Some(&twig), &PROMPT, &spec, &config);
                    let prefilled = prefill(
                        base,
                        Some(&twig),
                        embeds(base, &PROMPT),
                        Some(IMAGE),
                        &spec,
                        true,
                        &PrefillSteps::uninterrupted(),
                    )
                    .unwrap();
                    let (out, stats) = decode_speculative(
                        ShallowNetwork { base, twig: &twig },
                        &Alone,
                        prefilled.state,
                        &config,
                        &draft,
                        &mut Sampler::new(Sampling::Greedy, 0),
                        |_| ControlFlow::Continue(()),
                    )
                    .unwrap();
                    assert_eq!(out.tokens, expected, "{spec:?}, {draft:?}");
                    rejected += stats.drafted - stats.accepted;
                }
            }
        }
    }
    assert!(rejected > 0, "no draft was ever rejected: the cache cropping under pruning went untested");
}

#[test]
fn decoding_continues_from_pruned_caches_at_the_original_positions() {
    // A random selection does not depend on the query, so prefilling the prompt extended by the
    // generated tokens under the same policy must predict what the decoder generated next.
    let llava = fixture();
    let base = &llava.model.language_model;
    for final_wipe in [None, Some(3)] {
        let spec = spec("random:3", "4", final_wipe);
        let generated = vanilla(base, None, &PROMPT, &spec, &config(5, vec![]));
        for step in 1..generated.len() {
            let mut ids = PROMPT.to_vec();
            ids.extend(generated[..step].iter().map(|&t| t as i64));
            let again =
                prefill(base, None, embeds(base, &ids), Some(IMAGE), &spec, false, &PrefillSteps::uninterrupted())
                    .unwrap();
            let best = again.state.last_logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
            assert_eq!(best, generated[step], "{spec:?}, step {step}");
        }
    }
}
