//! `twigvlm make-model`.

use std::path::PathBuf;

use twigvlm_eval::synthetic::{weight_bytes, write_model, Preset, TWIG_K, TWIG_T};

use super::named::named;

#[derive(Debug, clap::Args)]
pub struct MakeModelArgs {
    /// Which real model's shapes to copy.
    #[arg(long, value_parser = named::<Preset>())]
    pub preset: Preset,
    /// Output directory (must not hold a model yet).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: MakeModelArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.out.join("model.safetensors").exists(),
        "{} already holds a model; choose another --out or delete it",
        args.out.display()
    );
    let progress = super::progress_bar(weight_bytes(args.preset), "{bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})");
    let bar = progress.clone();
    let written = write_model(args.preset, &args.out, args.seed, move |bytes| bar.inc(bytes as u64))?;
    progress.finish_and_clear();
    eprintln!(
        "wrote {} ({:.2}B parameters) and a random twig in {} (official layout, K={TWIG_K}, T={TWIG_T}: load it with --twig {} --twig-k {TWIG_K})",
        args.out.display(),
        written.base_parameters as f64 / 1e9,
        args.out.join("twig").display(),
        args.out.join("twig").display(),
    );
    Ok(())
}
