//! A twig for a base model: only the twig learns, the base stays frozen (the paper's recipe,
//! with self-distillation and attention distillation as options).

use std::path::PathBuf;

use burn::module::AutodiffModule;
use serde::Serialize;
use twigvlm_backbone::weights::StorageDtype;
use twigvlm_backbone::{load_llava, LoadOptions};
use twigvlm_twig::checkpoint::OURS_WEIGHTS;
use twigvlm_twig::{load_twig, save_twig, Twig, TwigConfig};

use super::{training_and_eval_data, write_summary, RunSettings, StageDefaults, StageOutcome, StageSummary};
use crate::error::{Result, TrainError};
use crate::examples::ConversationEncoder;
use crate::trainer::train;
use crate::twig::{trainable_pruning_head, trainable_twig, AttentionDistill, TwigObjective, TwigTargets};
use twigvlm_backbone::ops::DecodeAutodiff;

/// The paper's twig recipe: AdamW lr 1e-4, cosine, 3% warm-up, one epoch (steps = data / batch).
const TWIG_LR: f64 = 1e-4;
const TWIG_WARMUP: f64 = 0.03;

/// The inputs of twig training.
#[derive(Debug, Clone)]
pub struct TwigStage {
    /// The base model directory.
    pub model: PathBuf,
    /// CLIP directory for original-layout LLaVA checkpoints.
    pub vision_tower: Option<PathBuf>,
    /// Training data specs (several make a mixture): training seeds or instruction JSON.
    pub data: Vec<String>,
    /// Held-out data specs: agreement with the base, the twig's own exact match.
    pub eval_data: Vec<String>,
    /// Directory that JSON datasets' image paths are relative to.
    pub image_root: Option<PathBuf>,
    pub config: TwigConfig,
    /// Start from this trained twig (its K, T and weights) instead of copies of base layers;
    /// `config.pruning_head` adds a pruning head to it when it has none.
    pub from_twig: Option<PathBuf>,
    /// Train only the pruning head (needs `config.pruning_head` and the attention term).
    pub pruning_head_only: bool,
    pub targets: TwigTargets,
    pub attention: Option<AttentionDistill>,
}

impl TwigStage {
    /// The combinations that cannot train anything sensible.
    fn check(&self) -> Result<()> {
        if self.config.pruning_head && self.attention.is_none() {
            return Err(TrainError::Config(
                "a pruning head learns from the attention term: give the teacher layer (--attention-teacher N)".into(),
            ));
        }
        if self.pruning_head_only && !self.config.pruning_head {
            return Err(TrainError::Config("training the pruning head alone needs --pruning-head".into()));
        }
        if self.pruning_head_only && self.from_twig.is_none() {
            return Err(TrainError::Config(
                "training the pruning head alone needs a trained twig to put it on (--from-twig DIR)".into(),
            ));
        }
        Ok(())
    }
}

/// What a twig learned from, in its summary.
#[derive(Debug, Clone, Serialize)]
pub struct TwigRecipe {
    pub targets: TwigTargets,
    pub attention_distill: Option<AttentionDistill>,
    /// The twig it started from, when it did not start from base layers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_twig: Option<String>,
    /// Whether only the pruning head trained.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pruning_head_only: bool,
}

/// Trains the twig and saves it (our format, f16) into `run.out`; its `twig.json` carries the
/// summary too.
pub fn train_twig<B: DecodeAutodiff>(stage: &TwigStage, run: &RunSettings, device: &B::Device) -> Result<StageOutcome> {
    stage.check()?;
    let ((train_data, eval_data), data) =
        training_and_eval_data(&stage.data, &stage.eval_data, stage.image_root.as_deref())?;
    let epoch = train_data.len().div_ceil(run.batch_size.max(1));
    let options = run.options(StageDefaults { steps: epoch, lr: TWIG_LR, warmup: TWIG_WARMUP });
    // f32 weights: the twig starts as a copy of base layers and is trained in f32.
    let load_options = LoadOptions {
        vision_tower_dir: stage.vision_tower.clone(),
        weights_dtype: Some(StorageDtype::F32),
        ..Default::default()
    };
    let loaded = load_llava::<B::InnerBackend>(&stage.model, &load_options, device)?;
    B::seed(device, run.seed);
    let base = &loaded.model.language_model;
    let twig = match &stage.from_twig {
        Some(dir) => {
            let twig = load_twig(dir, base, &loaded.config.text, None, device)?.twig;
            if twig.pruning_head.is_none() && stage.config.pruning_head {
                twig.with_new_pruning_head(device)
            } else {
                twig
            }
        }
        None => Twig::init(base, &loaded.config.text, stage.config, device)?,
    };
    let twig = if stage.pruning_head_only {
        trainable_pruning_head(Twig::<B>::from_inner(twig))
    } else {
        trainable_twig(Twig::<B>::from_inner(twig))
    };
    let encoder = ConversationEncoder { tokenizer: loaded.tokenizer, template: loaded.template, system: None };
    let mut objective = TwigObjective::<B>::new(
        loaded.model,
        loaded.preprocessor,
        encoder,
        stage.targets,
        (train_data, eval_data),
        run.batch_size,
        device.clone(),
    );
    if let Some(distill) = stage.attention {
        objective = objective.with_attention_distill(distill)?;
    }
    objective.trains_twig = !stage.pruning_head_only;
    let (twig, report) = train(&mut objective, twig, &options, device)?;
    let summary = StageSummary {
        twig: Some(TwigRecipe {
            targets: stage.targets,
            attention_distill: stage.attention,
            from_twig: stage.from_twig.as_ref().map(|dir| dir.display().to_string()),
            pruning_head_only: stage.pruning_head_only,
        }),
        ..StageSummary::new("twig", data, run, &options, &report)
    };
    let recorded = serde_json::to_value(&summary).expect("the summary serialises");
    save_twig(&run.out, &twig.valid(), &objective.language_model, recorded, StorageDtype::F16)?;
    write_summary(&run.out, &summary)?;
    Ok(StageOutcome { written: run.out.join(OURS_WEIGHTS), summary })
}
