//! `twigvlm explain`.

use std::path::PathBuf;

use anyhow::Context;
use twigvlm_backbone::ops::DecodeOps;
use twigvlm_backbone::preprocess::load_image;
use twigvlm_backbone::Interrupt;
use twigvlm_engine::explain::{explain, policy_specs};
use twigvlm_engine::{BackendJob, PrefillPolicy, PruningSpec, VisualBudget};
use twigvlm_eval::explain::render;

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// Image file (PNG, JPEG or WebP).
    #[arg(long)]
    pub image: PathBuf,
    /// The question whose last token's attention ranks the patches.
    #[arg(long)]
    pub prompt: String,
    /// Average visual tokens per layer, R̄: a count (`64`) or a share (`11.1%`).
    #[arg(long)]
    pub visual_budget: VisualBudget,
    /// FinalWipe layer K_f of the policies that have one (default: 24/32 of the depth).
    #[arg(long)]
    pub final_wipe: Option<usize>,
    /// The policies drawn side by side (twig and twig++ need --twig).
    #[arg(long, value_delimiter = ',', default_value = "twig,fastv")]
    pub policies: Vec<PrefillPolicy>,
    /// Where the PNG goes.
    #[arg(long, default_value = "explain.png")]
    pub out: PathBuf,
    /// Also print each policy's kept patches and scores as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: super::ModelArgs,
}

impl super::ModelCommand for ExplainArgs {
    fn model(&self) -> &super::ModelArgs {
        &self.model
    }
}

impl BackendJob for ExplainArgs {
    type Output = anyhow::Result<()>;

    fn run<B: DecodeOps>(self, device: B::Device) -> anyhow::Result<()> {
        let args = self;
        let image = load_image(&args.image).with_context(|| format!("cannot use --image {}", args.image.display()))?;
        let (engine, _) = super::load_engine::<B>(&args.model, device, &PruningSpec::none(), true)?;
        let policies = policy_specs(&args.policies, args.visual_budget, args.final_wipe);
        anyhow::ensure!(!policies.is_empty(), "--policies names no pruning policy");
        let explanation = explain(&engine, &args.prompt, &image, &policies, &Interrupt::NEVER)?;
        render(&explanation, &args.out)?;
        if args.json {
            let panels: Vec<serde_json::Value> = explanation
                .panels
                .iter()
                .map(|p| serde_json::json!({"title": p.title, "kept_patches": p.kept, "scores": p.scores}))
                .collect();
            println!(
                "{}",
                serde_json::json!({"patches_per_side": explanation.patches_per_side, "panels": panels, "out": args.out})
            );
        } else {
            eprintln!("wrote {}", args.out.display());
        }
        Ok(())
    }
}
