//! From an OpenAI request to an engine request: every field checked against the loaded model
//! before anything is queued, so that bad input is answered at once with a 4xx.

use axum::http::StatusCode;
use serde_json::Value;
use strum::VariantArray;
use twigvlm_backbone::chat_template::{ChatMessage, Role};
use twigvlm_backbone::IMAGE_PLACEHOLDER;
use twigvlm_engine::{
    DecoderKind, DraftConfig, DraftLength, DraftTree, GenerateRequest, ModelFacts, PrefillPolicy, Prompt, PruningSpec,
    RequestError, RequestPart, Sampling, VisualBudget,
};

use crate::api::{ChatCompletionRequest, Content, ContentPart, StopStrings};
use crate::error::ApiError;
use crate::images::ImageLimits;

/// What requests may ask of this server.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Most nodes of a speculative draft tree (at most [`DraftTree::MAX_NODES`]).
    pub max_draft_tree_nodes: usize,
    /// Policies one `/v1/explain` request may draw side by side.
    pub max_explain_policies: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self { max_draft_tree_nodes: DraftTree::MAX_NODES, max_explain_policies: MAX_EXPLAIN_POLICIES }
    }
}

/// Distinct policies an explanation can usefully compare: none, fastv, a base layer, random and
/// the twig, with room for two more base layers.
pub const MAX_EXPLAIN_POLICIES: usize = 6;

/// What a request gets when it leaves a field out.
#[derive(Debug, Clone)]
pub struct RequestDefaults {
    pub pruning: PruningSpec,
    pub decoder: DecoderKind,
    /// Chain settings, draft length schedule and tree of the speculative decoder.
    pub draft: DraftConfig,
    pub max_tokens: usize,
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

/// A value named by its text (a decoder, a draft length), the known names listed when it is none.
fn parse_named<T: std::str::FromStr + VariantArray + std::fmt::Display>(
    text: &str,
    param: &str,
) -> Result<T, ApiError> {
    text.parse().map_err(|_| {
        let known: Vec<String> = T::VARIANTS.iter().map(T::to_string).collect();
        ApiError::invalid_request(format!("unknown {param} {text:?} ({})", known.join(", ")), Some(param))
    })
}

/// The pruning a request asks for: the server's default, with any of policy, budget and
/// FinalWipe overridden. The `none` policy drops the default budget and FinalWipe but keeps a
/// FinalWipe the request names (FinalWipe alone).
fn pruning(request: &ChatCompletionRequest, defaults: &PruningSpec) -> Result<PruningSpec, ApiError> {
    let mut spec = defaults.clone();
    if let Some(policy) = &request.policy {
        spec.policy = parse_field::<PrefillPolicy>(policy, "policy")?;
    }
    if spec.policy == PrefillPolicy::None {
        spec = PruningSpec::none();
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
    Ok(spec)
}

/// The draft tree a request asks for: `none` for a chain, a shape within the server's limit, and
/// only for greedy requests (sampling drafts a chain; a tree the server sets by default is then
/// not used).
fn draft_tree(
    request: &ChatCompletionRequest,
    sampling: Sampling,
    default: Option<DraftTree>,
    limits: &RequestLimits,
) -> Result<Option<DraftTree>, ApiError> {
    let tree = match request.draft_tree.as_deref() {
        None => return Ok(default),
        Some("none") => return Ok(None),
        Some(text) => parse_field::<DraftTree>(text, "draft_tree")?,
    };
    if tree.nodes > limits.max_draft_tree_nodes {
        return Err(ApiError::invalid_request(
            format!("draft_tree {tree}: this server drafts at most {} nodes", limits.max_draft_tree_nodes),
            Some("draft_tree"),
        ));
    }
    if sampling != Sampling::Greedy {
        return Err(ApiError::invalid_request(
            "draft_tree needs greedy decoding (temperature 0): sampling drafts a chain; drop draft_tree or the temperature",
            Some("draft_tree"),
        ));
    }
    Ok(Some(tree))
}

/// A seed for a request that gives none: a fresh one each time, as OpenAI samples.
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static DRAWN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(DRAWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    hasher.finish()
}

/// A checked request: everything but the image, which is decoded off the async threads.
pub struct Checked {
    pub request: GenerateRequest,
    pub image_url: Option<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// Strings that end the answer.
    pub stop: Vec<String>,
}

/// Checks every field of `request` against the model and the server's defaults.
pub fn check(
    request: &ChatCompletionRequest,
    facts: &ModelFacts,
    defaults: &RequestDefaults,
    limits: &RequestLimits,
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
    let decoder = request.decoder.as_deref().map(|text| parse_named(text, "decoder")).transpose()?;
    let pruning = pruning(request, &defaults.pruning)?;
    let draft = DraftConfig {
        length: request
            .draft_length
            .as_deref()
            .map(|text| parse_named::<DraftLength>(text, "draft_length"))
            .transpose()?
            .unwrap_or(defaults.draft.length),
        tree: draft_tree(request, sampling, defaults.draft.tree, limits)?,
        ..defaults.draft
    };
    let stop = request.stop.as_ref().map(StopStrings::strings).transpose()?.unwrap_or_default();
    let Conversation { messages, image_url } = conversation(request)?;
    let generate = GenerateRequest {
        prompt: Prompt::Chat(messages),
        image: None,
        max_new_tokens: max_tokens,
        sampling,
        seed: request.seed.unwrap_or_else(fresh_seed),
        capture_tensors: false,
        decoder: decoder.unwrap_or(defaults.decoder),
        pruning,
        draft,
    };
    // The chat prompt holds its image placeholder, so it is checked before the image is decoded.
    generate.validate(facts).map_err(|e| rejected(&e, facts))?;
    Ok(Checked {
        request: generate,
        image_url,
        stream: request.stream,
        include_usage: request.stream_options.as_ref().is_some_and(|o| o.include_usage),
        stop,
    })
}

/// The 400 for a request the model cannot run, naming the field to change.
fn rejected(error: &RequestError, facts: &ModelFacts) -> ApiError {
    let param = match error.part() {
        RequestPart::Decoder => "decoder",
        RequestPart::Pruning => "policy",
        RequestPart::Prompt => "messages",
    };
    let message = match error {
        RequestError::DecoderNeedsTwig(_) | RequestError::PolicyNeedsTwig if !facts.has_twig() => {
            format!("{error}; this server was started without --twig")
        }
        _ => error.to_string(),
    };
    let rejected = ApiError::invalid_request(message, Some(param));
    match error {
        RequestError::PromptTooLong { .. } => rejected.with_code("context_length_exceeded"),
        _ => rejected,
    }
}

/// Decodes the request's image, if any (blocking: run it off the async threads), refusing one
/// the model's preprocessing cannot take before decoding it.
pub fn attach_image(checked: &mut Checked, limits: &ImageLimits, facts: &ModelFacts) -> Result<(), ApiError> {
    if let Some(url) = &checked.image_url {
        checked.request.image = Some(load_image(url, limits, facts)?);
    }
    Ok(())
}

/// Decodes an image URL within the server's limits and the model's preprocessing bounds.
pub fn load_image(url: &str, limits: &ImageLimits, facts: &ModelFacts) -> Result<image::DynamicImage, ApiError> {
    limits.load(url, |width, height| {
        facts.check_image(width, height).map_err(|e| rejected(&e, facts).with_code("unsupported_image"))
    })
}

/// 413 when a body is over `limit` bytes.
pub fn body_too_large(limit: usize) -> ApiError {
    ApiError::invalid_request(format!("the request body is over this server's limit of {limit} bytes"), None)
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}
