//! From an OpenAI request to an engine request: every field checked against the loaded model
//! before anything is queued, so that bad input is answered at once with a 4xx.

use axum::http::StatusCode;
use burn::prelude::Backend;
use clap::ValueEnum as _;
use serde_json::Value;
use twigvlm_backbone::chat_template::{ChatMessage, ChatTemplate, Role};
use twigvlm_backbone::prompt::IMAGE_PLACEHOLDER;
use twigvlm_backbone::PromptTokenizer;
use twigvlm_ssd::{DecodeConfig, DraftConfig, DraftLength, DraftTree, Sampling};
use twigvlm_ttp::{PrefillPolicy, PruningSpec, TwigPlace, VisualBudget};

use super::api::{ChatCompletionRequest, Content, ContentPart};
use super::error::ApiError;
use super::images::ImageLimits;
use crate::{DecoderKind, Engine, GenerateRequest, Prompt};

/// What a request gets when it leaves a field out.
#[derive(Debug, Clone)]
pub struct RequestDefaults {
    pub pruning: PruningSpec,
    pub decoder: DecoderKind,
    /// Chain settings, draft length schedule and tree of the speculative decoder.
    pub draft: DraftConfig,
    pub max_tokens: usize,
}

/// Facts about the loaded model that validation needs; a copy lives with the HTTP handlers (the
/// engine itself stays on its own thread).
#[derive(Clone)]
pub struct ModelFacts {
    template: ChatTemplate,
    tokenizer: PromptTokenizer,
    visual_tokens: usize,
    context_length: usize,
    num_layers: usize,
    twig: Option<TwigPlace>,
}

impl ModelFacts {
    pub fn of<B: Backend>(engine: &Engine<B>) -> Self {
        let llava = &engine.llava;
        Self {
            template: llava.template.clone(),
            tokenizer: llava.tokenizer.clone(),
            visual_tokens: llava.config.visual_tokens_per_image(),
            context_length: llava.config.text.max_position_embeddings,
            num_layers: llava.model.language_model.num_layers(),
            twig: engine.twig.as_ref().map(|t| TwigPlace::of(&t.twig.config)),
        }
    }

    pub fn has_twig(&self) -> bool {
        self.twig.is_some()
    }

    /// Whether `spec` can run on this model (budget given, layers in range, twig present).
    pub fn check_pruning(&self, spec: &PruningSpec) -> Result<(), String> {
        spec.plan(self.num_layers, self.twig).map(|_| ()).map_err(|e| e.to_string())
    }
}

/// The conversation with its image URL (at most one image: LLaVA-1.5 sees one per prompt).
struct Conversation {
    messages: Vec<ChatMessage>,
    image_url: Option<String>,
}

fn conversation(request: &ChatCompletionRequest) -> Result<Conversation, ApiError> {
    let mut image_url = None;
    let mut messages = Vec::with_capacity(request.messages.len());
    for message in &request.messages {
        let role = match message.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::invalid_request(
                    format!("unsupported message role {other:?} (system, user or assistant)"),
                    Some("messages"),
                ))
            }
        };
        let content = match &message.content {
            Content::Text(text) => text.clone(),
            Content::Parts(parts) => {
                let mut pieces = Vec::with_capacity(parts.len());
                for part in parts {
                    match part {
                        ContentPart::Text { text } => pieces.push(text.clone()),
                        ContentPart::ImageUrl { image_url: url } => {
                            if role != Role::User {
                                return Err(ApiError::invalid_request(
                                    "only user messages may carry images",
                                    Some("messages"),
                                ));
                            }
                            if image_url.replace(url.url.clone()).is_some() {
                                return Err(ApiError::invalid_request(
                                    "this model sees at most one image per request",
                                    Some("messages"),
                                )
                                .with_code("too_many_images"));
                            }
                            pieces.push(IMAGE_PLACEHOLDER.to_string());
                        }
                    }
                }
                pieces.join("\n")
            }
        };
        if content.contains(IMAGE_PLACEHOLDER) && !matches!(&message.content, Content::Parts(_)) {
            return Err(ApiError::invalid_request(
                format!("message text may not contain {IMAGE_PLACEHOLDER}; send images as image_url parts"),
                Some("messages"),
            ));
        }
        messages.push(ChatMessage::new(role, content));
    }
    match messages.last() {
        Some(last) if last.role == Role::User => Ok(Conversation { messages, image_url }),
        Some(_) => Err(ApiError::invalid_request("the last message must come from the user", Some("messages"))),
        None => Err(ApiError::invalid_request("messages must not be empty", Some("messages"))),
    }
}

fn parse_field<T: std::str::FromStr>(text: &str, param: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e| ApiError::invalid_request(format!("invalid {param}: {e}"), Some(param)))
}

/// The decoder named as on the command line.
fn decoder(name: &str) -> Result<DecoderKind, ApiError> {
    <DecoderKind as clap::ValueEnum>::from_str(name, false).map_err(|_| {
        let known: Vec<&str> = DecoderKind::value_variants().iter().map(|d| d.name()).collect();
        ApiError::invalid_request(format!("unknown decoder {name:?} ({})", known.join(", ")), Some("decoder"))
    })
}

