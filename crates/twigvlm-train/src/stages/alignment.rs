//! Stages 1 and 2 of the demo model: the projector between a trained vision tower and a
//! language model (by regression onto word embeddings, or by next-token loss), and the
//! projector with the language model's top layers.

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;
use twigvlm_backbone::projector::Projector;
use twigvlm_backbone::weights::{load_projector, load_vision_tower, save_projector, write_safetensors, StorageDtype};
use twigvlm_backbone::{
    load_language_model_with, read_llava_spec, ImagePreprocessor, LlavaConfig, LoadedLanguageModel, CAUSAL_LM_BODY,
};
use twigvlm_data::{Dataset, DatasetSpec, SeedRange, ShapesDataset};

use super::{shapes, write_summary, RunSettings, StageOutcome, StageSummary, DEMO_STAGE_DEFAULTS};
use crate::alignment::{AlignedParts, AlignmentObjective, SequencePadding, TunedLayerParts};
use crate::demo::{PROJECTOR_FILE, TUNED_LM_FILE, VISION_FILE};
use crate::error::{Result, TrainError};
use crate::examples::{ConversationEncoder, VisualInput};
use crate::patch_words::PatchWordsObjective;
use crate::trainable::trainable;
use crate::trainer::train;
use twigvlm_backbone::ops::{DecodeAutodiff, DecodeOps};

/// What every language-side stage starts from.
#[derive(Debug, Clone)]
pub struct LanguageStage {
    /// Model directory whose config.json and preprocessor_config.json define the VLM.
    pub config: PathBuf,
    /// Output directory of the vision stage.
    pub vision: PathBuf,
    /// The language model directory (e.g. imported from GGUF).
    pub language_model: PathBuf,
    /// A shapes spec with a training seed.
    pub data: String,
    /// A shapes spec with an evaluation seed: the teacher-forced exact match.
    pub eval_data: String,
}

/// Stage 1 (no language-model layer trains) or stage 2.
#[derive(Debug, Clone)]
pub struct AlignmentStage {
    pub inputs: LanguageStage,
    /// How many of the language model's top layers train (0: stage 1).
    pub lm_layers: usize,
    /// Output directory of an earlier projector stage to start the projector from.
    pub projector_from: Option<PathBuf>,
    /// Keep that projector as it is and tune only the top layers.
    pub freeze_projector: bool,
    /// Which parts of the top layers tune.
    pub tuned_parts: TunedLayerParts,
    /// Output directory of an earlier stage 2 to start the tuned layers from (a curriculum).
    pub tuned_from: Option<PathBuf>,
    /// More training data mixed one for one with the shapes data (dataset specs, such as
    /// easy-VQA's train split); held-out data is refused.
    pub mix_data: Vec<String>,
    /// Text-only conversations (LLaVA instruction JSON) mixed one for one with the data.
    pub replay_data: Option<PathBuf>,
}

/// Where an alignment run started from, recorded so that a curriculum's runs can be traced back.
#[derive(Debug, Clone, Serialize)]
pub struct AlignmentOrigin {
    pub projector_from: Option<String>,
    pub tuned_from: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mix_data: Vec<String>,
    pub replay_data: Option<String>,
}

impl AlignmentStage {
    fn name(&self) -> &'static str {
        if self.lm_layers == 0 {
            "projector"
        } else {
            "instruct"
        }
    }

    /// The tuned-layers file of `tuned_from`.
    fn tuned_file(&self) -> Option<PathBuf> {
        self.tuned_from.as_ref().map(|dir| dir.join(TUNED_LM_FILE))
    }

    /// The data mixed in beside the shapes data: `mix_data`, then the replay conversations.
    fn mixed_in_data(&self) -> Result<Vec<Dataset>> {
        let mut parts = Vec::new();
        for spec in &self.mix_data {
            let mixed = DatasetSpec::parse(spec)?;
            if mixed.seed_range() == Some(SeedRange::Eval) {
                return Err(TrainError::Config(format!("--mix-data {spec} is held-out data")));
            }
            parts.push(nonempty(mixed.open(None)?, || format!("--mix-data {spec}"))?);
        }
        if let Some(replay) = &self.replay_data {
            let text = DatasetSpec::LlavaJson(replay.clone()).open(None)?;
            parts.push(nonempty(text, || format!("the replay data {}", replay.display()))?);
        }
        Ok(parts)
    }

    fn origin(&self) -> AlignmentOrigin {
        let shown = |path: &Option<PathBuf>| path.as_ref().map(|p| p.display().to_string());
        AlignmentOrigin {
            projector_from: shown(&self.projector_from),
            tuned_from: shown(&self.tuned_file()),
            mix_data: self.mix_data.clone(),
            replay_data: shown(&self.replay_data),
        }
    }
}

/// `data`, or an error naming `what` when it has no conversations.
fn nonempty(data: Dataset, what: impl FnOnce() -> String) -> Result<Dataset> {
    if data.is_empty() {
        return Err(TrainError::Config(format!("{} has no conversations", what())));
    }
    Ok(data)
}

/// A language-side stage's model and data: the frozen vision tower (with its input pipeline),
/// the language model with the tensors of `tuned_layers` (an earlier stage 2's) in place of its
/// pretrained ones, and the train and held-out shapes data.
struct Inputs<B: AutodiffBackend> {
    config: LlavaConfig,
    visual: VisualInput<B::InnerBackend>,
    lm: LoadedLanguageModel<B>,
    train: ShapesDataset,
    eval: ShapesDataset,
}

