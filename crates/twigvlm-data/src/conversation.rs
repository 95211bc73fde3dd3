//! One training or evaluation example: an optional image and user/assistant turns.

use std::path::PathBuf;

use image::{DynamicImage, RgbImage};

use crate::error::{DataError, Result};
use crate::shapes::Task;

/// Where an example's image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// Rendered in memory (shapes-world).
    Rendered(RgbImage),
    /// A file on disk (LLaVA JSON, resolved against the image root).
    File(PathBuf),
}

impl ImageSource {
    pub fn load(&self) -> Result<DynamicImage> {
        match self {
            ImageSource::Rendered(image) => Ok(DynamicImage::ImageRgb8(image.clone())),
            ImageSource::File(path) => {
                image::open(path).map_err(|e| DataError::Image { path: path.clone(), reason: e.to_string() })
            }
        }
    }
}

/// One exchange. The first user turn of an example with an image may carry the `<image>`
/// placeholder; without one the chat template puts the image first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub user: String,
    pub assistant: String,
    /// The shapes-world task, for per-task scoring (None for user data).
    pub task: Option<Task>,
}

impl Turn {
    /// The task's name, or `user` for user data; the key of per-task scores.
    pub fn task_name(&self) -> &'static str {
        self.task.map_or("user", Task::into)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub id: String,
    pub image: Option<ImageSource>,
    pub turns: Vec<Turn>,
}

impl Conversation {
    /// Each question with its answer as a conversation of its own about the same image.
    pub fn questions_alone(&self) -> Vec<Conversation> {
        self.turns.iter().map(|turn| Conversation { turns: vec![turn.clone()], ..self.clone() }).collect()
    }
}
