//! LLaVA instruction JSON: `[{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value"}...]}]`,
//! multi-turn, the `<image>` placeholder inside a human turn.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::conversation::{Conversation, ImageSource, Turn};
use crate::error::{DataError, Result};

/// One example as the file stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<serde_json::Value>,
    /// Image path, relative to the image root (or absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub conversations: Vec<Message>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub from: String,
    pub value: String,
}

impl Record {
    /// One question and its answer, in the roles LLaVA's own files use.
    pub fn single_turn(id: String, image: Option<String>, user: String, assistant: String) -> Self {
        let message = |from: &str, value| Message { from: from.to_string(), value };
        Record {
            id: Some(serde_json::Value::String(id)),
            image,
            conversations: vec![message(USER_ROLES[0], user), message(ASSISTANT_ROLES[0], assistant)],
        }
    }

    /// The id as a string (a number is written as JSON; absent: None).
    pub fn id_string(&self) -> Option<String> {
        match &self.id {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
            None => None,
        }
    }
}

const USER_ROLES: [&str; 2] = ["human", "user"];
const ASSISTANT_ROLES: [&str; 3] = ["gpt", "assistant", "model"];

/// The file's records as stored.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|e| DataError::LlavaJson { path: path.to_path_buf(), reason: e.to_string() })
}

/// Writes `records` to `path` atomically (a sibling `.partial` file renamed over it), so an
/// interrupted write leaves the previous file whole.
pub fn write_records(path: &Path, records: &[Record]) -> Result<()> {
    let io = |source| DataError::Io { path: path.to_path_buf(), source };
    let partial = path.with_extension("json.partial");
    let text = serde_json::to_string_pretty(records).expect("records serialise");
    std::fs::write(&partial, text).map_err(io)?;
    std::fs::rename(&partial, path).map_err(io)
}

pub fn read(path: &Path, image_root: &Path) -> Result<Vec<Conversation>> {
    let invalid = |reason: String| DataError::LlavaJson { path: path.to_path_buf(), reason };
    read_records(path)?
        .into_iter()
        .enumerate()
        .map(|(index, record)| {
            let id = record.id_string().unwrap_or_else(|| index.to_string());
            let at = |reason: String| invalid(format!("record {index} (id {id}): {reason}"));
            if record.conversations.len() % 2 != 0 || record.conversations.is_empty() {
                return Err(at(format!("{} messages; expected human/gpt pairs", record.conversations.len())));
            }
            let turns = record
                .conversations
                .chunks(2)
                .map(|pair| {
                    let (user, assistant) = (&pair[0], &pair[1]);
                    if !USER_ROLES.contains(&user.from.as_str()) || !ASSISTANT_ROLES.contains(&assistant.from.as_str())
                    {
                        return Err(at(format!(
                            "expected a human message then a gpt message, got `{}` then `{}`",
                            user.from, assistant.from
                        )));
                    }
                    Ok(Turn { user: user.value.clone(), assistant: assistant.value.clone(), kind: None })
                })
                .collect::<Result<Vec<_>>>()?;
            let image = record.image.map(|relative| ImageSource::File(image_root.join(relative)));
            Ok(Conversation { id, image, turns })
        })
        .collect()
}
