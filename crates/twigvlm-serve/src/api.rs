//! The OpenAI chat-completions wire format: what a client sends and what it gets back, plus this
//! server's own extension fields (pruning policy, budget, decoder) and statistics.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;

/// Request fields this server understands. Anything else is refused by name (a client that sets
/// `logprobs` or `tools` would otherwise silently get something it did not ask for).
const KNOWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stream",
    "stream_options",
    "n",
    "user",
    // Extensions of this server.
    "policy",
    "visual_budget",
    "final_wipe",
    "decoder",
    "draft_length",
    "draft_tree",
];

#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub max_tokens: Option<usize>,
    pub max_completion_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<usize>,
    #[allow(dead_code)]
    pub user: Option<String>,
    /// Prefill pruning policy (`none`, `fastv`, `vlm-layer:N`, `random[:SEED]`, `twig`).
    pub policy: Option<String>,
    /// Average visual tokens per layer: a count or a percentage (`"11.1%"`).
    pub visual_budget: Option<Value>,
    pub final_wipe: Option<usize>,
    /// `base`, `twig-only` or `ssd`.
    pub decoder: Option<String>,
    /// `fixed` or `adaptive` (the speculative decoder's draft length).
    pub draft_length: Option<String>,
    /// `top_k:depth:nodes` (greedy requests draft this tree) or `none` (a chain).
    pub draft_tree: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Content,
    #[allow(dead_code)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Deserialize)]
pub struct ImageUrl {
    pub url: String,
    #[allow(dead_code)]
    pub detail: Option<String>,
}

impl ChatCompletionRequest {
    /// Parses a request body, naming the first unsupported field if there is one.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::invalid_request(format!("the body is not valid JSON: {e}"), None))?;
        let object =
            value.as_object().ok_or_else(|| ApiError::invalid_request("the body must be a JSON object", None))?;
        if let Some(unknown) = object.keys().find(|key| !KNOWN_FIELDS.contains(&key.as_str())) {
            return Err(ApiError::invalid_request(format!("unsupported parameter: {unknown}"), Some(unknown)));
        }
        serde_json::from_value(value).map_err(|e| ApiError::invalid_request(format!("invalid request: {e}"), None))
    }
}

/// Token counts of one completion.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens }
    }
}

#[derive(Debug, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    pub content: String,
}

#[derive(Debug, Serialize)]
pub struct Choice {
    pub index: usize,
    pub message: AssistantMessage,
    pub finish_reason: &'static str,
}

/// A whole (non-streamed) completion. `twigvlm` carries this engine's statistics (timings,
/// pruning, speculative decoding), which OpenAI clients ignore.
#[derive(Debug, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: Usage,
    pub twigvlm: Value,
}

#[derive(Debug, Serialize, Default)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub finish_reason: Option<&'static str>,
}

/// One server-sent event of a streamed completion.
#[derive(Debug, Serialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub twigvlm: Option<Value>,
}

/// What identifies one completion in every chunk of it.
#[derive(Debug, Clone)]
pub struct CompletionId {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl CompletionId {
    pub fn chunk(&self, choices: Vec<ChunkChoice>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: None,
            twigvlm: None,
        }
    }

    pub fn delta(&self, delta: Delta, finish_reason: Option<&'static str>) -> ChatCompletionChunk {
        self.chunk(vec![ChunkChoice { index: 0, delta, finish_reason }])
    }

    pub fn completion(
        &self,
        content: String,
        finish_reason: &'static str,
        usage: Usage,
        stats: Value,
    ) -> ChatCompletion {
        ChatCompletion {
            id: self.id.clone(),
            object: "chat.completion",
            created: self.created,
            model: self.model.clone(),
            choices: vec![Choice { index: 0, message: AssistantMessage { role: "assistant", content }, finish_reason }],
            usage,
            twigvlm: stats,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

#[derive(Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_text_and_image_parts() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":[
            {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}},
            {"type":"text","text":"What is this?"}]}],"max_tokens":8,"stream":true}"#;
        let request = ChatCompletionRequest::parse(body).unwrap();
        assert!(request.stream);
        let Content::Parts(parts) = &request.messages[0].content else { panic!("parts") };
        assert!(matches!(&parts[0], ContentPart::ImageUrl { image_url } if image_url.url.starts_with("data:")));
        assert!(matches!(&parts[1], ContentPart::Text { text } if text == "What is this?"));
    }

    #[test]
    fn names_an_unsupported_parameter() {
        let error = ChatCompletionRequest::parse(br#"{"model":"m","messages":[],"logprobs":true}"#).unwrap_err();
        assert_eq!(error.param.as_deref(), Some("logprobs"));
        assert_eq!(error.status, axum::http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn refuses_malformed_json_and_wrong_types() {
        assert!(ChatCompletionRequest::parse(b"{\"model\":").unwrap_err().message.contains("not valid JSON"));
        assert!(ChatCompletionRequest::parse(br#"{"model":"m","messages":"hi"}"#).is_err());
        assert!(ChatCompletionRequest::parse(br#"[1]"#).unwrap_err().message.contains("JSON object"));
    }
}
