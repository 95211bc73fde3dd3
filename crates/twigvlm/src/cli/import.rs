//! `twigvlm import gguf`.

use std::path::PathBuf;

use anyhow::Context;
use twigvlm_backbone::gguf::{import_gguf, ImportDtype};

use super::named::named;

#[derive(Debug, clap::Subcommand)]
pub enum ImportCommand {
    /// Convert a llama.cpp GGUF Llama (F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors) into a model directory.
    Gguf(GgufArgs),
}

#[derive(Debug, clap::Args)]
pub struct GgufArgs {
    /// The .gguf file.
    pub file: PathBuf,
    /// Output directory (must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Storage precision of the dequantised weights.
    #[arg(long, value_parser = named::<ImportDtype>(), default_value_t = ImportDtype::F16)]
    pub dtype: ImportDtype,
}

pub fn run(command: ImportCommand) -> anyhow::Result<()> {
    let ImportCommand::Gguf(args) = command;
    let dtype = args.dtype;
    let bar = indicatif::ProgressBar::new(0).with_message("dequantising");
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} tensors")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let summary = import_gguf(&args.file, &args.out, dtype, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .with_context(|| format!("cannot import {}", args.file.display()))?;
    bar.finish_and_clear();
    println!(
        "imported {} tensors ({:.1}M parameters{}) into {}",
        summary.tensors,
        summary.parameters as f64 / 1e6,
        if summary.tied_embeddings { ", tied embeddings" } else { "" },
        summary.out_dir.display()
    );
    Ok(())
}
