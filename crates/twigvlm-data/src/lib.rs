//! Training and evaluation data: shapes-world synthetic scenes with content-addressed questions,
//! and a reader for LLaVA instruction JSON, both yielding [`Conversation`]s.

pub mod conversation;
pub mod error;
pub mod llava_json;
pub mod score;
pub mod shapes;
pub mod spec;

pub use conversation::{Conversation, ImageSource, Turn};
pub use error::{DataError, Result};
pub use shapes::{Colour, Scene, SceneConfig, SceneObject, Shape, ShapesDataset, Task, TaskMix, COLUMN_WORDS};
pub use spec::{eval_shapes, Dataset, DatasetSpec, SeedRange, EVAL_SEED_START, FINAL_EVAL_SEED_START};
