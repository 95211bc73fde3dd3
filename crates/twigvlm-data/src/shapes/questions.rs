//! Questions about a scene and their answers. Short answers are single words (or "row 3, column
//! five": the row as a digit, the column as a number word); the description is one sentence per
//! object in reading order.

use rand::seq::IndexedRandom;
use rand::Rng;
use strum::{Display, EnumString, IntoStaticStr, VariantArray};

use super::scene::{Colour, Scene, SceneObject, Shape};
use crate::conversation::{QuestionKind, Turn};

/// A kind of question, named as in dataset specs (`task=color+where`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Display, EnumString, IntoStaticStr, VariantArray,
)]
#[strum(serialize_all = "lowercase")]
pub enum Task {
    /// "What color is the <shape>?"
    Color,
    /// "What shape is the <color> one?"
    Shape,
    /// "Is there a <color> <shape>?" (balanced yes/no, mostly hard negatives)
    Exists,
    /// "Where is the <shape>?"
    Where,
    /// "Describe the image." (one sentence per object)
    Describe,
}

/// Share of "no" answers whose colour and shape both occur in the scene, on different objects.
const HARD_NEGATIVE_SHARE: f64 = 0.7;

impl Task {
    /// The tasks with a short answer (all but `describe`).
    pub const SHORT: [Task; 4] = [Task::Color, Task::Shape, Task::Exists, Task::Where];

    /// The task named `text`, or an error listing the names.
    pub fn named(text: &str) -> Result<Self, String> {
        text.parse().map_err(|_| {
            let names: Vec<String> = Task::VARIANTS.iter().map(Task::to_string).collect();
            format!("unknown task `{text}` (expected one of {})", names.join(", "))
        })
    }
}

/// Columns 1, 2, … as words. A location says its row as a digit and its column as a word ("row 3,
/// column five"), so that the two are different tokens: a visual token that carries both (the demo
/// projector's targets, `twigvlm-train`'s `patch_words`) then says which number is the row, and an
/// answer copies each as it is. Measured on the demo model with both as digits: the row right in
/// about half of the answers, the column at chance (it mostly repeated the row).
pub const COLUMN_WORDS: [&str; 12] =
    ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"];

/// Column `column` (0-based) as [`location`] says it: its word, or its digits beyond
/// [`COLUMN_WORDS`].
pub fn column_word(column: usize) -> String {
    COLUMN_WORDS.get(column).map_or_else(|| (column + 1).to_string(), |word| word.to_string())
}

/// Where an object is, as answers say it: "row 3, column five".
fn location(object: &SceneObject) -> String {
    format!("row {}, column {}", object.row + 1, column_word(object.column))
}

/// The column a location's word names ("five" or "5"), 0-based.
fn parse_column(word: &str) -> Option<usize> {
    let number = COLUMN_WORDS.iter().position(|w| *w == word).map(|i| i + 1).or_else(|| word.parse::<usize>().ok())?;
    number.checked_sub(1)
}

/// The description of a scene: "A red circle at row 1, column two." per object.
pub fn describe_answer(scene: &Scene) -> String {
    scene
        .objects
        .iter()
        .map(|o| format!("A {} {} at {}.", o.colour.word(), o.shape.word(), location(o)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Objects named in a description, in the format of [`describe_answer`]; sentences that do not
/// parse are skipped (they count as misses in scoring).
pub fn parse_description(text: &str) -> Vec<SceneObject> {
    text.split('.')
        .filter_map(|sentence| {
            let words: Vec<String> = sentence
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|w| !w.is_empty())
                .map(str::to_lowercase)
                .collect();
            let colour = words.iter().find_map(|w| Colour::from_word(w))?;
            let shape = words.iter().find_map(|w| Shape::from_word(w))?;
            let word_after = |key: &str| -> Option<&String> { words.get(words.iter().position(|w| w == key)? + 1) };
            let row = word_after("row")?.parse::<usize>().ok()?.checked_sub(1)?;
            Some(SceneObject { row, column: parse_column(word_after("column")?)?, shape, colour })
        })
        .collect()
}

/// One question of `task` about `scene` (which must hold at least one object), with its answer.
pub fn ask(task: Task, scene: &Scene, rng: &mut impl Rng) -> Turn {
    let object = *scene.objects.choose(rng).expect("a scene has at least one object");
    let (user, assistant) = match task {
        Task::Color => (format!("What color is the {}?", object.shape.word()), object.colour.word().to_string()),
        Task::Shape => (format!("What shape is the {} one?", object.colour.word()), object.shape.word().to_string()),
        Task::Where => (format!("Where is the {}?", object.shape.word()), location(&object)),
        Task::Describe => ("Describe the image.".to_string(), describe_answer(scene)),
        Task::Exists => {
            let (colour, shape, answer) = if rng.random_bool(0.5) {
                (object.colour, object.shape, "yes")
            } else {
                let (colour, shape) = absent_pair(scene, rng);
                (colour, shape, "no")
            };
            (format!("Is there a {} {}?", colour.word(), shape.word()), answer.to_string())
        }
    };
    Turn { user, assistant, kind: Some(QuestionKind::Shapes(task)) }
}

/// A colour–shape pair not in the scene: with two or more objects, usually a hard negative (the
/// colour of one object with the shape of another), otherwise any absent pair.
fn absent_pair(scene: &Scene, rng: &mut impl Rng) -> (Colour, Shape) {
    if scene.objects.len() >= 2 && rng.random_bool(HARD_NEGATIVE_SHARE) {
        let picked: Vec<&SceneObject> = scene.objects.choose_multiple(rng, 2).collect();
        return (picked[0].colour, picked[1].shape);
    }
    let pairs: Vec<(Colour, Shape)> = Colour::ALL
        .into_iter()
        .flat_map(|c| Shape::ALL.into_iter().map(move |s| (c, s)))
        .filter(|&(c, s)| !scene.contains(c, s))
        .collect();
    *pairs.choose(rng).expect("at most six objects leave absent pairs")
}
