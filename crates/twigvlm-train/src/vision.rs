//! Stage 0 of the demo model: the CLIP-style vision tower trained from scratch on shapes-world
//! with per-patch heads (shape-or-empty, colour-or-none, and auxiliary row/column heads that keep
//! position in the features). It stands in for CLIP's pre-training; the heads are discarded and
//! LLaVA reads the tower's last hidden state.

use burn::module::AutodiffModule;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use twigvlm_backbone::clip::ClipVisionTower;
use twigvlm_backbone::config::ClipVisionConfig;
use twigvlm_backbone::ImagePreprocessor;
use twigvlm_data::{Colour, Shape, ShapesDataset};

use crate::error::{Result, TrainError};
use crate::loss::weighted_cross_entropy;
use crate::metrics::argmax_ids;
use crate::trainer::Objective;
use twigvlm_backbone::ops::{DecodeAutodiff, DecodeOps};

/// Loss weights: empty patches count less in the content heads (most patches are empty); the
/// position heads are auxiliary.
#[derive(Debug, Clone, Copy)]
pub struct PatchLossWeights {
    pub empty_patch: f32,
    pub position: f32,
}

impl Default for PatchLossWeights {
    fn default() -> Self {
        Self { empty_patch: 0.2, position: 0.1 }
    }
}

/// Class 0 of the content heads is "empty" / "no colour".
const SHAPE_CLASSES: usize = Shape::ALL.len() + 1;
const COLOUR_CLASSES: usize = Colour::ALL.len() + 1;

#[derive(Module, Debug)]
pub struct PatchClassifier<B: Backend> {
    pub tower: ClipVisionTower<B>,
    norm: LayerNorm<B>,
    shape: Linear<B>,
    colour: Linear<B>,
    row: Linear<B>,
    column: Linear<B>,
}

/// Per-patch logits, rows = batch × patches.
pub struct PatchLogits<B: Backend> {
    pub shape: Tensor<B, 2>,
    pub colour: Tensor<B, 2>,
    pub row: Tensor<B, 2>,
    pub column: Tensor<B, 2>,
}

impl<B: DecodeOps> PatchClassifier<B> {
    pub fn init(cfg: &ClipVisionConfig, device: &B::Device) -> Self {
        let d = cfg.hidden_size;
        let grid = cfg.patches_per_side();
        let head = |classes: usize| LinearConfig::new(d, classes).init(device);
        Self {
            tower: ClipVisionTower::init(cfg, cfg.num_layers, device),
            norm: LayerNormConfig::new(d).with_epsilon(cfg.layer_norm_eps).init(device),
            shape: head(SHAPE_CLASSES),
            colour: head(COLOUR_CLASSES),
            row: head(grid),
            column: head(grid),
        }
    }

    /// # Shapes
    /// - pixels: `[batch, 3, size, size]`
    pub fn forward(&self, pixels: Tensor<B, 4>) -> PatchLogits<B> {
        let hidden = self.tower.forward(pixels);
        let [batch, positions, d] = hidden.dims();
        let patches = self.norm.forward(hidden.narrow(1, 1, positions - 1)).reshape([batch * (positions - 1), d]);
        PatchLogits {
            shape: self.shape.forward(patches.clone()),
            colour: self.colour.forward(patches.clone()),
            row: self.row.forward(patches.clone()),
            column: self.column.forward(patches),
        }
    }
}

/// Per-patch targets of a batch of scenes.
struct PatchTargets {
    shape: Vec<i64>,
    colour: Vec<i64>,
    row: Vec<i64>,
    column: Vec<i64>,
    occupied: Vec<bool>,
}

pub struct VisionObjective<B: Backend> {
    pub train: ShapesDataset,
    pub eval: ShapesDataset,
    pub preprocessor: ImagePreprocessor,
    pub batch_size: usize,
    pub weights: PatchLossWeights,
    pub device: B::Device,
}

impl<B: DecodeOps> VisionObjective<B> {
    pub fn new(
        train: ShapesDataset,
        eval: ShapesDataset,
        preprocessor: ImagePreprocessor,
        cfg: &ClipVisionConfig,
        batch_size: usize,
        device: B::Device,
    ) -> Result<Self> {
        let grid = cfg.patches_per_side();
        if train.scene.grid != grid || train.scene.image_px() as usize != cfg.image_size {
            return Err(TrainError::Config(format!(
                "scenes are {}px with a {g}x{g} grid but the vision tower takes {}px images in {grid}x{grid} patches",
                train.scene.image_px(),
                cfg.image_size,
                g = train.scene.grid
            )));
        }
        Ok(Self { train, eval, preprocessor, batch_size, weights: PatchLossWeights::default(), device })
    }

