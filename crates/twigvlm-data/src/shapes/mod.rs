//! Shapes-world: scenes of coloured shapes on a grid, rendered to RGB, with questions whose
//! answers are read off the scene. Every shape and every colour occurs at most once per scene, so
//! "the triangle" and "the red one" are unambiguous.

mod dataset;
mod questions;
mod render;
mod scene;

pub use dataset::{ShapesDataset, TaskMix};
pub use questions::{ask, column_word, describe_answer, parse_description, Task, COLUMN_WORDS};
pub use render::render;
pub use scene::{Colour, Scene, SceneConfig, SceneObject, Shape};
