//! Self-speculative decoding is lossless: on the tiny llava-hf fixture's language model (4
//! layers) greedy decoding gives exactly the base's greedy tokens, whatever the twig drafts, the
//! draft length, the threshold, the draft tree's shape, the token budget or where an
//! end-of-sequence token falls, and sampling follows the base's distribution.

mod common;

use std::ops::ControlFlow;

use common::{config, embeds, fixture, B};
use strum::VariantArray;
use twigvlm_backbone::weights::StorageDtype;
use twigvlm_backbone::{load_llava, Alone, LlamaDecoder, LoadOptions, PrefillSteps};
use twigvlm_ssd::{
    decode_speculative, decode_vanilla, DecodeConfig, DraftConfig, DraftLength, DraftTree, Sampler, Sampling,
    ShallowNetwork, SpeculativeStats, StopReason,
};
use twigvlm_twig::{prefill_unpruned, Twig, TwigConfig};

const PROMPTS: [&[i64]; 3] = [&[3, 17, 42, 5, 99, 250, 7], &[1, 2, 3], &[200, 11, 11, 11, 64, 90, 8, 31, 5, 77, 12]];

fn vanilla(base: &LlamaDecoder<B>, ids: &[i64], config: &DecodeConfig) -> (Vec<u32>, StopReason) {
    let out = decode_vanilla(&base, &Alone, embeds(base, ids), config, &mut Sampler::new(Sampling::Greedy, 0), |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    (out.tokens, out.stop)
}

fn speculative(
    base: &LlamaDecoder<B>,
    twig: &Twig<B>,
    ids: &[i64],
    config: &DecodeConfig,
    draft: &DraftConfig,
) -> (Vec<u32>, StopReason, SpeculativeStats) {
    let mut streamed = Vec::new();
    let prefill = prefill_unpruned(base, Some(twig), embeds(base, ids), &PrefillSteps::uninterrupted()).unwrap();
    let (out, stats) = decode_speculative(
        ShallowNetwork { base, twig },
        &Alone,
        prefill,
        config,
        draft,
        &mut Sampler::new(Sampling::Greedy, 0),
        |t| {
            streamed.push(t);
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    assert_eq!(streamed, out.tokens, "every token is streamed once, in order");
    (out.tokens, out.stop, stats)
}

#[test]
fn a_twig_equal_to_the_base_has_every_draft_accepted() {
    let llava = fixture();
    let base = &llava.model.language_model;
    // K=1 and copies of all three layers above it: the shallow network is the base.
    let twig = Twig::init(base, &llava.config.text, TwigConfig::new(1, 3), &Default::default()).unwrap();
    let config = config(16, vec![]);
    let draft = DraftConfig { max_draft: 4, draft_threshold: 0.0, ..DraftConfig::default() };
    for ids in PROMPTS {
        let (tokens, stop, stats) = speculative(base, &twig, ids, &config, &draft);
        assert_eq!((tokens, stop), vanilla(base, ids, &config));
        assert_eq!(stats.accepted, stats.drafted, "{stats:?}");
        assert_eq!(
            stats.rounds, 3,
            "16 tokens: one from the prefill, then 3 rounds of 4 accepted drafts and a bonus token; {stats:?}"
        );
    }
}

#[test]
fn a_weak_twig_still_gives_the_base_greedy_tokens() {
    let llava = fixture();
    let base = &llava.model.language_model;
    // One copied layer: drafts often disagree with the base.
    let twig = Twig::init(base, &llava.config.text, TwigConfig::new(1, 1), &Default::default()).unwrap();
    let mut rejected = 0;
    for ids in PROMPTS {
        for max_new_tokens in [1, 2, 7, 20] {
            for (max_draft, draft_threshold) in [(1, 0.0), (3, 0.0), (5, 0.0), (5, 0.6), (0, 0.0)] {
                for &length in DraftLength::VARIANTS {
                    let config = config(max_new_tokens, vec![]);
                    let draft = DraftConfig { max_draft, draft_threshold, length, tree: None, vocab: None };
                    let (tokens, stop, stats) = speculative(base, &twig, ids, &config, &draft);
                    assert_eq!(
                        (tokens, stop),
                        vanilla(base, ids, &config),
                        "prompt {ids:?}, {max_new_tokens} tokens, {draft:?}"
                    );
                    rejected += stats.drafted - stats.accepted;
                }
            }
        }
    }
    assert!(rejected > 0, "the weak twig must have drafts rejected for this test to mean anything");
}

#[test]
fn half_precision_weights_and_a_restricted_draft_vocabulary_keep_the_greedy_tokens() {
    for dtype in [StorageDtype::F16, StorageDtype::BF16] {
        let options = LoadOptions { weights_dtype: Some(dtype), ..Default::default() };
        let llava = load_llava::<B>(&twigvlm_testkit::tiny_llava(), &options, &Default::default()).unwrap();
        let base = &llava.model.language_model;
        let twig = Twig::init(base, &llava.config.text, TwigConfig::new(1, 1), &Default::default()).unwrap();
        for ids in PROMPTS {
            let config = config(12, vec![]);
            let expected = vanilla(base, ids, &config);
            for vocab in [None, Some(base.vocab_size() / 3)] {
                for tree in [None, Some(DraftTree { top_k: 2, depth: 3, nodes: 5 })] {
                    let draft =
                        DraftConfig { max_draft: 4, draft_threshold: 0.0, tree, vocab, ..DraftConfig::default() };
                    let (tokens, stop, _) = speculative(base, &twig, ids, &config, &draft);
                    assert_eq!((tokens, stop), expected, "{dtype} weights, prompt {ids:?}, {draft:?}");
                }
            }
        }
    }
}

#[test]
fn generation_stops_at_an_end_of_sequence_token_inside_a_draft() {
    let llava = fixture();
    let base = &llava.model.language_model;
    let twig = Twig::init(base, &llava.config.text, TwigConfig::new(1, 3), &Default::default()).unwrap();
    let ids = PROMPTS[0];
    let (free, _) = vanilla(base, ids, &config(20, vec![]));
    // The 7th greedy token as end-of-sequence: both decoders stop at its first occurrence.
    let eos = free[6];
    let config = config(20, vec![eos]);
    let (expected, stop) = vanilla(base, ids, &config);
    assert_eq!(stop, StopReason::Eos);
    for max_draft in [1, 2, 4, 5] {
        let (tokens, stop, _) = speculative(
            base,
            &twig,
            ids,
            &config,
            &DraftConfig { max_draft, draft_threshold: 0.0, ..DraftConfig::default() },
        );
        assert_eq!((tokens, stop), (expected.clone(), StopReason::Eos), "max_draft {max_draft}");
    }
}

/// Tokens at generated positions 1 and 2 (position 0 comes from the prefill alone) over many
/// seeds, as (position, token) → count.
fn token_counts(seeds: u64, mut generate: impl FnMut(u64) -> Vec<u32>) -> std::collections::HashMap<(usize, u32), f64> {
    let mut counts = std::collections::HashMap::new();
    for seed in 0..seeds {
        for (position, &token) in generate(seed).iter().enumerate().skip(1) {
            *counts.entry((position, token)).or_insert(0.0) += 1.0 / seeds as f64;
        }
    }
    counts
}

/// Total variation distance between two empirical distributions, summed over both positions.
fn total_variation(
    a: &std::collections::HashMap<(usize, u32), f64>,
    b: &std::collections::HashMap<(usize, u32), f64>,
) -> f64 {
    let keys: std::collections::HashSet<_> = a.keys().chain(b.keys()).collect();
    keys.into_iter().map(|k| (a.get(k).unwrap_or(&0.0) - b.get(k).unwrap_or(&0.0)).abs()).sum::<f64>() / 2.0
}

#[test]
fn speculative_sampling_follows_the_base_distribution() {
    let llava = fixture();
    let base = &llava.model.language_model;
    let twig = Twig::init(base, &llava.config.text, TwigConfig::new(1, 1), &Default::default()).unwrap();
    let ids = PROMPTS[0];
    let sampling = Sampling::TopP { temperature: 0.15, top_p: 0.95 };
    let config = config(3, vec![]);
    let draft = DraftConfig { max_draft: 3, draft_threshold: 0.0, ..DraftConfig::default() };
    let seeds = 1500;
    let vanilla = |seed| {
        decode_vanilla(&base, &Alone, embeds(base, ids), &config, &mut Sampler::new(sampling, seed), |_| {
            ControlFlow::Continue(())
        })
        .unwrap()
        .tokens
    };
    let mut rejected = 0;
    let speculative = token_counts(seeds, |seed| {
        let prefill = prefill_unpruned(base, Some(&twig), embeds(base, ids), &PrefillSteps::uninterrupted()).unwrap();
        let (out, stats) = decode_speculative(
            ShallowNetwork { base, twig: &twig },
            &Alone,
            prefill,
            &config,
            &draft,
            &mut Sampler::new(sampling, seed),
            |_| ControlFlow::Continue(()),
        )
        .unwrap();
        rejected += stats.drafted - stats.accepted;
        out.tokens
    });
    let reference = token_counts(seeds, vanilla);
    // A second vanilla sample with other seeds: how far two samples of the same distribution lie.
    let again = token_counts(seeds, |seed| vanilla(seed + seeds));
    let twig_alone = token_counts(seeds, |seed| {
        let network = ShallowNetwork { base, twig: &twig };
        decode_vanilla(&network, &Alone, embeds(base, ids), &config, &mut Sampler::new(sampling, seed), |_| {
            ControlFlow::Continue(())
        })
        .unwrap()
        .tokens
    });
    let (noise, error, drafter) = (
        total_variation(&reference, &again),
        total_variation(&reference, &speculative),
        total_variation(&reference, &twig_alone),
    );
    eprintln!("total variation: vanilla vs vanilla {noise:.3}, vs speculative {error:.3}, vs the twig alone {drafter:.3}; {rejected} rejections");
    assert!(rejected > 0, "every draft was accepted: the rejection path went untested");
    assert!(
        drafter > 3.0 * noise,
        "the twig's own distribution is too close to the base's for this test to tell them apart"
    );
    assert!(
        error < 2.0 * noise.max(0.02),
        "speculative sampling drifts from the base distribution: {error} (sampling noise {noise})"
    );
}

#[test]
fn an_adaptive_draft_length_drafts_less_for_a_weak_twig_and_as_much_for_a_perfect_one() {
    let llava = fixture();
    let base = &llava.model.language_model;
    let config = config(60, vec![]);
    let draft = |length| DraftConfig { max_draft: 4, draft_threshold: 0.0, length, tree: None, vocab: None };
    let weak = Twig::init(base, &llava.config.text, TwigConfig::new(1, 1), &Default::default()).unwrap();
    let perfect = Twig::init(base, &llava.config.text, TwigConfig::new(1, 3), &Default::default()).unwrap();
    for ids in PROMPTS {
        let (_, _, fixed) = speculative(base, &weak, ids, &config, &draft(DraftLength::Fixed));
        let (tokens, _, adaptive) = speculative(base, &weak, ids, &config, &draft(DraftLength::Adaptive));
        assert_eq!(tokens, vanilla(base, ids, &config).0);
        let waste = |s: &SpeculativeStats| (s.drafted - s.accepted) as f64 / s.rounds as f64;
        assert!(
            waste(&adaptive) < waste(&fixed),
            "rejected drafts per round: adaptive {adaptive:?} vs fixed {fixed:?}"
        );
        let (_, _, fixed) = speculative(base, &perfect, ids, &config, &draft(DraftLength::Fixed));
        let (_, _, adaptive) = speculative(base, &perfect, ids, &config, &draft(DraftLength::Adaptive));
        assert_eq!(adaptive.counts(), fixed.counts(), "every draft accepted: the cap stays at its maximum");
    }
}

fn tree(shape: &str) -> DraftConfig {
    DraftConfig { tree: Some(shape.parse().unwrap()), ..DraftConfig::default() }
}

#[test]
fn a_one_branch_tree_drafts_and_accepts_exactly_as_the_chain() {
    let llava = fixture();
    let base = &llava.model.language_model;
    let config = config(20, vec![]);
    for twig_config in [TwigConfig::new(1, 1), TwigConfig::new(1, 3)] {
        let twig = Twig::init(base, &llava.config.text, twig_config, &Default::default()).unwrap();
        for ids in PROMPTS {
            let decided =
                |(tokens, stop, stats): (Vec<u32>, StopReason, SpeculativeStats)| (tokens, stop, stats.counts());
            let chain = decided(speculative(
                base,
                &twig,
                ids,
                &config,
                &DraftConfig { max_draft: 4, draft_threshold: 0.0, ..DraftConfig::default() },
            ));
            assert_eq!(
                decided(speculative(base, &twig, ids, &config, &tree("1:4:4"))),
                chain,
                "{twig_config:?}, prompt {ids:?}"
            );
        }
    }
}

#[test]
fn tree_drafting_gives_the_base_greedy_tokens_and_accepts_more_than_the_chain() {
    let llava = fixture();
    let base = &llava.model.language_model;
    let twig = Twig::init(base, &llava.config.text, TwigConfig::new(1, 1), &Default::default()).unwrap();
    let (mut rejected, mut tree_accepted, mut chain_accepted) = (0, 0, 0);
    for ids in PROMPTS {
        for max_new_tokens in [1, 2, 7, 20] {
            let config = config(max_new_tokens, vec![]);
            let expected = vanilla(base, ids, &config);
            for shape in ["2:3:6", "4:5:16", "3:2:20", "8:4:8", "5:1:5"] {
                let (tokens, stop, stats) = speculative(base, &twig, ids, &config, &tree(shape));
                assert_eq!((tokens, stop), expected, "prompt {ids:?}, {max_new_tokens} tokens, tree {shape}");
                rejected += stats.drafted - stats.accepted;
                if shape == "4:5:16" {
                    tree_accepted += stats.accepted;
                }
            }
            chain_accepted += speculative(
                base,
                &twig,
                ids,
                &config,
                &DraftConfig { max_draft: 5, draft_threshold: 0.0, ..DraftConfig::default() },
            )
            .2
            .accepted;
        }
    }
    assert!(rejected > 0, "no drafted node was ever rejected: the cache compaction went untested");
    assert!(
        tree_accepted > chain_accepted,
        "a 16-node tree accepted {tree_accepted} tokens, a 5-token chain {chain_accepted}"
    );
}

#[test]
fn tree_drafting_stops_at_an_end_of_sequence_token_inside_the_tree() {
    let llava = fixture();
    let base = &llava.model.language_model;
    let ids = PROMPTS[0];
    let (free, _) = vanilla(base, ids, &config(20, vec![]));
    let eos = free[6];
    let config = config(20, vec![eos]);
    let expected = vanilla(base, ids, &config);
    assert_eq!(expected.1, StopReason::Eos);
    for twig_config in [TwigConfig::new(1, 1), TwigConfig::new(1, 3)] {
        let twig = Twig::init(base, &llava.config.text, twig_config, &Default::default()).unwrap();
        for shape in ["2:3:6", "4:5:16", "1:5:5"] {
            let (tokens, stop, _) = speculative(base, &twig, ids, &config, &tree(shape));
            assert_eq!((tokens, stop), expected, "{twig_config:?}, tree {shape}");
        }
    }
}

#[test]
fn sampling_with_a_tree_configured_drafts_a_chain() {
    let llava = fixture();
    let base = &llava.model.language_model;
    let twig = Twig::init(base, &llava.config.text, TwigConfig::new(1, 1), &Default::default()).unwrap();
    let sampling = Sampling::TopP { temperature: 0.7, top_p: 0.9 };
    let config = config(12, vec![]);
    let chain = DraftConfig { max_draft: 3, draft_threshold: 0.0, ..DraftConfig::default() };
    let run = |draft: &DraftConfig| {
        let prefill =
            prefill_unpruned(base, Some(&twig), embeds(base, PROMPTS[0]), &PrefillSteps::uninterrupted()).unwrap();
        let (out, stats) = decode_speculative(
            ShallowNetwork { base, twig: &twig },
            &Alone,
            prefill,
            &config,
            draft,
            &mut Sampler::new(sampling, 3),
            |_| ControlFlow::Continue(()),
        )
        .unwrap();
        (out.tokens, stats.counts())
    };
    assert_eq!(run(&DraftConfig { tree: Some("4:5:16".parse().unwrap()), ..chain }), run(&chain));
}
