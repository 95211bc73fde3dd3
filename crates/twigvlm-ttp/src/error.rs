/// Errors of prefill policies and visual budgets.
#[derive(Debug, thiserror::Error)]
pub enum TtpError {
    #[error("invalid visual budget {0:?}: give a token count (`64`) or a share of the image's visual tokens (`11.1%`), at least 0 and at most 100%")]
    InvalidBudget(String),
    #[error("unknown prefill policy {0:?}: expected none, fastv, vlm-layer:N, random, random:SEED or twig")]
    UnknownPolicy(String),
    #[error("invalid layer plan: {0}")]
    InvalidLayers(String),
    #[error("the {0} policy needs a visual budget (--visual-budget 64, or 11.1% of the image's visual tokens)")]
    MissingBudget(String),
    #[error("a visual budget or a FinalWipe layer needs a pruning policy other than none (--policy)")]
    NoPolicy,
    #[error("the twig policy needs a twig: attach one (--twig DIR)")]
    MissingTwig,
    #[error("token pruning needs text after the image (the last prompt token is the selection query), but the prompt ends with visual tokens")]
    ImageAtPromptEnd,
}

pub type Result<T, E = TtpError> = std::result::Result<T, E>;
