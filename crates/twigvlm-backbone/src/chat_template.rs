//! Chat templates: how a conversation becomes model text. LLaVA-1.5's `vicuna_v1` is built in;
//! a checkpoint that carries its own Jinja template (`chat_template.jinja`, or `chat_template` in
//! `tokenizer_config.json`, as Hugging Face writes them) is rendered with it. The LLaVA image
//! placeholder is plain text to either template and is expanded by the tokenizer afterwards.

use std::ops::Range;
use std::path::Path;

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde::Serialize;
use serde_with::SerializeDisplay;
use strum::{Display, EnumString};

use crate::error::{BackboneError, Result};

/// The image placeholder inside prompt text: the templates place it, the tokenizer expands it to
/// the image's visual-token positions.
pub const IMAGE_PLACEHOLDER: &str = "<image>";

/// Who says a message, named as chat templates name roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Display, EnumString, SerializeDisplay)]
#[strum(serialize_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
}

/// A piece of rendered conversation text; `trained` marks what the assistant says (and the
/// template's end-of-turn after it), the only text a training loss looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub text: String,
    pub trained: bool,
}

#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant, reason = "one template per loaded model; its size does not matter")]
pub enum ChatTemplate {
    /// LLaVA-1.5's `vicuna_v1` conversation.
    VicunaV1,
    /// The checkpoint's own Jinja template.
    Jinja(JinjaTemplate),
    /// The text goes in as given (one user turn only).
    Raw,
}

const VICUNA_V1_SYSTEM: &str = "A chat between a curious user and an artificial intelligence assistant. \
The assistant gives helpful, detailed, and polite answers to the user's questions.";
const VICUNA_V1_END_OF_TURN: &str = "</s>";

const TEMPLATE_NAME: &str = "chat";

/// A compiled Jinja chat template and the special tokens it may refer to.
#[derive(Debug, Clone)]
pub struct JinjaTemplate {
    environment: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl JinjaTemplate {
    pub fn new(source: String, bos_token: String, eos_token: String) -> Result<Self> {
        let mut environment = Environment::new();
        environment.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        environment.add_function("raise_exception", |message: String| -> std::result::Result<String, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, message))
        });
        environment
            .add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| BackboneError::Prompt(format!("the chat template does not parse: {e:#}")))?;
        Ok(Self { environment, bos_token, eos_token })
    }

    fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self.environment.get_template(TEMPLATE_NAME).expect("added in new");
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| BackboneError::Prompt(format!("the chat template failed: {e:#}")))
    }
}

impl ChatTemplate {
    /// The template a model directory carries, if any: `chat_template.jinja`, else the
    /// `chat_template` string of `tokenizer_config.json`.
    pub fn from_model_dir(dir: &Path) -> Result<Option<Self>> {
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|source| BackboneError::Json { path: config_path.clone(), source })?,
            Err(_) => serde_json::Value::Null,
        };
        let jinja_path = dir.join("chat_template.jinja");
        let source = match std::fs::read_to_string(&jinja_path) {
            Ok(source) => source,
            Err(_) => match config.get("chat_template").and_then(|t| t.as_str()) {
                Some(source) => source.to_string(),
                None => return Ok(None),
            },
        };
        // Special tokens are either plain strings or AddedToken objects with a `content` field.
        let token = |key: &str| -> String {
            let value = &config[key];
            value.as_str().or_else(|| value["content"].as_str()).unwrap_or_default().to_string()
        };
        Ok(Some(ChatTemplate::Jinja(JinjaTemplate::new(source, token("bos_token"), token("eos_token"))?)))
    }

    /// Renders one user turn followed by the assistant's cue. With an image and no placeholder in
    /// `prompt`, the placeholder goes first on its own line, as LLaVA-1.5 does.
    pub fn render(&self, prompt: &str, has_image: bool) -> Result<String> {
        let user = user_text(prompt, has_image)?;
        match self {
            ChatTemplate::Raw => Ok(user),
            _ => self.render_messages(&[ChatMessage::new(Role::User, user)], true),
        }
    }

    /// [`ChatTemplate::render`], saying where the user's text sits in the result.
    pub fn render_marked(&self, prompt: &str, has_image: bool) -> Result<RenderedPrompt> {
        let user = user_text(prompt, has_image)?;
        match self {
            ChatTemplate::Raw => {
                let span = 0..user.len();
                Ok(RenderedPrompt { text: user, message_text: MessageText::Located(vec![span]) })
            }
            _ => self.render_messages_marked(&[ChatMessage::new(Role::User, user)], true),
        }
    }

    /// [`ChatTemplate::render_messages`], saying where each message's text sits in the result, so
    /// that the tokenizer can keep it plain text (a control token typed by a user stays text).
    /// The messages are rendered once more with unique markers in place of their text; where
    /// the template changes message text (trims it, say), the markers do not splice back into the
    /// same text, and the text is left unlocated.
    pub fn render_messages_marked(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<RenderedPrompt> {
        let text = self.render_messages(messages, add_generation_prompt)?;
        let markers: Vec<String> = (0..messages.len()).map(message_marker).collect();
        let marked: Vec<ChatMessage> =
            messages.iter().zip(&markers).map(|(m, marker)| ChatMessage::new(m.role, marker.clone())).collect();
        let skeleton = self.render_messages(&marked, add_generation_prompt)?;
        let message_text = match splice(&skeleton, &markers, messages) {
            Some((spliced, spans)) if spliced == text => MessageText::Located(spans),
            _ => MessageText::Unlocated(messages.iter().map(|m| m.content.clone()).collect()),
        };
        Ok(RenderedPrompt { text, message_text })
    }

    /// Renders a whole conversation; `add_generation_prompt` appends the assistant's cue.
    pub fn render_messages(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        match self {
            ChatTemplate::VicunaV1 => Ok(render_vicuna_v1(messages, add_generation_prompt)),
            ChatTemplate::Jinja(template) => template.render(messages, add_generation_prompt),
            ChatTemplate::Raw => Ok(messages.iter().map(|m| m.content.as_str()).collect()),
        }
    }

    /// Splits a conversation (optional system message, then user/assistant pairs, the image
    /// placeholder handled as in [`Self::render`]) into prompt and trained segments: each trained
    /// segment is what the template adds for one assistant message after the assistant's cue.
    pub fn training_segments(
        &self,
        system: Option<&str>,
        turns: &[(String, String)],
        has_image: bool,
    ) -> Result<Vec<Segment>> {
        let mut messages: Vec<ChatMessage> = system.map(|s| ChatMessage::new(Role::System, s)).into_iter().collect();
        let mut segments = Vec::new();
        let mut rendered = String::new();
        for (index, (user, assistant)) in turns.iter().enumerate() {
            let user = if index == 0 { user_text(user, has_image)? } else { user.clone() };
            messages.push(ChatMessage::new(Role::User, user));
            let prompt = self.render_messages(&messages, true)?;
            messages.push(ChatMessage::new(Role::Assistant, assistant.clone()));
            let full = self.render_messages(&messages, false)?;
            let (Some(question), Some(answer)) =
                (prompt.strip_prefix(rendered.as_str()), full.strip_prefix(prompt.as_str()))
            else {
                return Err(BackboneError::Prompt(
                    "the chat template does not render conversations incrementally (each turn must extend the previous text); \
                     it cannot be used for training"
                        .into(),
                ));
            };
            segments.push(Segment { text: question.to_string(), trained: false });
            segments.push(Segment { text: answer.to_string(), trained: true });
            rendered = full;
        }
        Ok(segments)
    }
}

