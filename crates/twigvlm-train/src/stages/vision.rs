//! Stage 0: the vision tower from scratch, on shapes-world with per-patch heads.

use std::path::PathBuf;

use burn::module::AutodiffModule;
use twigvlm_backbone::read_llava_spec;
use twigvlm_backbone::weights::save_vision_tower;
use twigvlm_data::SeedRange;

use super::{shapes, write_summary, RunSettings, StageOutcome, StageSummary, DEMO_STAGE_DEFAULTS};
use crate::demo::VISION_FILE;
use crate::error::Result;
use crate::trainer::train;
use crate::vision::{PatchClassifier, VisionObjective};
use twigvlm_backbone::ops::DecodeAutodiff;

/// The inputs of the vision stage.
#[derive(Debug, Clone)]
pub struct VisionStage {
    /// Model directory whose config.json (vision_config) and preprocessor_config.json define the tower.
    pub config: PathBuf,
    /// A shapes spec with a training seed.
    pub data: String,
    /// A shapes spec with an evaluation seed: the per-patch accuracy.
    pub eval_data: String,
}

/// Trains the tower and writes it as [`VISION_FILE`] into `run.out`.
pub fn train_vision<B: DecodeAutodiff>(
    stage: &VisionStage,
    run: &RunSettings,
    device: &B::Device,
) -> Result<StageOutcome> {
    let (config, preprocessor) = read_llava_spec(&stage.config)?;
    let train_data = shapes(&stage.data, SeedRange::Train, "data")?;
    let eval_data = shapes(&stage.eval_data, SeedRange::Eval, "eval data")?;
    B::seed(device, run.seed);
    let model = PatchClassifier::<B>::init(&config.vision, device);
    let mut objective =
        VisionObjective::<B>::new(train_data, eval_data, preprocessor, &config.vision, run.batch_size, device.clone())?;
    let options = run.options(DEMO_STAGE_DEFAULTS);
    let (model, report) = train(&mut objective, model, &options, device)?;
    let written = run.out.join(VISION_FILE);
    save_vision_tower(&model.valid().tower, &written)?;
    let summary = StageSummary::new("vision", (stage.data.clone(), stage.eval_data.clone()), run, &options, &report);
    write_summary(&run.out, &summary)?;
    Ok(StageOutcome { written, summary })
}
