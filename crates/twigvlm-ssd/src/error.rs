/// Errors of the decoders.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid sampling parameters: {0}")]
    InvalidSampling(String),
    #[error("the prompt has {prompt} tokens, but the model's context holds {context}")]
    PromptTooLong { prompt: usize, context: usize },
    #[error(
        "self-speculative decoding needs the twig's prefill cache: prefill with the twig attached and its cache kept"
    )]
    MissingTwigCache,
    #[error(transparent)]
    Backbone(#[from] twigvlm_backbone::BackboneError),
}

pub type Result<T, E = DecodeError> = std::result::Result<T, E>;