/// The pruning a request asks for: the server's default, with any of policy, budget and
/// FinalWipe overridden.
fn pruning(request: &ChatCompletionRequest, defaults: &PruningSpec) -> Result<PruningSpec, ApiError> {
    let mut spec = defaults.clone();
    if let Some(policy) = &request.policy {
        spec.policy = parse_field::<PrefillPolicy>(policy, "policy")?;
    }
    if let Some(budget) = &request.visual_budget {
        let text = match budget {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            _ => {
                return Err(ApiError::invalid_request(
                    "visual_budget is a token count or a percentage string such as \"11.1%\"",
                    Some("visual_budget"),
                ))
            }
        };
        spec.budget = Some(parse_field::<VisualBudget>(&text, "visual_budget")?);
    }
    if request.final_wipe.is_some() {
        spec.final_wipe = request.final_wipe;
    }
    if spec.policy == PrefillPolicy::None {
        spec = PruningSpec::none();
    }
    Ok(spec)
}

/// A checked request: everything but the image, which is decoded off the async threads.
pub struct Checked {
    pub request: GenerateRequest,
    pub image_url: Option<String>,
    pub stream: bool,
    pub include_usage: bool,
}

/// Checks every field of `request` against the model and the server's defaults.
pub fn check(
    request: &ChatCompletionRequest,
    facts: &ModelFacts,
    defaults: &RequestDefaults,
) -> Result<Checked, ApiError> {
    if let Some(n) = request.n.filter(|&n| n != 1) {
        return Err(ApiError::invalid_request(
            format!("n = {n}: this server returns one choice per request"),
            Some("n"),
        ));
    }
    let max_tokens = request.max_completion_tokens.or(request.max_tokens).unwrap_or(defaults.max_tokens);
    if max_tokens == 0 {
        return Err(ApiError::invalid_request("max_tokens must be at least 1", Some("max_tokens")));
    }
    let temperature = request.temperature.unwrap_or(0.0);
    let sampling = Sampling::new(temperature, request.top_p.unwrap_or(1.0)).map_err(|e| {
        ApiError::invalid_request(e.to_string(), Some(if temperature < 0.0 { "temperature" } else { "top_p" }))
    })?;
    let decoder = request.decoder.as_deref().map(decoder).transpose()?.unwrap_or(defaults.decoder);
    let pruning = pruning(request, &defaults.pruning)?;
    let draft = DraftConfig {
        length: request
            .draft_length
            .as_deref()
            .map(|text| parse_field::<DraftLength>(text, "draft_length"))
            .transpose()?
            .unwrap_or(defaults.draft.length),
        tree: match request.draft_tree.as_deref() {
            None => defaults.draft.tree,
            Some("none") => None,
            Some(text) => Some(parse_field::<DraftTree>(text, "draft_tree")?),
        },
        ..defaults.draft
    };
    let needs_twig = decoder != DecoderKind::Base || pruning.policy == PrefillPolicy::Twig;
    if needs_twig && !facts.has_twig() {
        return Err(ApiError::invalid_request(
            "this request needs a twig, and the server was started without --twig",
            Some(if decoder != DecoderKind::Base { "decoder" } else { "policy" }),
        ));
    }
    if decoder == DecoderKind::TwigOnly && pruning != PruningSpec::none() {
        return Err(ApiError::invalid_request(
            "the twig-only decoder does not prune: set policy to none",
            Some("policy"),
        ));
    }
    facts.check_pruning(&pruning).map_err(|e| ApiError::invalid_request(e, Some("policy")))?;
    let Conversation { messages, image_url } = conversation(request)?;
    let prompt = Prompt::Chat(messages);
    let text = prompt
        .render(&facts.template, image_url.is_some())
        .map_err(|e| ApiError::invalid_request(format!("cannot render the conversation: {e:#}"), Some("messages")))?;
    let tokens = facts
        .tokenizer
        .encode(&text, facts.visual_tokens)
        .map_err(|e| ApiError::invalid_request(e.to_string(), Some("messages")))?;
    // The decoders' own rule, checked before the request waits in the queue.
    let limits =
        DecodeConfig { max_new_tokens: max_tokens, eos_token_ids: Vec::new(), context_length: facts.context_length };
    limits.check_prompt(tokens.len()).map_err(|e| {
        let image =
            if image_url.is_some() { format!(" (the image counts {})", facts.visual_tokens) } else { String::new() };
        ApiError::invalid_request(format!("{e}{image}"), Some("messages")).with_code("context_length_exceeded")
    })?;
    let seed = request.seed.unwrap_or(0);
    Ok(Checked {
        request: GenerateRequest {
            prompt,
            image: None,
            max_new_tokens: max_tokens,
            sampling,
            seed,
            capture_tensors: false,
            decoder,
            pruning,
            draft,
        },
        image_url,
        stream: request.stream,
        include_usage: request.stream_options.as_ref().is_some_and(|o| o.include_usage),
    })
}

/// Decodes the request's image, if any (blocking: run it off the async threads).
pub fn attach_image(checked: &mut Checked, limits: &ImageLimits) -> Result<(), ApiError> {
    if let Some(url) = &checked.image_url {
        checked.request.image = Some(limits.load(url)?);
    }
    Ok(())
}

/// 413 when a body is over `limit` bytes.
pub fn body_too_large(limit: usize) -> ApiError {
    ApiError::invalid_request(format!("the request body is over this server's limit of {limit} bytes"), None)
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}
