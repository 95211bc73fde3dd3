//! Why a generation did not happen: the request was wrong ([`RequestError`], the caller's to
//! fix), or loading or running the model failed.

use twigvlm_backbone::BackboneError;
use twigvlm_ssd::DecodeError;
use twigvlm_ttp::{PrefillPolicy, TtpError};
use twigvlm_twig::TwigError;

use crate::decoder::DecoderKind;

/// A request that cannot run on this model as asked.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The decoder runs the twig, and none is attached.
    #[error("the {0} decoder needs --twig DIR (a twig trained for this base model)")]
    DecoderNeedsTwig(DecoderKind),
    /// A pruning policy that ranks with the twig (twig, twig++), and no twig attached.
    #[error("a policy that ranks with the twig (twig, twig++) needs a twig: attach one (--twig DIR)")]
    PolicyNeedsTwig,
    /// The twig-only decoder with a pruning policy.
    #[error("the twig-only decoder runs the shallow network on the whole prompt and does not prune: set the policy to none, or decode with the base or ssd decoder")]
    TwigOnlyPrunes,
    /// A pruning spec this model cannot run (budget, layers).
    #[error(transparent)]
    Pruning(TtpError),
    /// The image cannot be preprocessed for this model (its shape is out of bounds).
    #[error(transparent)]
    Image(BackboneError),
    /// The prompt does not render or tokenise.
    #[error("cannot make a prompt of it: {0}")]
    Prompt(BackboneError),
    /// The prompt leaves no room in the context for a generated token.
    #[error("the prompt has {prompt} tokens{}, but the model's context holds {context}", image_note(*.visual_tokens))]
    PromptTooLong {
        /// Tokens of the prompt, the image's included.
        prompt: usize,
        /// Positions the model supports.
        context: usize,
        /// Tokens of the image, if there is one.
        visual_tokens: Option<usize>,
    },
    /// An explanation asked for a policy at a budget that keeps every visual token.
    #[error(
        "the {policy} policy pruned nothing: give a visual budget below the image's {visual_tokens} visual tokens"
    )]
    NothingPruned {
        /// The policy.
        policy: PrefillPolicy,
        /// The image's visual tokens.
        visual_tokens: usize,
    },
}

fn image_note(visual_tokens: Option<usize>) -> String {
    visual_tokens.map(|n| format!(" (the image counts {n})")).unwrap_or_default()
}

/// Which part of a request an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestPart {
    /// The decoder asked for.
    Decoder,
    /// The pruning policy, budget or FinalWipe layer.
    Pruning,
    /// The prompt or conversation.
    Prompt,
}

impl RequestError {
    /// The part of the request to change.
    pub fn part(&self) -> RequestPart {
        match self {
            RequestError::DecoderNeedsTwig(_) => RequestPart::Decoder,
            RequestError::PolicyNeedsTwig
            | RequestError::TwigOnlyPrunes
            | RequestError::Pruning(_)
            | RequestError::NothingPruned { .. } => RequestPart::Pruning,
            RequestError::Image(_) | RequestError::Prompt(_) | RequestError::PromptTooLong { .. } => {
                RequestPart::Prompt
            }
        }
    }
}

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request was wrong; nothing ran.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Loading or running the model failed.
    #[error(transparent)]
    Model(#[from] BackboneError),
    /// The twig cannot be loaded for this model.
    #[error(transparent)]
    Twig(#[from] TwigError),
    /// A decoder failed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The caller's [`twigvlm_backbone::Interrupt`] stopped the request before it finished.
    #[error(transparent)]
    Interrupted(#[from] twigvlm_backbone::Interrupted),
    /// The image preprocessor and the vision tower disagree on the image size.
    #[error("preprocessing produced a {}x{} image but the vision tower takes {expected}x{expected}; check preprocessor_config.json", found[0], found[1])]
    ImageSize {
        /// Height and width the preprocessor produced.
        found: [usize; 2],
        /// The vision tower's side.
        expected: usize,
    },
}

impl EngineError {
    /// Whether the caller asked for something this model cannot do (as opposed to a failure).
    pub fn is_bad_request(&self) -> bool {
        matches!(self, EngineError::Request(_))
    }
}

/// A result of the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
