//! One generation request, and the one place that checks it against a loaded model: the command
//! line, the server and the benchmarks all go through [`GenerateRequest::validate`] (the engine
//! calls it before it generates).

use image::DynamicImage;
use twigvlm_backbone::chat_template::{ChatMessage, ChatTemplate};
use twigvlm_backbone::{PromptTokenizer, PromptTokens, RenderedPrompt};
use twigvlm_ssd::{DecodeConfig, DraftConfig, Sampling};
use twigvlm_ttp::PruningSpec;

use crate::decoder::DecoderKind;
use crate::error::RequestError;
use crate::facts::ModelFacts;

/// What the model is asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// One user turn; with an image and no placeholder in it, the image goes first (LLaVA-1.5).
    User(String),
    /// A whole conversation (system, user and assistant messages, the last from the user); the
    /// image placeholder, if the request has an image, sits in the messages where the image was
    /// given.
    Chat(Vec<ChatMessage>),
}

impl Prompt {
    /// The model text: the conversation through the chat template, ending in the assistant's cue,
    /// with where the messages' own text sits in it.
    pub fn render(&self, template: &ChatTemplate, has_image: bool) -> twigvlm_backbone::Result<RenderedPrompt> {
        match self {
            Prompt::User(text) => template.render_marked(text, has_image),
            Prompt::Chat(messages) => template.render_messages_marked(messages, true),
        }
    }

    /// The prompt's tokens: [`Prompt::render`], then the tokenizer, which keeps the messages'
    /// text plain text (a control token typed in a message does not act as one).
    pub fn tokens(
        &self,
        template: &ChatTemplate,
        tokenizer: &PromptTokenizer,
        has_image: bool,
        visual_tokens: usize,
    ) -> twigvlm_backbone::Result<PromptTokens> {
        tokenizer.encode_prompt(&self.render(template, has_image)?, visual_tokens)
    }
}

impl From<&str> for Prompt {
    fn from(text: &str) -> Self {
        Prompt::User(text.to_string())
    }
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// What the model is asked.
    pub prompt: Prompt,
    /// The image it is asked about, if any.
    pub image: Option<DynamicImage>,
    /// Most tokens generated (end-of-sequence ends generation earlier).
    pub max_new_tokens: usize,
    /// Greedy, or temperature and top-p sampling.
    pub sampling: Sampling,
    /// Seed of the sampler.
    pub seed: u64,
    /// Copy pixel values and image features back to the host (for `--dump-tensors`).
    pub capture_tensors: bool,
    /// Which network generates.
    pub decoder: DecoderKind,
    /// Which visual tokens the prefill keeps.
    pub pruning: PruningSpec,
    /// How the speculative decoder drafts (chain length, threshold, or a tree when greedy).
    pub draft: DraftConfig,
}

impl GenerateRequest {
    /// Greedy decoding by the base model, nothing pruned; change fields with struct-update syntax.
    pub fn greedy(prompt: Prompt, image: Option<DynamicImage>, max_new_tokens: usize) -> Self {
        Self {
            prompt,
            image,
            max_new_tokens,
            sampling: Sampling::Greedy,
            seed: 0,
            capture_tensors: false,
            decoder: DecoderKind::Base,
            pruning: PruningSpec::none(),
            draft: DraftConfig::default(),
        }
    }

    /// Checks the request against `model`: the twig its decoder or pruning policy needs, the
    /// pruning plan against the model's layers, and the prompt, which must render, tokenise and
    /// leave room in the context for a generated token. Returns the prompt's tokens.
    ///
    /// A [`Prompt::Chat`] carries its image placeholder in its messages, so it can be checked
    /// before its image is decoded.
    pub fn validate(&self, model: &ModelFacts) -> Result<PromptTokens, RequestError> {
        check_twig_use(self.decoder, &self.pruning, model.has_twig())?;
        model.check_pruning(&self.pruning)?;
        if let Some(image) = &self.image {
            model.check_image(image.width(), image.height())?;
        }
        let has_image = self.image.is_some();
        let tokens = self
            .prompt
            .tokens(model.template(), model.tokenizer(), has_image, model.visual_tokens())
            .map_err(RequestError::Prompt)?;
        let limits = DecodeConfig {
            max_new_tokens: self.max_new_tokens,
            eos_token_ids: Vec::new(),
            context_length: model.context_length(),
        };
        if limits.check_prompt(tokens.len()).is_err() {
            return Err(RequestError::PromptTooLong {
                prompt: tokens.len(),
                context: limits.context_length,
                visual_tokens: tokens.image_span.as_ref().map(|span| span.len()),
            });
        }
        Ok(tokens)
    }
}

/// The rules of twig use, before any model is loaded: a decoder or pruning policy that runs the
/// twig needs one, and the twig-only decoder does not prune.
pub fn check_twig_use(decoder: DecoderKind, pruning: &PruningSpec, has_twig: bool) -> Result<(), RequestError> {
    if decoder.needs_twig() && !has_twig {
        return Err(RequestError::DecoderNeedsTwig(decoder));
    }
    if pruning.policy.ranks_with_twig() && !has_twig {
        return Err(RequestError::PolicyNeedsTwig);
    }
    if decoder == DecoderKind::TwigOnly && *pruning != PruningSpec::none() {
        return Err(RequestError::TwigOnlyPrunes);
    }
    Ok(())
}

/// Whether a request with this decoder and pruning uses a twig (and one must be loaded for it).
pub fn uses_twig(decoder: DecoderKind, pruning: &PruningSpec) -> bool {
    decoder.needs_twig() || pruning.policy.ranks_with_twig()
}

#[cfg(test)]
mod tests {
    use super::*;
    use twigvlm_ttp::PrefillPolicy;

    #[test]
    fn the_twig_rules_refuse_what_cannot_run() {
        let none = PruningSpec::none();
        let twig_policy =
            PruningSpec { policy: PrefillPolicy::Twig, budget: Some("8".parse().unwrap()), final_wipe: None };
        assert!(check_twig_use(DecoderKind::Base, &none, false).is_ok());
        assert!(matches!(check_twig_use(DecoderKind::Ssd, &none, false), Err(RequestError::DecoderNeedsTwig(_))));
        assert!(matches!(check_twig_use(DecoderKind::Base, &twig_policy, false), Err(RequestError::PolicyNeedsTwig)));
        assert!(matches!(check_twig_use(DecoderKind::TwigOnly, &twig_policy, true), Err(RequestError::TwigOnlyPrunes)));
        assert!(check_twig_use(DecoderKind::Ssd, &twig_policy, true).is_ok());
        assert!(uses_twig(DecoderKind::Base, &twig_policy) && !uses_twig(DecoderKind::Base, &none));
        let head_policy = PruningSpec { policy: PrefillPolicy::TwigHead, ..twig_policy };
        assert!(matches!(check_twig_use(DecoderKind::Base, &head_policy, false), Err(RequestError::PolicyNeedsTwig)));
        assert!(uses_twig(DecoderKind::Base, &head_policy));
    }
}
