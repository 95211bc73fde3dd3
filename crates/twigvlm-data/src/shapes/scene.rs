//! Scene content: which shapes, which colours, which grid cells.

use std::ops::RangeInclusive;

use rand::seq::SliceRandom;
use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Cross,
    Diamond,
    Ring,
}

impl Shape {
    pub const ALL: [Shape; 6] =
        [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Cross, Shape::Diamond, Shape::Ring];

    pub fn word(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Cross => "cross",
            Shape::Diamond => "diamond",
            Shape::Ring => "ring",
        }
    }

    pub fn from_word(word: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|s| s.word() == word)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
    Cyan,
    Brown,
}

impl Colour {
    pub const ALL: [Colour; 8] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Purple,
        Colour::Orange,
        Colour::Cyan,
        Colour::Brown,
    ];

    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::Orange => "orange",
            Colour::Cyan => "cyan",
            Colour::Brown => "brown",
        }
    }

    pub fn from_word(word: &str) -> Option<Colour> {
        Colour::ALL.into_iter().find(|c| c.word() == word)
    }

    /// Nominal sRGB; rendering jitters each channel around it.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 40, 40],
            Colour::Green => [40, 170, 60],
            Colour::Blue => [40, 80, 220],
            Colour::Yellow => [230, 200, 30],
            Colour::Purple => [140, 60, 180],
            Colour::Orange => [240, 130, 30],
            Colour::Cyan => [40, 200, 210],
            Colour::Brown => [130, 80, 40],
        }
    }
}

/// One object; `row` and `column` are 0-based grid cells (answers count from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SceneObject {
    pub row: usize,
    pub column: usize,
    pub shape: Shape,
    pub colour: Colour,
}

/// Scene geometry and object count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SceneConfig {
    /// Cells per side; with `cell_px` equal to the vision tower's patch size each object fills one patch.
    pub grid: usize,
    pub cell_px: u32,
    pub objects: RangeInclusive<usize>,
}

impl Default for SceneConfig {
    /// 8×8 cells of 14 px = 112 px, 64 patches for a ViT with 14-px patches; 3–6 objects.
    fn default() -> Self {
        Self { grid: 8, cell_px: 14, objects: 3..=6 }
    }
}

impl SceneConfig {
    pub fn image_px(&self) -> u32 {
        self.grid as u32 * self.cell_px
    }

    /// Most objects a scene can hold: each shape and colour at most once, one object per cell.
    pub fn max_objects(&self) -> usize {
        Shape::ALL.len().min(Colour::ALL.len()).min(self.grid * self.grid)
    }
}

/// Objects sorted in reading order (row, then column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scene {
    pub objects: Vec<SceneObject>,
}

impl Scene {
    /// Builds a scene from hand-placed objects (sorted into reading order).
    pub fn new(mut objects: Vec<SceneObject>) -> Self {
        objects.sort_by_key(|o| (o.row, o.column));
        Self { objects }
    }

    pub fn sample(config: &SceneConfig, rng: &mut impl Rng) -> Self {
        let count = rng.random_range(config.objects.clone()).min(config.max_objects());
        let mut shapes = Shape::ALL.to_vec();
        let mut colours = Colour::ALL.to_vec();
        let mut cells: Vec<usize> = (0..config.grid * config.grid).collect();
        shapes.shuffle(rng);
        colours.shuffle(rng);
        cells.shuffle(rng);
        let objects = (0..count)
            .map(|i| SceneObject {
                row: cells[i] / config.grid,
                column: cells[i] % config.grid,
                shape: shapes[i],
                colour: colours[i],
            })
            .collect();
        Self::new(objects)
    }

    pub fn with_shape(&self, shape: Shape) -> Option<&SceneObject> {
        self.objects.iter().find(|o| o.shape == shape)
    }

    pub fn with_colour(&self, colour: Colour) -> Option<&SceneObject> {
        self.objects.iter().find(|o| o.colour == colour)
    }

    pub fn contains(&self, colour: Colour, shape: Shape) -> bool {
        self.objects.iter().any(|o| o.colour == colour && o.shape == shape)
    }
}
