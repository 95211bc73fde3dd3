//! Kept prompt caches (tiny fixture, a random twig): a follow-up turn about the same image and
//! a repeated question continue from an earlier prompt's caches, skipping the image and the
//! shared tokens, and answer exactly as without them; another image, a pruned prefill and a
//! budget too small for a prompt reuse nothing.

mod support;

use std::ops::ControlFlow;

use image::DynamicImage;
use twigvlm_backbone::{ChatMessage, Role, IMAGE_PLACEHOLDER};
use twigvlm_engine::{DecoderKind, DraftConfig, Engine, GenerateRequest, Prompt, PruningSpec};

const KEPT_BYTES: usize = 64 << 20;

fn turn(history: &[(&str, &str)], question: &str) -> Prompt {
    let mut messages = Vec::new();
    for (index, (asked, answered)) in history.iter().enumerate() {
        let asked = if index == 0 { format!("{IMAGE_PLACEHOLDER}\n{asked}") } else { asked.to_string() };
        messages.push(ChatMessage::new(Role::User, asked));
        messages.push(ChatMessage::new(Role::Assistant, *answered));
    }
    let question = if history.is_empty() { format!("{IMAGE_PLACEHOLDER}\n{question}") } else { question.to_string() };
    messages.push(ChatMessage::new(Role::User, question));
    Prompt::Chat(messages)
}

fn ask(engine: &Engine<burn::backend::Flex>, request: &GenerateRequest) -> (Vec<u32>, String, usize) {
    let result = engine.generate(request, |_| ControlFlow::Continue(())).expect("the request runs");
    (result.generated_ids, result.text, result.stats.reused_prompt_tokens)
}

/// A conversation of two turns about `image`: each turn's tokens and reused prompt tokens.
fn conversation(
    engine: &Engine<burn::backend::Flex>,
    image: &DynamicImage,
    decoder: DecoderKind,
) -> Vec<(Vec<u32>, usize)> {
    let request = |prompt: Prompt| GenerateRequest {
        decoder,
        draft: DraftConfig { max_draft: 3, draft_threshold: 0.0, ..DraftConfig::default() },
        ..GenerateRequest::greedy(prompt, Some(image.clone()), 10)
    };
    let (first, answer, reused_first) = ask(engine, &request(turn(&[], "What is in the image?")));
    let (second, _, reused_second) =
        ask(engine, &request(turn(&[("What is in the image?", &answer)], "Which colour?")));
    let (again, _, reused_again) = ask(engine, &request(turn(&[], "What is in the image?")));
    vec![(first, reused_first), (second, reused_second), (again, reused_again)]
}

#[test]
fn follow_up_turns_continue_from_kept_prompts_and_answer_alike() {
    let (mut engine, _twig) = support::engine_with_twig();
    let image = image::open(twigvlm_testkit::image("shapes-80x60.png")).unwrap();
    let visual = engine.facts().visual_tokens();
    for decoder in [DecoderKind::Base, DecoderKind::Ssd] {
        engine.keep_prompt_caches(0);
        let fresh = conversation(&engine, &image, decoder);
        assert!(fresh.iter().all(|(_, reused)| *reused == 0), "{decoder}: nothing is kept");
        engine.keep_prompt_caches(KEPT_BYTES);
        let kept = conversation(&engine, &image, decoder);
        for ((fresh, _), (kept, _)) in fresh.iter().zip(&kept) {
            assert_eq!(fresh, kept, "{decoder}: the same answers with kept prompts");
        }
        assert_eq!(kept[0].1, 0, "{decoder}: the first turn has nothing to continue from");
        assert!(kept[1].1 > visual, "{decoder}: the follow-up skips the image and the first turn ({})", kept[1].1);
        assert!(kept[2].1 > kept[1].1, "{decoder}: a repeated question reuses all but its last token");
    }

    // Another image with the same words, and a pruned prefill, reuse nothing.
    let other = image::open(twigvlm_testkit::image("noise-50x90.jpg")).unwrap();
    let (_, _, reused) = ask(&engine, &GenerateRequest::greedy(turn(&[], "What is in the image?"), Some(other), 4));
    assert_eq!(reused, 0, "another image");
    let pruned = GenerateRequest {
        pruning: PruningSpec { policy: "twig".parse().unwrap(), budget: Some("4".parse().unwrap()), final_wipe: None },
        ..GenerateRequest::greedy(turn(&[], "What is in the image?"), Some(image.clone()), 4)
    };
    assert_eq!(ask(&engine, &pruned).2, 0, "a pruned prefill");

    // A budget smaller than one prompt's caches keeps nothing.
    engine.keep_prompt_caches(1);
    let request = GenerateRequest::greedy(turn(&[], "What is in the image?"), Some(image), 4);
    ask(&engine, &request);
    assert_eq!(ask(&engine, &request).2, 0, "nothing fits the budget");
}
