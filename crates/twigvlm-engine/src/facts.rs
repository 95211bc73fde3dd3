//! What request validation needs to know about a loaded model, in a value that can be copied to
//! where requests arrive (the server's HTTP handlers) while the engine itself stays on its thread.

use twigvlm_backbone::chat_template::ChatTemplate;
use twigvlm_backbone::preprocess::ImagePreprocessor;
use twigvlm_backbone::PromptTokenizer;
use twigvlm_ttp::{PruningPlan, PruningSpec, TtpError, TwigPlace};

use crate::error::RequestError;

/// The facts of one loaded model (and its twig, if attached).
#[derive(Clone)]
pub struct ModelFacts {
    pub(crate) template: ChatTemplate,
    pub(crate) tokenizer: PromptTokenizer,
    pub(crate) preprocessor: ImagePreprocessor,
    pub(crate) visual_tokens: usize,
    pub(crate) context_length: usize,
    pub(crate) num_layers: usize,
    pub(crate) twig: Option<TwigPlace>,
}

impl ModelFacts {
    /// The chat template prompts are rendered with.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The tokenizer prompts are encoded with.
    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }

    /// Whether an image of `width` × `height` can be preprocessed for this model (checks only
    /// the dimensions, so it runs before the image is decoded).
    pub fn check_image(&self, width: u32, height: u32) -> Result<(), RequestError> {
        self.preprocessor.check_input(width, height).map_err(RequestError::Image)
    }

    /// Visual tokens one image becomes.
    pub fn visual_tokens(&self) -> usize {
        self.visual_tokens
    }

    /// Positions the language model supports.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Where the attached twig sits, if one is.
    pub fn twig(&self) -> Option<TwigPlace> {
        self.twig
    }

    /// Whether a twig is attached.
    pub fn has_twig(&self) -> bool {
        self.twig.is_some()
    }

    /// Decoder layers of the language model.
    pub fn num_layers(&self) -> usize {
        self.num_layers
    }

    /// `spec` resolved against this model (`None` for no pruning), or why it cannot run here
    /// (budget missing or over the image's visual tokens, layers out of range, no twig).
    pub fn plan(&self, spec: &PruningSpec) -> Result<Option<PruningPlan>, RequestError> {
        if let Some(budget) = spec.budget.filter(|b| b.tokens(self.visual_tokens) > self.visual_tokens as f64) {
            let visual_tokens = self.visual_tokens;
            return Err(RequestError::Pruning(TtpError::BudgetOverImage { budget: budget.to_string(), visual_tokens }));
        }
        spec.plan(self.num_layers, self.twig).map_err(RequestError::Pruning)
    }

    /// Whether `spec` can run on this model.
    pub fn check_pruning(&self, spec: &PruningSpec) -> Result<(), RequestError> {
        self.plan(spec).map(|_| ())
    }
}
