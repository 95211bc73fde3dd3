//! The pruning head of a trained twig by group-relative policy optimisation (TwigVLM++'s second
//! stage, [`crate::pruning_grpo`]); the twig's blocks, norm and LM head stay as they are.

use std::path::PathBuf;

use burn::module::AutodiffModule;
use serde::Serialize;
use twigvlm_backbone::weights::StorageDtype;
use twigvlm_backbone::{load_llava, LlavaModel, LoadOptions};
use twigvlm_ttp::{PrefillPolicy, PruningSpec, TwigPlace, VisualBudget};
use twigvlm_twig::checkpoint::OURS_WEIGHTS;
use twigvlm_twig::{load_twig, save_twig, Twig};

use super::{training_and_eval_data, write_summary, RunSettings, StageDefaults, StageOutcome, StageSummary};
use crate::error::{Result, TrainError};
use crate::examples::{ConversationEncoder, VisualInput};
use crate::pruning_grpo::{GrpoSettings, PruningHeadGrpo};
use crate::trainer::train;
use crate::twig::trainable_pruning_head;
use twigvlm_backbone::ops::DecodeAutodiff;

/// TwigVLM++'s learning rate for the pruning head; one pass over the data by default.
const HEAD_LR: f64 = 1e-4;
const HEAD_WARMUP: f64 = 0.03;

/// The inputs of the stage.
#[derive(Debug, Clone)]
pub struct PruningHeadStage {
    /// The base model directory.
    pub model: PathBuf,
    /// The twig whose pruning head trains (it must have one: `train-twig --pruning-head`).
    pub twig: PathBuf,
    /// Training data specs (several make a mixture); held-out data is refused.
    pub data: Vec<String>,
    /// Held-out data for the answer loss at each budget.
    pub eval_data: Vec<String>,
    /// Directory that JSON datasets' image paths are relative to.
    pub image_root: Option<PathBuf>,
    /// Keep-sets per question.
    pub samples: usize,
    /// R̄ values the budgets are drawn from.
    pub budgets: Vec<VisualBudget>,
    /// K_f (default: the twig's, else 24/32 of the depth).
    pub final_wipe: Option<usize>,
}

/// What the head learned from, in its summary.
#[derive(Debug, Clone, Serialize)]
pub struct PruningHeadRecipe {
    pub from_twig: String,
    pub samples: usize,
    pub visual_budgets: Vec<String>,
    pub prune_layer: usize,
    pub final_wipe: usize,
}

/// Trains the pruning head and saves the twig with it (our format, f16) into `run.out`.
pub fn train_pruning_head<B: DecodeAutodiff>(
    stage: &PruningHeadStage,
    run: &RunSettings,
    device: &B::Device,
) -> Result<StageOutcome> {
    if stage.samples < 2 {
        return Err(TrainError::Config("a group needs at least 2 keep-sets to compare (--samples)".into()));
    }
    let mut budgets = stage.budgets.clone();
    let Some(&largest) = budgets.first() else {
        return Err(TrainError::Config("give at least one visual budget (--visual-budget)".into()));
    };
    let ((train_data, eval_data), data) =
        training_and_eval_data(&stage.data, &stage.eval_data, stage.image_root.as_deref())?;
    let load_options = LoadOptions { weights_dtype: Some(StorageDtype::F32), ..Default::default() };
    let loaded = load_llava::<B::InnerBackend>(&stage.model, &load_options, device)?;
    let LlavaModel { vision_tower, projector, language_model, feature_select } = loaded.model;
    let twig = load_twig(&stage.twig, &language_model, &loaded.config.text, None, device)?.twig;
    if twig.pruning_head.is_none() {
        return Err(TrainError::Config(format!(
            "the twig in {} has no pruning head: train one first (train-twig --pruning-head)",
            stage.twig.display()
        )));
    }
    // Where pruning acts, as the twig++ policy would prune with this twig.
    let spec = PruningSpec { policy: PrefillPolicy::TwigHead, budget: Some(largest), final_wipe: stage.final_wipe };
    let plan = spec.plan(language_model.num_layers(), Some(TwigPlace::of(&twig.config)))?.expect("a pruning policy");
    // The curriculum opens the budgets from the largest down.
    let visual_tokens = loaded.config.visual_tokens_per_image();
    budgets.sort_by(|a, b| b.tokens(visual_tokens).total_cmp(&a.tokens(visual_tokens)));
    let epoch = train_data.len().div_ceil(run.batch_size.max(1));
    let options = run.options(StageDefaults { steps: epoch, lr: HEAD_LR, warmup: HEAD_WARMUP });
    let recipe = PruningHeadRecipe {
        from_twig: stage.twig.display().to_string(),
        samples: stage.samples,
        visual_budgets: budgets.iter().map(ToString::to_string).collect(),
        prune_layer: plan.layers.prune_layer,
        final_wipe: plan.layers.wipe_layer,
    };
    let mut objective = PruningHeadGrpo::<B> {
        visual: VisualInput { vision: vision_tower, feature_select, preprocessor: loaded.preprocessor },
        projector,
        language_model,
        encoder: ConversationEncoder { tokenizer: loaded.tokenizer, template: loaded.template, system: None },
        train: train_data,
        eval: eval_data,
        batch_size: run.batch_size,
        steps: options.steps,
        settings: GrpoSettings { samples: stage.samples, budgets, layers: plan.layers, seed: run.seed },
        device: device.clone(),
    };
    let twig = trainable_pruning_head(Twig::<B>::from_inner(twig));
    let (twig, report) = train(&mut objective, twig, &options, device)?;
    let summary =
        StageSummary { pruning_head: Some(recipe), ..StageSummary::new("pruning-head", data, run, &options, &report) };
    let recorded = serde_json::to_value(&summary).expect("the summary serialises");
    save_twig(&run.out, &twig.valid(), &objective.language_model, recorded, StorageDtype::F16)?;
    write_summary(&run.out, &summary)?;
    Ok(StageOutcome { written: run.out.join(OURS_WEIGHTS), summary })
}
