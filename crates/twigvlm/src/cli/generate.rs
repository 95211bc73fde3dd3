//! `twigvlm generate`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;
use std::ops::ControlFlow;

use twigvlm_backbone::ops::DecodeOps;
use twigvlm_backbone::preprocess::load_image;
use twigvlm_backbone::weights::NamedTensor;
use twigvlm_engine::{BackendJob, DecoderKind, GenerateRequest, GenerateResult, GenerateStats, Prompt, Sampling};

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Image file (PNG, JPEG or WebP). Without it the prompt is text only.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// The question or instruction.
    #[arg(long)]
    pub prompt: String,
    /// Upper bound on generated tokens (generation also stops at end-of-sequence).
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling mass (with a temperature above 0).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Write pixel_values, image_features and last_logits (f32) to this safetensors file.
    #[arg(long)]
    pub dump_tensors: Option<PathBuf>,
    #[command(flatten)]
    pub draft: super::DraftArgs,
    #[command(flatten)]
    pub pruning: super::PruningArgs,
    #[command(flatten)]
    pub model: super::ModelArgs,
}

#[derive(Serialize)]
struct JsonOutput<'a> {
    prompt_ids: &'a [u32],
    generated_ids: &'a [u32],
    text: &'a str,
    decoder: DecoderKind,
    stats: &'a GenerateStats,
}

impl super::ModelCommand for GenerateArgs {
    fn model(&self) -> &super::ModelArgs {
        &self.model
    }
}

impl BackendJob for GenerateArgs {
    type Output = anyhow::Result<()>;

    fn run<B: DecodeOps>(self, device: B::Device) -> anyhow::Result<()> {
        let args = self;
        let sampling = Sampling::new(args.temperature, args.top_p)?;
        let image = args
            .image
            .as_deref()
            .map(|path| load_image(path).with_context(|| format!("cannot use --image {}", path.display())))
            .transpose()?;
        let pruning = args.pruning.spec();
        let (engine, decoder) = super::load_engine::<B>(&args.model, device, &pruning, false)?;

        let request = GenerateRequest {
            prompt: Prompt::User(args.prompt.clone()),
            image,
            max_new_tokens: args.max_new_tokens,
            sampling,
            seed: args.seed,
            capture_tensors: args.dump_tensors.is_some(),
            decoder,
            pruning,
            draft: args.draft.config(),
        };
        let mut stdout = std::io::stdout().lock();
        let result = engine.generate(&request, |piece| {
            if !args.json {
                // A closed stdout (e.g. `| head`) must not abort generation mid-way with a panic.
                let _ = stdout.write_all(piece.as_bytes()).and_then(|_| stdout.flush());
            }
            ControlFlow::Continue(())
        })?;
        if args.json {
            let out = JsonOutput {
                prompt_ids: &result.prompt.ids,
                generated_ids: &result.generated_ids,
                text: &result.text,
                decoder,
                stats: &result.stats,
            };
            writeln!(stdout, "{}", serde_json::to_string(&out)?)?;
        } else {
            writeln!(stdout)?;
        }
        if let Some(path) = &args.dump_tensors {
            super::dump::write_tensors(path, &dump_entries(&result))
                .with_context(|| format!("cannot write --dump-tensors {}", path.display()))?;
        }
        Ok(())
    }
}

fn dump_entries(result: &GenerateResult) -> Vec<NamedTensor> {
    let mut entries = Vec::new();
    if let Some((values, shape)) = &result.pixel_values {
        entries.push(("pixel_values".to_string(), shape.to_vec(), values.clone()));
    }
    if let Some((values, shape)) = &result.image_features {
        entries.push(("image_features".to_string(), shape.to_vec(), values.clone()));
    }
    entries.push(("last_logits".to_string(), vec![result.last_logits.len()], result.last_logits.clone()));
    entries
}
