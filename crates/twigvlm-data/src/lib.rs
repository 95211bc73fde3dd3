//! Training and evaluation data: shapes-world synthetic scenes with content-addressed questions,
//! the third-party easy-VQA set, and a reader for LLaVA instruction JSON, all yielding
//! [`Conversation`]s.

pub mod conversation;
pub mod easy_vqa;
pub mod error;
pub mod llava_json;
pub mod score;
pub mod shapes;
pub mod spec;
pub mod wheel;

pub use conversation::{Conversation, ImageSource, QuestionKind, Turn};
pub use error::{DataError, Result};
pub use shapes::{Colour, Scene, SceneConfig, SceneObject, Shape, ShapesDataset, Task, TaskMix, COLUMN_WORDS};
pub use spec::{eval_shapes, Dataset, DatasetSpec, SeedRange, EVAL_SEED_START, FINAL_EVAL_SEED_START};
