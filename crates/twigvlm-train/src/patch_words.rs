//! Stage 1 by regression (the demo model's cheap alternative to LLaVA's captioning stage 1): the
//! projector learns to map each patch's vision feature onto the language model's own embedding of
//! the words that describe the patch: its colour and shape words (or "empty"), plus its row (a
//! digit) and column (a number word) as a position code. No language-model layer runs, so
//! thousands of images train in minutes on a CPU, and the visual tokens start out in the space
//! the language model reads words in (stage 2 then teaches the language model to answer from them).
//!
//! Row and column are told apart by their words, the ones the answers say ("row 3, column five",
//! `twigvlm_data::COLUMN_WORDS`), and go into the token as [`PositionCode`] says, so that the
//! language model's own embeddings read them off without the content or each other in the way.
//! docs/training.md ("Projector-words targets") has the measurements that chose this.

use burn::module::AutodiffModule;
use burn::nn::loss::{MseLoss, Reduction};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use twigvlm_backbone::projector::Projector;
use twigvlm_backbone::PromptTokenizer;
use twigvlm_data::{Colour, Scene, Shape, ShapesDataset, COLUMN_WORDS};

use crate::error::{Result, TrainError};
use crate::examples::VisualInput;
use crate::position_code::PositionCode;
use crate::trainer::Objective;
use twigvlm_backbone::ops::DecodeAutodiff;

/// The word of an empty patch.
pub const EMPTY_WORD: &str = " empty";

/// Token ids of every word a patch description uses.
#[derive(Debug, Clone)]
pub struct PatchVocabulary {
    colours: Vec<Vec<u32>>,
    shapes: Vec<Vec<u32>>,
    /// Rows 1..=grid as digits, as in "row 3".
    rows: Vec<Vec<u32>>,
    /// Columns 1..=grid as number words ([`COLUMN_WORDS`], after a space as in "column five").
    columns: Vec<Vec<u32>>,
    empty: Vec<u32>,
}

impl PatchVocabulary {
    /// Colour and shape words bare, as the short answers say them ("red", not " red": the answer
    /// then copies the token it reads), row digits bare (the tokenizer splits digits off the space
    /// before them), column words with their leading space (their common form in text).
    pub fn new(tokenizer: &PromptTokenizer, grid: usize) -> Result<Self> {
        if grid > COLUMN_WORDS.len() {
            return Err(TrainError::Config(format!(
                "projector-words targets name at most {} columns; the grid has {grid}",
                COLUMN_WORDS.len()
            )));
        }
        let ids = |word: &str| -> Result<Vec<u32>> {
            let ids = tokenizer.encode(word, 0).map_err(|e| TrainError::Config(e.to_string()))?.ids;
            if ids.is_empty() {
                return Err(TrainError::Config(format!("the tokenizer gives no tokens for {word:?}")));
            }
            Ok(ids)
        };
        Ok(Self {
            colours: Colour::ALL.iter().map(|c| ids(c.word())).collect::<Result<_>>()?,
            shapes: Shape::ALL.iter().map(|s| ids(s.word())).collect::<Result<_>>()?,
            rows: (1..=grid).map(|n| ids(&n.to_string())).collect::<Result<_>>()?,
            columns: COLUMN_WORDS[..grid].iter().map(|word| ids(&format!(" {word}"))).collect::<Result<_>>()?,
            empty: ids(EMPTY_WORD)?,
        })
    }

    /// The words of every cell of `scene` in reading order.
    fn cell_words(&self, scene: &Scene, grid: usize) -> Vec<CellWords<'_>> {
        (0..grid * grid)
            .map(|cell| {
                let (row, column) = (cell / grid, cell % grid);
                let content: Vec<&[u32]> = match scene.objects.iter().find(|o| o.row == row && o.column == column) {
                    Some(o) => vec![&self.colours[colour_index(o.colour)], &self.shapes[shape_index(o.shape)]],
                    None => vec![&self.empty],
                };
                CellWords { content, row, column }
            })
            .collect()
    }
}

/// What a cell shows (its words, a word being its tokens) and where it is (0-based).
#[derive(Debug, PartialEq)]
struct CellWords<'a> {
    content: Vec<&'a [u32]>,
    row: usize,
    column: usize,
}

impl CellWords<'_> {
    /// The cell's target: its content words summed, with its row and column as `positions` says them.
    fn target(&self, embeddings: &[f32], d: usize, positions: &PositionCode) -> Vec<f32> {
        positions.target(&words_embedding(embeddings, d, &self.content), self.row, self.column)
    }
}

