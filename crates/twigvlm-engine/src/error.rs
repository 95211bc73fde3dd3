//! Why a generation did not happen: the request was wrong ([`RequestError`], the caller's to
//! fix), or loading or running the model failed.

use twigvlm_backbone::BackboneError;
use twigvlm_ssd::DecodeError;
use twigvlm_ttp::{PrefillPolicy, TtpError};
use twigvlm_twig::TwigError;

use crate::request::DecoderKind;

/// A request that cannot run on this model as asked.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the {0} decoder needs --twig DIR (a twig trained for this base model)")]
    DecoderNeedsTwig(DecoderKind),
    #[error("the twig policy needs a twig: attach one (--twig DIR)")]
    PolicyNeedsTwig,
    #[error("the twig-only decoder runs the shallow network on the whole prompt and does not prune: set the policy to none, or decode with the base or ssd decoder")]
    TwigOnlyPrunes,
    #[error(transparent)]
    Pruning(TtpError),
    #[error("cannot make a prompt of it: {0}")]
    Prompt(BackboneError),
    #[error("the prompt has {prompt} tokens{}, but the model's context holds {context}", image_note(*.visual_tokens))]
    PromptTooLong { prompt: usize, context: usize, visual_tokens: Option<usize> },
    #[error(
        "the {policy} policy pruned nothing: give a visual budget below the image's {visual_tokens} visual tokens"
    )]
    NothingPruned { policy: PrefillPolicy, visual_tokens: usize },
}

fn image_note(visual_tokens: Option<usize>) -> String {
    visual_tokens.map(|n| format!(" (the image counts {n})")).unwrap_or_default()
}

/// Which part of a request an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestPart {
    Decoder,
    Pruning,
    Prompt,
}

impl RequestError {
    pub fn part(&self) -> RequestPart {
        match self {
            RequestError::DecoderNeedsTwig(_) => RequestPart::Decoder,
            RequestError::PolicyNeedsTwig
            | RequestError::TwigOnlyPrunes
            | RequestError::Pruning(_)
            | RequestError::NothingPruned { .. } => RequestPart::Pruning,
            RequestError::Prompt(_) | RequestError::PromptTooLong { .. } => RequestPart::Prompt,
        }
    }
}

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request was wrong; nothing ran.
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Model(#[from] BackboneError),
    #[error(transparent)]
    Twig(#[from] TwigError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("preprocessing produced a {}x{} image but the vision tower takes {expected}x{expected}; check preprocessor_config.json", found[0], found[1])]
    ImageSize { found: [usize; 2], expected: usize },
}

impl EngineError {
    /// Whether the caller asked for something this model cannot do (as opposed to a failure).
    pub fn is_bad_request(&self) -> bool {
        matches!(self, EngineError::Request(_))
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
