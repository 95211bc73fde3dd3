//! One training or evaluation example: an optional image and user/assistant turns.

use std::path::PathBuf;

use image::{DynamicImage, RgbImage};

use crate::easy_vqa::EasyVqaAnswer;
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

/// What a question asks, where the dataset knows it: the key of per-task scores, and whether its
/// answer is short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuestionKind {
    /// A shapes-world task.
    Shapes(Task),
    /// An easy-VQA question, by the kind of its one-word answer.
    EasyVqa(EasyVqaAnswer),
}

impl QuestionKind {
    /// The name scores are reported under.
    pub fn name(self) -> &'static str {
        match self {
            QuestionKind::Shapes(task) => task.into(),
            QuestionKind::EasyVqa(answer) => answer.into(),
        }
    }

    /// Whether the reference is a whole description rather than a short answer.
    pub fn is_description(self) -> bool {
        self == QuestionKind::Shapes(Task::Describe)
    }
}

/// One exchange. The first user turn of an example with an image may carry the `<image>`
/// placeholder; without one the chat template puts the image first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub user: String,
    pub assistant: String,
    /// What it asks, for per-task scoring (None for user data).
    pub kind: Option<QuestionKind>,
}

impl Turn {
    /// The task's name, or `user` for user data; the key of per-task scores.
    pub fn task_name(&self) -> &'static str {
        self.kind.map_or("user", QuestionKind::name)
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