fn colour_index(colour: Colour) -> usize {
    Colour::ALL.iter().position(|&c| c == colour).expect("a known colour")
}

fn shape_index(shape: Shape) -> usize {
    Shape::ALL.iter().position(|&s| s == shape).expect("a known shape")
}

/// Rows of `embeddings` `[vocab, d]`: the mean over each word's tokens, summed over the words.
fn words_embedding(embeddings: &[f32], d: usize, words: &[&[u32]]) -> Vec<f32> {
    let mut sum = vec![0.0f32; d];
    for tokens in words {
        for &id in *tokens {
            let row = &embeddings[id as usize * d..(id as usize + 1) * d];
            sum.iter_mut().zip(row).for_each(|(s, v)| *s += v / tokens.len() as f32);
        }
    }
    sum
}

/// Each word's embedding (the mean over its tokens), one vector per word.
fn word_vectors(embeddings: &[f32], d: usize, words: &[Vec<u32>]) -> Vec<Vec<f32>> {
    words.iter().map(|w| words_embedding(embeddings, d, &[w.as_slice()])).collect()
}

pub struct PatchWordsObjective<B: AutodiffBackend> {
    pub visual: VisualInput<B::InnerBackend>,
    /// The language model's input embedding matrix, row-major `[vocab, d]`.
    embeddings: Vec<f32>,
    d: usize,
    vocabulary: PatchVocabulary,
    positions: PositionCode,
    pub train: ShapesDataset,
    pub eval: ShapesDataset,
    pub batch_size: usize,
    pub device: B::Device,
}

impl<B: DecodeAutodiff> PatchWordsObjective<B> {
    /// `embeddings` is the language model's embedding matrix `[vocab, d]`.
    pub fn new(
        visual: VisualInput<B::InnerBackend>,
        embeddings: Tensor<B::InnerBackend, 2>,
        tokenizer: &PromptTokenizer,
        train: ShapesDataset,
        eval: ShapesDataset,
        batch_size: usize,
        device: B::Device,
    ) -> Result<Self> {
        let d = embeddings.dims()[1];
        let embeddings = embeddings
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| TrainError::Config(format!("{e:?}")))?;
        let vocabulary = PatchVocabulary::new(tokenizer, train.scene.grid)?;
        let positions = PositionCode::new(
            &word_vectors(&embeddings, d, &vocabulary.rows),
            &word_vectors(&embeddings, d, &vocabulary.columns),
        );
        Ok(Self { visual, embeddings, d, vocabulary, positions, train, eval, batch_size, device })
    }

    /// Visual features `[images, patches, vision_hidden]` and the scenes of `indices`.
    fn features(
        &self,
        data: &ShapesDataset,
        indices: impl Iterator<Item = usize>,
    ) -> Result<(Tensor<B::InnerBackend, 3>, Vec<Scene>)> {
        let (mut features, mut scenes) = (Vec::new(), Vec::new());
        for index in indices {
            let (scene, image) = data.scene_and_image(index);
            features.push(self.visual.image_features(&image::DynamicImage::ImageRgb8(image), &self.device)?);
            scenes.push(scene);
        }
        Ok((Tensor::cat(features, 0), scenes))
    }

    /// Targets `[images, patches, d]`.
    fn targets(&self, scenes: &[Scene], grid: usize) -> Tensor<B, 3> {
        let values: Vec<f32> = scenes
            .iter()
            .flat_map(|scene| self.vocabulary.cell_words(scene, grid))
            .flat_map(|words| words.target(&self.embeddings, self.d, &self.positions))
            .collect();
        Tensor::from_data(TensorData::new(values, [scenes.len(), grid * grid, self.d]), &self.device)
    }

    /// Dot products of `vectors` `[n, d]` with each word of `words`, as `[n, words]`.
    fn word_scores(&self, vectors: Tensor<B::InnerBackend, 2>, words: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let n = vectors.dims()[0];
        let table: Vec<f32> = word_vectors(&self.embeddings, self.d, words).concat();
        let table =
            Tensor::<B::InnerBackend, 2>::from_data(TensorData::new(table, [words.len(), self.d]), &self.device);
        let scores =
            vectors.matmul(table.transpose()).into_data().convert::<f32>().into_vec::<f32>().expect("float scores");
        scores.chunks(words.len()).take(n).map(<[f32]>::to_vec).collect()
    }
}