impl LanguageStage {
    fn load<B: DecodeAutodiff>(&self, tuned_layers: &[PathBuf], device: &B::Device) -> Result<Inputs<B>> {
        let (config, preprocessor): (LlavaConfig, ImagePreprocessor) = read_llava_spec(&self.config)?;
        let train = shapes(&self.data, SeedRange::Train, "data")?;
        let eval = shapes(&self.eval_data, SeedRange::Eval, "eval data")?;
        let vision = load_vision_tower::<B::InnerBackend>(&self.vision.join(VISION_FILE), &config, device)?;
        let lm = load_language_model_with::<B>(&self.language_model, tuned_layers, device)?;
        if lm.config.hidden_size != config.text.hidden_size {
            return Err(TrainError::Config(format!(
                "the language model has hidden size {} but {}'s text_config says {}",
                lm.config.hidden_size,
                self.config.display(),
                config.text.hidden_size
            )));
        }
        let visual = VisualInput { vision, feature_select: config.feature_select, preprocessor };
        Ok(Inputs { config, visual, lm, train, eval })
    }

    fn data_pair(&self) -> (String, String) {
        (self.data.clone(), self.eval_data.clone())
    }
}

/// Stage 1 by regression: the projector maps each patch onto the language model's embeddings of
/// the words that describe it; no language-model layer runs. Writes [`PROJECTOR_FILE`].
pub fn train_patch_words<B: DecodeAutodiff>(
    stage: &LanguageStage,
    run: &RunSettings,
    device: &B::Device,
) -> Result<StageOutcome> {
    let Inputs { config, visual, lm, train: train_data, eval } = stage.load::<B>(&[], device)?;
    B::seed(device, run.seed);
    let embeddings = lm.model.embed_tokens.weight.val().inner();
    let mut objective = PatchWordsObjective::<B>::new(
        visual,
        embeddings,
        &lm.tokenizer,
        train_data,
        eval,
        run.batch_size,
        device.clone(),
    )?;
    let options = run.options(DEMO_STAGE_DEFAULTS);
    let (projector, report) = train(&mut objective, Projector::<B>::init(&config.projector, device), &options, device)?;
    let written = run.out.join(PROJECTOR_FILE);
    save_projector(&projector.valid(), &written)?;
    let summary = StageSummary::new("projector-words", stage.data_pair(), run, &options, &report);
    write_summary(&run.out, &summary)?;
    Ok(StageOutcome { written, summary })
}

/// Stage 1 (`lm_layers` 0) or stage 2 by next-token loss on the assistant's answers. Writes
/// [`PROJECTOR_FILE`] and, when layers tuned, [`TUNED_LM_FILE`] (under the language model's own
/// tensor names, f16).
pub fn train_alignment<B: DecodeAutodiff>(
    stage: &AlignmentStage,
    run: &RunSettings,
    device: &B::Device,
) -> Result<StageOutcome> {
    let mixed_in = stage.mixed_in_data()?;
    let Inputs { config, visual, lm, train: train_data, eval } =
        stage.inputs.load::<B>(stage.tuned_file().as_slice(), device)?;
    // The shapes data alone, or mixed one for one with the rest.
    let train_data = if mixed_in.is_empty() {
        Dataset::Shapes(train_data)
    } else {
        Dataset::Mixture([vec![Dataset::Shapes(train_data)], mixed_in].concat())
    };
    B::seed(device, run.seed);
    let projector = match &stage.projector_from {
        Some(dir) => trainable(Projector::from_inner(load_projector(&dir.join(PROJECTOR_FILE), &config, device)?)),
        None => Projector::<B>::init(&config.projector, device),
    };
    let parts = AlignedParts::new(projector, &lm.model, stage.lm_layers, stage.tuned_parts)?;
    let mut objective = AlignmentObjective::<B> {
        visual,
        language_model: lm.model,
        encoder: ConversationEncoder { tokenizer: lm.tokenizer, template: lm.template, system: None },
        train: train_data,
        eval,
        batch_size: run.batch_size,
        freeze_projector: stage.freeze_projector,
        padding: SequencePadding::for_kernels_compiled_per_shape(run.kernels_per_shape),
        device: device.clone(),
    };
    let options = run.options(DEMO_STAGE_DEFAULTS);
    let (parts, report) = train(&mut objective, parts, &options, device)?;
    let parts = parts.valid();
    let written = run.out.join(PROJECTOR_FILE);
    save_projector(&parts.projector, &written)?;
    if !parts.lm_layers.is_empty() {
        write_tuned_layers(&run.out, &parts)?;
    }
    let summary = StageSummary {
        origin: Some(stage.origin()),
        ..StageSummary::new(stage.name(), stage.inputs.data_pair(), run, &options, &report)
    };
    write_summary(&run.out, &summary)?;
    Ok(StageOutcome { written, summary })
}

/// The tuned layers of stage 2, stored in f16 like an imported language model.
fn write_tuned_layers<B: DecodeOps>(out: &Path, parts: &AlignedParts<B>) -> Result<()> {
    let tensors = parts.tuned_layer_tensors(CAUSAL_LM_BODY);
    Ok(write_safetensors(&out.join(TUNED_LM_FILE), &tensors, StorageDtype::F16)?)
}
