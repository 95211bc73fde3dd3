//! LLaVA instruction JSON: `[{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value"}...]}]`,
//! multi-turn, the `<image>` placeholder inside a human turn.

use std::path::Path;

use serde::Deserialize;

use crate::conversation::{Conversation, ImageSource, Turn};
use crate::error::{DataError, Result};

#[derive(Deserialize)]
struct Record {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    image: Option<String>,
    conversations: Vec<Message>,
}

#[derive(Deserialize)]
struct Message {
    from: String,
    value: String,
}

const USER_ROLES: [&str; 2] = ["human", "user"];
const ASSISTANT_ROLES: [&str; 3] = ["gpt", "assistant", "model"];

pub fn read(path: &Path, image_root: &Path) -> Result<Vec<Conversation>> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    let invalid = |reason: String| DataError::LlavaJson { path: path.to_path_buf(), reason };
    let records: Vec<Record> = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    records
        .into_iter()
        .enumerate()
        .map(|(index, record)| {
            let id = match record.id {
                Some(serde_json::Value::String(s)) => s,
                Some(other) => other.to_string(),
                None => index.to_string(),
            };
            let at = |reason: String| invalid(format!("record {index} (id {id}): {reason}"));
            if record.conversations.len() % 2 != 0 || record.conversations.is_empty() {
                return Err(at(format!("{} messages; expected human/gpt pairs", record.conversations.len())));
            }
            let turns = record
                .conversations
                .chunks(2)
                .map(|pair| {
                    let (user, assistant) = (&pair[0], &pair[1]);
                    if !USER_ROLES.contains(&user.from.as_str()) || !ASSISTANT_ROLES.contains(&assistant.from.as_str()) {
                        return Err(at(format!("expected a human message then a gpt message, got `{}` then `{}`", user.from, assistant.from)));
                    }
                    Ok(Turn { user: user.value.clone(), assistant: assistant.value.clone(), task: None })
                })
                .collect::<Result<Vec<_>>>()?;
            let image = record.image.map(|relative| ImageSource::File(image_root.join(relative)));
            Ok(Conversation { id, image, turns })
        })
        .collect()
}