/// Validates the user text and places the image placeholder.
/// A prompt rendered through a chat template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedPrompt {
    /// The model text.
    pub text: String,
    /// Where the messages' own text sits in it.
    pub message_text: MessageText,
}

/// Where messages' text sits in a rendered prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageText {
    /// Byte ranges of `text`, in message order.
    Located(Vec<Range<usize>>),
    /// The template changes message text, so it cannot be located; these are the messages' texts.
    Unlocated(Vec<String>),
}

/// A string no message text contains: Unicode private-use characters around the message index.
fn message_marker(index: usize) -> String {
    format!("\u{E000}{index}\u{E001}")
}

/// Replaces each marker of `skeleton` (each once, in order) with its message's text; the result
/// and each message text's byte range in it.
fn splice(skeleton: &str, markers: &[String], messages: &[ChatMessage]) -> Option<(String, Vec<Range<usize>>)> {
    let mut text = String::with_capacity(skeleton.len());
    let mut spans = Vec::with_capacity(messages.len());
    let mut rest = skeleton;
    for (marker, message) in markers.iter().zip(messages) {
        let (before, after) = rest.split_once(marker.as_str())?;
        if after.contains(marker.as_str()) {
            return None;
        }
        text.push_str(before);
        spans.push(text.len()..text.len() + message.content.len());
        text.push_str(&message.content);
        rest = after;
    }
    text.push_str(rest);
    Some((text, spans))
}

fn user_text(prompt: &str, has_image: bool) -> Result<String> {
    if prompt.trim().is_empty() {
        return Err(BackboneError::Prompt("the prompt is empty".into()));
    }
    match (has_image, prompt.matches(IMAGE_PLACEHOLDER).count()) {
        (false, 0) | (true, 1) => Ok(prompt.to_string()),
        (true, 0) => Ok(format!("{IMAGE_PLACEHOLDER}\n{prompt}")),
        (false, _) => {
            Err(BackboneError::Prompt(format!("the prompt contains {IMAGE_PLACEHOLDER} but no image was given")))
        }
        (true, n) => Err(BackboneError::Prompt(format!(
            "the prompt contains {n} {IMAGE_PLACEHOLDER} placeholders; one image per prompt is supported"
        ))),
    }
}

/// LLaVA's `conv_vicuna_v1`: `SYSTEM USER: q ASSISTANT: a</s>USER: q ASSISTANT:`.
fn render_vicuna_v1(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let (system, rest) = match messages.first() {
        Some(ChatMessage { role: Role::System, content }) => (content.as_str(), &messages[1..]),
        _ => (VICUNA_V1_SYSTEM, messages),
    };
    let mut text = format!("{system} ");
    for message in rest {
        match message.role {
            Role::User | Role::System => text.push_str(&format!("USER: {} ", message.content)),
            Role::Assistant => text.push_str(&format!("ASSISTANT: {}{VICUNA_V1_END_OF_TURN}", message.content)),
        }
    }
    if add_generation_prompt {
        text.push_str("ASSISTANT:");
    }
    text
}
