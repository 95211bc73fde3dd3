//! Asks a model about an image through the engine library, streaming the answer.
//!
//! ```sh
//! cargo xtask demo   # once: prepares models/shapes-smol
//! cargo run --release -p twigvlm-engine --example ask -- models/shapes-smol examples/shapes-1.png "What color is the circle?"
//! # with the model's twig: twig-guided pruning to 11.1% of the visual tokens and self-speculative decoding
//! cargo run --release -p twigvlm-engine --example ask -- models/shapes-smol examples/shapes-1.png "Describe the image." models/shapes-smol/twig
//! ```

use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;

use burn::backend::Flex;
use twigvlm_engine::{DecoderKind, Engine, GenerateRequest, LoadOptions, PrefillPolicy, PruningSpec, VisualBudget};

/// Share of the image's visual tokens the pruned prefill keeps on average per layer (the paper's 88.9% pruning).
const VISUAL_BUDGET: &str = "11.1%";
const MAX_NEW_TOKENS: usize = 96;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, image, prompt, rest @ ..] = args.as_slice() else {
        return Err("usage: ask MODEL_DIR IMAGE PROMPT [TWIG_DIR]".into());
    };
    let mut engine = Engine::<Flex>::load(Path::new(model), &LoadOptions::default(), Default::default())?;
    let image = image::open(image)?;
    let mut request = GenerateRequest::greedy(prompt.as_str().into(), Some(image), MAX_NEW_TOKENS);
    if let Some(twig) = rest.first() {
        engine.attach_twig(Path::new(twig), None)?;
        let budget: VisualBudget = VISUAL_BUDGET.parse()?;
        request.decoder = DecoderKind::Ssd;
        request.pruning = PruningSpec { policy: PrefillPolicy::Twig, budget: Some(budget), final_wipe: None };
    }
    // Requests are checked against the model before anything runs; a bad one is the caller's to fix.
    request.validate(engine.facts())?;

    let mut stdout = std::io::stdout();
    let result = engine.generate(&request, |piece| {
        let _ = stdout.write_all(piece.as_bytes()).and_then(|()| stdout.flush());
        ControlFlow::Continue(())
    })?;
    let stats = &result.stats;
    println!();
    eprintln!(
        "{} tokens, prefill {:.0} ms, {:.1} tokens/s ({} decoder, stopped: {})",
        stats.new_tokens, stats.prefill_ms, stats.tokens_per_s, request.decoder, stats.stop_reason
    );
    if let Some(pruning) = &stats.pruning {
        eprintln!(
            "kept {} of {} visual tokens after layer {}",
            pruning.r_prime, pruning.visual_tokens, pruning.prune_layer
        );
    }
    Ok(())
}
