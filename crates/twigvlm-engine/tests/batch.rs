//! Requests run together in a batch give exactly the tokens each gives alone (tiny fixture, a
//! random twig): text-only and image requests, every pruning policy with and without FinalWipe,
//! the base, twig-only and self-speculative decoders (chain and tree), sampling, different
//! token budgets, and a request that stops itself mid-batch. Prefills run in small chunks, so
//! prompt chunks share the batch with other requests' decoding steps.

mod support;

use std::num::NonZeroUsize;
use std::ops::ControlFlow;
use std::sync::Mutex;

use burn::backend::Flex;
use twigvlm_backbone::{Alone, Interrupt, StackRunner};
use twigvlm_engine::{
    run_batched, BatchForward, BatchLimits, DecoderKind, DraftConfig, Engine, GenerateRequest, Prompt, PruningSpec,
    Sampling,
};

type B = Flex;

/// Pieces of text after which the stopping request ends its generation.
const STOP_AFTER_PIECES: usize = 3;

fn engine() -> (Engine<B>, twigvlm_testkit::TempDir) {
    let (mut engine, twig) = support::engine_with_twig();
    engine.prefill_chunk_tokens = 5;
    (engine, twig)
}

fn pruning(policy: &str, budget: &str, final_wipe: Option<usize>) -> PruningSpec {
    PruningSpec { policy: policy.parse().unwrap(), budget: Some(budget.parse().unwrap()), final_wipe }
}

/// A mix of requests, and whether each stops itself after [`STOP_AFTER_PIECES`] pieces.
fn requests() -> Vec<(GenerateRequest, bool)> {
    let image = image::open(twigvlm_testkit::image("shapes-80x60.png")).unwrap();
    let ask = |text: &str, with_image: bool, tokens: usize| {
        GenerateRequest::greedy(Prompt::User(text.into()), with_image.then(|| image.clone()), tokens)
    };
    let chain = DraftConfig { max_draft: 3, draft_threshold: 0.0, ..DraftConfig::default() };
    let tree = DraftConfig { tree: Some("2:3:5".parse().unwrap()), ..chain };
    let sampled = Sampling::TopP { temperature: 0.8, top_p: 0.9 };
    vec![
        (ask("What is in the image?", true, 12), false),
        (ask("Count the shapes, please.", false, 9), false),
        (GenerateRequest { decoder: DecoderKind::Ssd, draft: chain, ..ask("Which colour?", true, 14) }, false),
        (
            GenerateRequest {
                decoder: DecoderKind::Ssd,
                draft: tree,
                pruning: pruning("twig", "4", Some(3)),
                ..ask("Where is the square?", true, 11)
            },
            false,
        ),
        (GenerateRequest { pruning: pruning("fastv", "4", None), ..ask("Describe it.", true, 10) }, false),
        (GenerateRequest { pruning: pruning("vlm-layer:2", "25%", Some(3)), ..ask("Big?", true, 7) }, false),
        (GenerateRequest { pruning: pruning("random:5", "6", None), ..ask("And the circle?", true, 8) }, false),
        (GenerateRequest { decoder: DecoderKind::TwigOnly, ..ask("Say something.", false, 10) }, false),
        (
            GenerateRequest {
                decoder: DecoderKind::Ssd,
                draft: chain,
                sampling: sampled,
                seed: 11,
                ..ask("Tell a story.", true, 13)
            },
            false,
        ),
        (GenerateRequest { sampling: sampled, seed: 5, ..ask("A poem?", false, 12) }, false),
        (ask("Stop early.", true, 20), true),
    ]
}

/// Runs `request` through `runner`; its generated ids.
fn generate<'m>(
    engine: &'m Engine<B>,
    request: &GenerateRequest,
    stops: bool,
    runner: &dyn StackRunner<'m, B>,
) -> Vec<u32> {
    let mut pieces = 0;
    let result = engine.generate_with(request, &Interrupt::NEVER, runner, |_| {
        pieces += 1;
        if stops && pieces == STOP_AFTER_PIECES {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    result.expect("the request runs").generated_ids
}

/// Every request batched under `limits`; their ids in order, and the stack forwards the batch ran.
fn batched(engine: &Engine<B>, limits: BatchLimits) -> (Vec<Vec<u32>>, Vec<BatchForward>) {
    let requests = requests();
    let outputs = Mutex::new(vec![Vec::new(); requests.len()]);
    let mut forwards = Vec::new();
    let mut jobs = requests.into_iter().enumerate().collect::<Vec<_>>().into_iter();
    run_batched(
        limits,
        &mut jobs,
        |(index, (request, stops)): (usize, (GenerateRequest, bool)), runner: &dyn StackRunner<'_, B>| {
            let ids = generate(engine, &request, stops, runner);
            outputs.lock().unwrap()[index] = ids;
        },
        |forward| forwards.push(forward),
    );
    (outputs.into_inner().unwrap(), forwards)
}

#[test]
fn batched_requests_give_the_tokens_they_give_alone() {
    let (engine, _twig) = engine();
    let alone: Vec<Vec<u32>> =
        requests().iter().map(|(request, stops)| generate(&engine, request, *stops, &Alone)).collect();
    assert!(alone.iter().all(|ids| !ids.is_empty()));
    assert_eq!(alone.last().unwrap().len(), STOP_AFTER_PIECES, "the stopping request stops itself");

    let all = requests().len();
    let wide = BatchLimits { max_requests: NonZeroUsize::new(all).unwrap(), max_rows: NonZeroUsize::new(64).unwrap() };
    let (together, forwards) = batched(&engine, wide);
    assert_eq!(together, alone, "batched with every request at once");
    let widest = forwards.iter().map(|f| f.requests).max().unwrap();
    assert!(widest >= 4, "forwards held at most {widest} requests: nothing was batched");

    let narrow = BatchLimits { max_requests: NonZeroUsize::new(4).unwrap(), max_rows: NonZeroUsize::new(3).unwrap() };
    let (together, forwards) = batched(&engine, narrow);
    assert_eq!(together, alone, "four at a time, three rows a forward");
    assert!(forwards.iter().all(|f| f.requests <= 4));
    assert!(
        forwards.iter().all(|f| f.rows <= 3 || f.requests == 1),
        "a forward of several requests holds at most max_rows rows"
    );
    assert!(forwards.iter().any(|f| f.requests > 1), "nothing was batched");
}