fn argmax(values: &[f32]) -> usize {
    values.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

impl<B: DecodeAutodiff> Objective<B> for PatchWordsObjective<B> {
    type Model = Projector<B>;

    fn loss(&mut self, projector: &Projector<B>, step: usize) -> Result<(Tensor<B, 1>, usize)> {
        let len = self.train.len.max(1);
        let indices = (0..self.batch_size).map(|b| (step * self.batch_size + b) % len);
        let (features, scenes) = self.features(&self.train, indices)?;
        let predicted = projector.forward(Tensor::from_inner(features));
        let loss = MseLoss::new().forward(predicted, self.targets(&scenes, self.train.scene.grid), Reduction::Mean);
        Ok((loss, scenes.len()))
    }

    /// On held-out images: the object patches whose nearest colour word and nearest shape word
    /// (by dot product) are both right, and the patches whose nearest row word and nearest column
    /// word are both right.
    fn evaluate(&mut self, projector: &Projector<B>) -> Result<Vec<(String, f64)>> {
        let projector = projector.valid();
        let grid = self.eval.scene.grid;
        let (features, scenes) = self.features(&self.eval, 0..self.eval.len)?;
        let projected = projector.forward(features).reshape([scenes.len() * grid * grid, self.d]);
        let colours = self.word_scores(projected.clone(), &self.vocabulary.colours);
        let shapes = self.word_scores(projected.clone(), &self.vocabulary.shapes);
        let rows = self.word_scores(projected.clone(), &self.vocabulary.rows);
        let columns = self.word_scores(projected, &self.vocabulary.columns);
        let (mut objects, mut object_hits, mut position_hits) = (0usize, 0usize, 0usize);
        for (image, scene) in scenes.iter().enumerate() {
            for cell in 0..grid * grid {
                let at = image * grid * grid + cell;
                position_hits += (argmax(&rows[at]) == cell / grid && argmax(&columns[at]) == cell % grid) as usize;
                if let Some(o) = scene.objects.iter().find(|o| o.row * grid + o.column == cell) {
                    objects += 1;
                    object_hits += (argmax(&colours[at]) == colour_index(o.colour)
                        && argmax(&shapes[at]) == shape_index(o.shape)) as usize;
                }
            }
        }
        Ok(vec![
            ("object_word_acc".into(), object_hits as f64 / objects.max(1) as f64),
            ("position_word_acc".into(), position_hits as f64 / (scenes.len() * grid * grid).max(1) as f64),
        ])
    }
}

#[cfg(test)]
mod tests {
    use twigvlm_data::SceneObject;

    use super::*;

    #[test]
    fn each_cell_is_described_by_its_content_and_position_words() {
        let path = twigvlm_testkit::tiny_llava().join("tokenizer.json");
        let tokenizer = PromptTokenizer::from_file(&path).unwrap();
        let vocabulary = PatchVocabulary::new(&tokenizer, 2).unwrap();
        let scene = Scene::new(vec![SceneObject { row: 0, column: 1, shape: Shape::Triangle, colour: Colour::Red }]);
        let words = vocabulary.cell_words(&scene, 2);
        let ids = |word: &str| tokenizer.encode(word, 0).unwrap().ids;
        let (empty, red, triangle) = (ids(EMPTY_WORD), ids("red"), ids("triangle"));
        assert_eq!(words.len(), 4);
        assert_eq!(words[0], CellWords { content: vec![&empty], row: 0, column: 0 });
        assert_eq!(words[1], CellWords { content: vec![&red, &triangle], row: 0, column: 1 });
        assert_eq!(words[3], CellWords { content: vec![&empty], row: 1, column: 1 });
        assert_eq!((vocabulary.rows[1].clone(), vocabulary.columns[1].clone()), (ids("2"), ids(" two")));
    }

    #[test]
    fn a_grid_wider_than_the_column_words_is_refused() {
        let path = twigvlm_testkit::tiny_llava().join("tokenizer.json");
        let tokenizer = PromptTokenizer::from_file(&path).unwrap();
        let error = PatchVocabulary::new(&tokenizer, COLUMN_WORDS.len() + 1).unwrap_err().to_string();
        assert!(error.contains("at most 12 columns"), "{error}");
    }

    #[test]
    fn a_word_is_the_mean_of_its_tokens_and_words_add_up() {
        // Vocabulary of 3 tokens, d = 2.
        let embeddings = [1.0, 0.0, 0.0, 1.0, 3.0, 3.0];
        assert_eq!(words_embedding(&embeddings, 2, &[&[0, 1]]), [0.5, 0.5]);
        assert_eq!(words_embedding(&embeddings, 2, &[&[0, 1], &[2]]), [3.5, 3.5]);
    }
}