    fn batch<C: Backend>(
        &self,
        data: &ShapesDataset,
        indices: std::ops::Range<usize>,
        device: &C::Device,
    ) -> (Tensor<C, 4>, PatchTargets) {
        let grid = data.scene.grid;
        let mut pixels = Vec::new();
        let mut targets = PatchTargets { shape: vec![], colour: vec![], row: vec![], column: vec![], occupied: vec![] };
        let count = indices.len();
        let mut side = 0;
        for index in indices {
            let (scene, image) = data.scene_and_image(index);
            let (values, [_, h, _]) = self
                .preprocessor
                .preprocess(&image::DynamicImage::ImageRgb8(image))
                .expect("generated scenes are square");
            side = h;
            pixels.extend(values);
            for cell in 0..grid * grid {
                let (row, column) = (cell / grid, cell % grid);
                let object = scene.objects.iter().find(|o| o.row == row && o.column == column);
                targets.shape.push(
                    object.map_or(0, |o| 1 + Shape::ALL.iter().position(|&s| s == o.shape).expect("known") as i64),
                );
                targets.colour.push(
                    object.map_or(0, |o| 1 + Colour::ALL.iter().position(|&c| c == o.colour).expect("known") as i64),
                );
                targets.row.push(row as i64);
                targets.column.push(column as i64);
                targets.occupied.push(object.is_some());
            }
        }
        let pixels = Tensor::<C, 4>::from_data(TensorData::new(pixels, [count, 3, side, side]), device);
        (pixels, targets)
    }
}

impl<B: DecodeAutodiff> Objective<B> for VisionObjective<B> {
    type Model = PatchClassifier<B>;

    fn loss(&mut self, model: &PatchClassifier<B>, step: usize) -> Result<(Tensor<B, 1>, usize)> {
        // Past the end of the dataset, the next epoch starts.
        let start = (step * self.batch_size) % self.train.len.max(1);
        let end = (start + self.batch_size).min(self.train.len);
        let (pixels, targets) = self.batch::<B>(&self.train, start..end, &self.device);
        let logits = model.forward(pixels);
        let content: Vec<f32> =
            targets.occupied.iter().map(|&o| if o { 1.0 } else { self.weights.empty_patch }).collect();
        let all = vec![1.0; content.len()];
        let loss = weighted_cross_entropy(logits.shape, &targets.shape, &content)
            + weighted_cross_entropy(logits.colour, &targets.colour, &content)
            + (weighted_cross_entropy(logits.row, &targets.row, &all)
                + weighted_cross_entropy(logits.column, &targets.column, &all))
            .mul_scalar(self.weights.position);
        Ok((loss, end - start))
    }

    /// Object patches with both shape and colour right; all patches right (empty ones included); row right.
    fn evaluate(&mut self, model: &PatchClassifier<B>) -> Result<Vec<(String, f64)>> {
        let model = model.valid();
        let device = self.device.clone();
        let (mut object_hits, mut objects, mut patch_hits, mut patches, mut row_hits) =
            (0usize, 0usize, 0usize, 0usize, 0usize);
        for start in (0..self.eval.len).step_by(self.batch_size) {
            let end = (start + self.batch_size).min(self.eval.len);
            let (pixels, targets) = self.batch::<B::InnerBackend>(&self.eval, start..end, &device);
            let logits = model.forward(pixels);
            let (shape, colour, row) = (argmax_ids(logits.shape), argmax_ids(logits.colour), argmax_ids(logits.row));
            for i in 0..targets.shape.len() {
                let right = shape[i] == targets.shape[i] && colour[i] == targets.colour[i];
                patches += 1;
                patch_hits += right as usize;
                row_hits += (row[i] == targets.row[i]) as usize;
                if targets.occupied[i] {
                    objects += 1;
                    object_hits += right as usize;
                }
            }
        }
        Ok(vec![
            ("object_patch_acc".into(), object_hits as f64 / objects.max(1) as f64),
            ("patch_acc".into(), patch_hits as f64 / patches.max(1) as f64),
            ("row_acc".into(), row_hits as f64 / patches.max(1) as f64),
        ])
    }
}
