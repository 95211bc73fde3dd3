//! Greedy self-speculative decoding is lossless: on the tiny llava-hf fixture's language model
//! (4 layers) it gives exactly the base's greedy tokens, whatever the twig drafts, the draft
//! length, the threshold, the token budget or where an end-of-sequence token falls.

mod common;

use std::ops::ControlFlow;

use common::{config, embeds, fixture, B};
use twigvlm_backbone::LlamaDecoder;
use twigvlm_ssd::{decode_speculative, decode_vanilla, DecodeConfig, DraftConfig, Sampler, Sampling, SpeculativeStats, StopReason};
use twigvlm_ttp::{prefill, PruningSpec};
use twigvlm_twig::{Twig, TwigConfig};

const PROMPTS: [&[i64]; 3] = [&[3, 17, 42, 5, 99, 250, 7], &[1, 2, 3], &[200, 11, 11, 11, 64, 90, 8, 31, 5, 77, 12]];

fn vanilla(base: &LlamaDecoder<B>, ids: &[i64], config: &DecodeConfig) -> (Vec<u32>, StopReason) {
    let out = decode_vanilla(base, embeds(base, ids), config, &mut Sampler::new(Sampling::Greedy, 0), |_| ControlFlow::Continue(())).unwrap();
    (out.tokens, out.stop)
}

fn speculative(base: &LlamaDecoder<B>, twig: &Twig<B>, ids: &[i64], config: &DecodeConfig, draft: &DraftConfig) -> (Vec<u32>, StopReason, SpeculativeStats) {
    let mut streamed = Vec::new();
    let prefill = prefill(base, Some(twig), embeds(base, ids), None, &PruningSpec::none(), true).unwrap();
    let (out, stats) = decode_speculative(base, twig, prefill, config, draft, |t| {
        streamed.push(t);
        ControlFlow::Continue(())
    })
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
    let draft = DraftConfig { max_draft: 4, draft_threshold: 0.0 };
    for ids in PROMPTS {
        let (tokens, stop, stats) = speculative(base, &twig, ids, &config, &draft);
        assert_eq!((tokens, stop), vanilla(base, ids, &config));
        assert_eq!(stats.accepted, stats.drafted, "{stats:?}");
        assert_eq!(stats.rounds, 3, "16 tokens: one from the prefill, then 3 rounds of 4 accepted drafts and a bonus token; {stats:?}");
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
                let config = config(max_new_tokens, vec![]);
                let draft = DraftConfig { max_draft, draft_threshold };
                let (tokens, stop, stats) = speculative(base, &twig, ids, &config, &draft);
                assert_eq!((tokens, stop), vanilla(base, ids, &config), "prompt {ids:?}, {max_new_tokens} tokens, {draft:?}");
                rejected += stats.drafted - stats.accepted;
            }
        }
    }
    assert!(rejected > 0, "the weak twig must have drafts rejected for this test to mean anything");
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
        let (tokens, stop, _) = speculative(base, &twig, ids, &config, &DraftConfig { max_draft, draft_threshold: 0.0 });
        assert_eq!((tokens, stop), (expected.clone(), StopReason::Eos), "max_draft {max_draft}");
    }
}
