//! The OpenAI chat-completions wire format: what a client sends and what it gets back, plus this
//! server's own extension fields (pruning policy, budget, decoder) and statistics.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;

/// Request fields this server understands. Anything else is refused by name (a client that sets
/// an unknown field would otherwise silently get something it did not ask for). OpenAI fields
/// this server does not implement are accepted at their neutral values only
/// ([`ChatCompletionRequest::check_neutral`]).
const KNOWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "n",
    "user",
    // Accepted at their neutral values.
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "parallel_tool_calls",
    "tools",
    "tool_choice",
    "response_format",
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
    /// Up to [`MAX_STOP_STRINGS`] strings that end the answer (not included in it).
    pub stop: Option<StopStrings>,
    #[allow(dead_code)]
    pub user: Option<String>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    #[allow(dead_code, reason = "without tools there are no calls to run in parallel")]
    pub parallel_tool_calls: Option<bool>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub response_format: Option<Value>,
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

/// Most stop strings a request may give (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;

/// `stop`: one string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopStrings {
    One(String),
    Many(Vec<String>),
}

impl StopStrings {
    /// The strings, checked: at most [`MAX_STOP_STRINGS`], none empty.
    pub fn strings(&self) -> Result<Vec<String>, ApiError> {
        let strings = match self {
            StopStrings::One(one) => vec![one.clone()],
            StopStrings::Many(many) => many.clone(),
        };
        if strings.len() > MAX_STOP_STRINGS {
            return Err(ApiError::invalid_request(
                format!("stop takes at most {MAX_STOP_STRINGS} strings, not {}", strings.len()),
                Some("stop"),
            ));
        }
        if strings.iter().any(String::is_empty) {
            return Err(ApiError::invalid_request("stop strings must not be empty", Some("stop")));
        }
        Ok(strings)
    }
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
        let request: Self = serde_json::from_value(value)
            .map_err(|e| ApiError::invalid_request(format!("invalid request: {e}"), None))?;
        request.check_neutral()?;
        Ok(request)
    }

    /// Refuses OpenAI features this server does not implement unless they are set to what
    /// leaves the answer unchanged: no log-probabilities, penalties of 0, no logit bias, no tools,
    /// plain-text responses.
    fn check_neutral(&self) -> Result<(), ApiError> {
        let unsupported = |param: &str, what: &str| {
            Err(ApiError::invalid_request(format!("{param}: {what} is not supported by this server"), Some(param)))
        };
        if self.logprobs == Some(true) {
            return unsupported("logprobs", "returning log-probabilities");
        }
        if self.top_logprobs.is_some_and(|n| n > 0) {
            return unsupported("top_logprobs", "returning log-probabilities");
        }
        for (param, penalty) in
            [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)]
        {
            if penalty.is_some_and(|p| p != 0.0) {
                return unsupported(param, "a repetition penalty other than 0");
            }
        }
        if self.logit_bias.as_ref().is_some_and(|bias| !bias.is_empty()) {
            return unsupported("logit_bias", "biasing tokens");
        }
        if self.tools.as_ref().is_some_and(|tools| !tools.is_empty()) {
            return unsupported("tools", "calling tools");
        }
        match &self.tool_choice {
            None | Some(Value::Null) => {}
            Some(Value::String(choice)) if choice == "none" || choice == "auto" => {}
            Some(_) => return unsupported("tool_choice", "calling tools"),
        }
        match self.response_format.as_ref().map(|format| format.get("type").and_then(Value::as_str)) {
            None | Some(Some("text")) => {}
            Some(_) => return unsupported("response_format", "a response format other than text"),
        }
        Ok(())
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
        for (body, param) in [
            (r#"{"model":"m","messages":[],"logprobs":true}"#, "logprobs"),
            (r#"{"model":"m","messages":[],"presence_penalty":0.5}"#, "presence_penalty"),
            (r#"{"model":"m","messages":[],"tools":[{"type":"function"}]}"#, "tools"),
            (r#"{"model":"m","messages":[],"response_format":{"type":"json_object"}}"#, "response_format"),
            (r#"{"model":"m","messages":[],"functions":[]}"#, "functions"),
        ] {
            let error = ChatCompletionRequest::parse(body.as_bytes()).unwrap_err();
            assert_eq!(error.param.as_deref(), Some(param), "{body}");
            assert_eq!(error.status, axum::http::StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn accepts_what_every_openai_client_sends() {
        let body = br#"{"model":"m","messages":[],"stop":null,"logprobs":false,"top_logprobs":null,
            "presence_penalty":0,"frequency_penalty":0.0,"logit_bias":{},"parallel_tool_calls":true,
            "tools":[],"tool_choice":"auto","response_format":{"type":"text"}}"#;
        let request = ChatCompletionRequest::parse(body).unwrap();
        assert!(request.stop.is_none());
    }

    #[test]
    fn stop_takes_one_string_or_up_to_four() {
        let stop = |json: &str| {
            let body = format!(r#"{{"model":"m","messages":[],"stop":{json}}}"#);
            ChatCompletionRequest::parse(body.as_bytes()).and_then(|r| r.stop.unwrap().strings())
        };
        assert_eq!(stop(r#""\n""#).unwrap(), ["\n"]);
        assert_eq!(stop(r#"["a","b"]"#).unwrap(), ["a", "b"]);
        assert!(stop(r#"["a","b","c","d","e"]"#).is_err());
        assert!(stop(r#"[""]"#).is_err());
        assert!(stop("3").is_err());
    }

    #[test]
    fn refuses_malformed_json_and_wrong_types() {
        assert!(ChatCompletionRequest::parse(b"{\"model\":").unwrap_err().message.contains("not valid JSON"));
        assert!(ChatCompletionRequest::parse(br#"{"model":"m","messages":"hi"}"#).is_err());
        assert!(ChatCompletionRequest::parse(br#"[1]"#).unwrap_err().message.contains("JSON object"));
    }
}
