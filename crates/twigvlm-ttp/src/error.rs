/// Errors of prefill policies and visual budgets.
#[derive(Debug, thiserror::Error)]
pub enum TtpError {
    #[error("invalid visual budget {0:?}: give a token count (`64`) or a share of the image's visual tokens (`11.1%`), at least 0 and at most 100%")]
    InvalidBudget(String),
    #[error(
        "visual budget {budget} is over the image's {visual_tokens} visual tokens (at most {visual_tokens}, or 100%)"
    )]
    BudgetOverImage { budget: String, visual_tokens: usize },
    #[error("unknown prefill policy {0:?}: expected none, fastv, vlm-layer:N, random, random:SEED, twig or twig++")]
    UnknownPolicy(String),
    #[error("invalid layer plan: {0}")]
    InvalidLayers(String),
    #[error("the {0} policy needs a visual budget (--visual-budget 64, or 11.1% of the image's visual tokens)")]
    MissingBudget(String),
    #[error("a visual budget needs a pruning policy other than none (--policy); the none policy takes a FinalWipe layer alone")]
    NoPolicy,
    #[error("a policy that ranks with the twig (twig, twig++) needs a twig: attach one (--twig DIR)")]
    MissingTwig,
    #[error("the twig++ policy needs a twig with a pruning head (train one with `train-twig --pruning-head`)")]
    MissingPruningHead,
    #[error("token pruning needs text after the image (the last prompt token is the selection query), but the prompt ends with visual tokens")]
    ImageAtPromptEnd,
    #[error(transparent)]
    Interrupted(#[from] twigvlm_backbone::Interrupted),
}

pub type Result<T, E = TtpError> = std::result::Result<T, E>;
