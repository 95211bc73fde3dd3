//! A seeded, random-access shapes-world dataset: example `i` of seed `s` is the same on every
//! machine and does not depend on which other examples were generated.

use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use strum::VariantArray;

use super::questions::{ask, Task};
use super::render::render;
use super::scene::{Scene, SceneConfig};
use crate::conversation::{Conversation, ImageSource};

/// The tasks a dataset asks, cycled so each gets the same share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMix(pub Vec<Task>);

impl TaskMix {
    pub fn short() -> Self {
        Self(Task::SHORT.to_vec())
    }

    pub fn all() -> Self {
        Self(Task::VARIANTS.to_vec())
    }
}

#[derive(Debug, Clone)]
pub struct ShapesDataset {
    pub seed: u64,
    pub len: usize,
    pub tasks: TaskMix,
    pub scene: SceneConfig,
    /// Independent questions about the same image in one example (training packs several).
    pub turns_per_image: usize,
}

/// Separate random streams for the scene and its rendering, so that the blank-image baseline
/// sees the same background as the real image.
const SCENE_STREAM: u64 = 0;
const RENDER_STREAM: u64 = 1;

impl ShapesDataset {
    pub fn new(seed: u64, len: usize, tasks: TaskMix) -> Self {
        Self { seed, len, tasks, scene: SceneConfig::default(), turns_per_image: 1 }
    }

    fn rng(&self, index: usize, stream: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(index as u64 * 2 + stream);
        rng
    }

    pub fn scene(&self, index: usize) -> Scene {
        Scene::sample(&self.scene, &mut self.rng(index, SCENE_STREAM))
    }

    /// Example `index`'s scene and rendered image, without questions (what per-patch training needs).
    pub fn scene_and_image(&self, index: usize) -> (Scene, RgbImage) {
        let scene = self.scene(index);
        let image = render(&scene, &self.scene, &mut self.rng(index, RENDER_STREAM));
        (scene, image)
    }

    /// Example `index`: its rendered image and `turns_per_image` questions.
    pub fn get(&self, index: usize) -> Conversation {
        let mut rng = self.rng(index, SCENE_STREAM);
        let scene = Scene::sample(&self.scene, &mut rng);
        let tasks = &self.tasks.0;
        let turns = (0..self.turns_per_image)
            .map(|_| {
                let task = match self.turns_per_image {
                    1 => tasks[index % tasks.len()],
                    _ => tasks[rng.random_range(0..tasks.len())],
                };
                ask(task, &scene, &mut rng)
            })
            .collect();
        let image = render(&scene, &self.scene, &mut self.rng(index, RENDER_STREAM));
        Conversation { id: format!("shapes-{}-{index}", self.seed), image: Some(ImageSource::Rendered(image)), turns }
    }

    /// The image of example `index` with every object removed (the blank-image baseline).
    pub fn blank_image(&self, index: usize) -> ImageSource {
        ImageSource::Rendered(render(&Scene::new(Vec::new()), &self.scene, &mut self.rng(index, RENDER_STREAM)))
    }

    pub fn iter(&self) -> impl Iterator<Item = Conversation> + '_ {
        (0..self.len).map(|i| self.get(i))
    }
}
