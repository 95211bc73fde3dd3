//! Dataset specs as written on the command line:
//! `shapes:seed=<u64>,n=<count>[,task=short|describe|all|<task>[+<task>...]][,objects=<min>-<max>][,turns=<k>]`,
//! `easy-vqa:split=train|test[,n=<count>][,seed=<u64>][,dir=<cache folder>]` ([`crate::easy_vqa`])
//! or the path of a LLaVA instruction JSON file. Several specs make a [`Dataset::Mixture`].
//!
//! Seeds below [`EVAL_SEED_START`] are for training, seeds from it on for evaluation; the trainer
//! refuses evaluation seeds, so held-out scenes are never trained on. easy-VQA's test split counts
//! as evaluation data in the same way.

use std::path::{Path, PathBuf};

use crate::conversation::Conversation;
use crate::easy_vqa::{EasyVqaSpec, Split};
use crate::error::{DataError, Result};
use crate::llava_json;
use crate::shapes::{SceneConfig, ShapesDataset, Task, TaskMix};

/// First evaluation seed.
pub const EVAL_SEED_START: u64 = 1_000_000;
/// First seed of the final checks: evaluation seeds that no training run evaluates on while it
/// trains (the demo model's quality bar asks its questions from here).
pub const FINAL_EVAL_SEED_START: u64 = 2_000_000;

/// The spec of `n` held-out scenes from the first evaluation seed, asking `tasks` (`short`,
/// `all`, `describe`, `color+where`, …; `None`: the short tasks).
pub fn eval_shapes(n: usize, tasks: Option<&str>) -> String {
    let tasks = tasks.map(|t| format!(",task={t}")).unwrap_or_default();
    format!("shapes:seed={EVAL_SEED_START},n={n}{tasks}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedRange {
    Train,
    Eval,
}

impl SeedRange {
    pub fn of(seed: u64) -> Self {
        if seed < EVAL_SEED_START {
            SeedRange::Train
        } else {
            SeedRange::Eval
        }
    }
}

#[derive(Debug, Clone)]
pub enum DatasetSpec {
    Shapes(ShapesDataset),
    EasyVqa(EasyVqaSpec),
    LlavaJson(PathBuf),
    Mixture(Vec<DatasetSpec>),
}

/// An opened dataset: generated on demand or read from disk.
#[derive(Debug, Clone)]
pub enum Dataset {
    Shapes(ShapesDataset),
    Records(Vec<Conversation>),
    /// Its parts taken in turn (example `i` is part `i % parts`), each part cycled until the
    /// longest has been read once: every batch draws evenly from every part.
    Mixture(Vec<Dataset>),
}

impl Dataset {
    pub fn len(&self) -> usize {
        match self {
            Dataset::Shapes(d) => d.len,
            Dataset::Records(r) => r.len(),
            Dataset::Mixture(parts) => parts.len() * parts.iter().map(Dataset::len).max().unwrap_or(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Questions in the dataset (every turn of every example), known without generating it.
    pub fn question_count(&self) -> usize {
        self.questions_in_first(self.len())
    }

    /// Questions in examples `0..n` (`n` at most `len`).
    fn questions_in_first(&self, n: usize) -> usize {
        match self {
            Dataset::Shapes(d) => n * d.turns_per_image,
            Dataset::Records(r) => r[..n].iter().map(|c| c.turns.len()).sum(),
            Dataset::Mixture(parts) => {
                let count = parts.len();
                let drawn = |part: usize| (n + count - 1 - part) / count;
                parts.iter().enumerate().map(|(i, part)| part.questions_in_cycled(drawn(i))).sum()
            }
        }
    }

    /// Questions in `draws` examples read in order, starting over at the end.
    fn questions_in_cycled(&self, draws: usize) -> usize {
        let len = self.len().max(1);
        (draws / len) * self.question_count() + self.questions_in_first(draws % len)
    }

    pub fn get(&self, index: usize) -> Conversation {
        match self {
            Dataset::Shapes(d) => d.get(index),
            Dataset::Records(r) => r[index].clone(),
            Dataset::Mixture(parts) => {
                let part = &parts[index % parts.len()];
                part.get((index / parts.len()) % part.len())
            }
        }
    }
}

impl DatasetSpec {
    /// One spec, or a mixture of several (the command line's repeated `--data`).
    pub fn parse_all(specs: &[String]) -> Result<Self> {
        match specs {
            [] => Err(DataError::Spec { spec: String::new(), reason: "no dataset given".into() }),
            [one] => Self::parse(one),
            many => Ok(DatasetSpec::Mixture(many.iter().map(|s| Self::parse(s)).collect::<Result<_>>()?)),
        }
    }

    pub fn parse(spec: &str) -> Result<Self> {
        let error = |reason: String| DataError::Spec { spec: spec.to_string(), reason };
        if let Some(params) = spec.strip_prefix("easy-vqa:") {
            return EasyVqaSpec::parse(params).map(DatasetSpec::EasyVqa).map_err(error);
        }
        let Some(params) = spec.strip_prefix("shapes:") else {
            if spec.ends_with(".json") {
                return Ok(DatasetSpec::LlavaJson(PathBuf::from(spec)));
            }
            return Err(error(
                "expected `shapes:seed=..,n=..`, `easy-vqa:split=train|test` or a LLaVA instruction .json file".into(),
            ));
        };
        let (mut seed, mut len) = (None, None);
        let mut tasks = TaskMix::short();
        let mut scene = SceneConfig::default();
        let mut turns = 1;
        for pair in params.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| error(format!("`{pair}` is not key=value")))?;
            let number =
                |v: &str| v.parse::<u64>().map_err(|_| error(format!("{key}={v} is not a non-negative integer")));
            match key {
                "seed" => seed = Some(number(value)?),
                "n" => len = Some(number(value)? as usize),
                "turns" => turns = number(value)? as usize,
                "task" => tasks = parse_tasks(value).map_err(error)?,
                "objects" => {
                    let (lo, hi) = value.split_once('-').unwrap_or((value, value));
                    let (lo, hi) = (number(lo)? as usize, number(hi)? as usize);
                    if lo == 0 || lo > hi || hi > scene.max_objects() {
                        return Err(error(format!("objects={value} must be a range within 1-{}", scene.max_objects())));
                    }
                    scene.objects = lo..=hi;
                }
                _ => return Err(error(format!("unknown key `{key}` (expected seed, n, task, objects, turns)"))),
            }
        }
        let seed = seed.ok_or_else(|| error("missing seed=<u64>".into()))?;
        let len = len.ok_or_else(|| error("missing n=<count>".into()))?;
        if turns == 0 {
            return Err(error("turns must be at least 1".into()));
        }
        Ok(DatasetSpec::Shapes(ShapesDataset { seed, len, tasks, scene, turns_per_image: turns }))
    }

    /// The seed range of a shapes spec, or the split of an easy-VQA one (None for user data).
    /// A mixture is in the evaluation range if any of its parts is.
    pub fn seed_range(&self) -> Option<SeedRange> {
        match self {
            DatasetSpec::Shapes(d) => Some(SeedRange::of(d.seed)),
            DatasetSpec::EasyVqa(d) => Some(match d.split {
                Split::Train => SeedRange::Train,
                Split::Test => SeedRange::Eval,
            }),
            DatasetSpec::LlavaJson(_) => None,
            DatasetSpec::Mixture(parts) => {
                let ranges: Vec<SeedRange> = parts.iter().filter_map(DatasetSpec::seed_range).collect();
                ranges.iter().copied().find(|r| *r == SeedRange::Eval).or(ranges.first().copied())
            }
        }
    }

    /// Opens the dataset; a JSON file's relative image paths resolve against `image_root`
    /// (default: the JSON file's directory).
    pub fn open(&self, image_root: Option<&Path>) -> Result<Dataset> {
        match self {
            DatasetSpec::Shapes(d) => Ok(Dataset::Shapes(d.clone())),
            DatasetSpec::EasyVqa(d) => Ok(Dataset::Records(d.open()?)),
            DatasetSpec::LlavaJson(path) => {
                let root = image_root
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).to_path_buf());
                Ok(Dataset::Records(llava_json::read(path, &root)?))
            }
            DatasetSpec::Mixture(parts) => {
                let parts = parts.iter().map(|p| p.open(image_root)).collect::<Result<Vec<_>>>()?;
                if let Some(empty) = parts.iter().position(Dataset::is_empty) {
                    return Err(DataError::Spec {
                        spec: "the mixture".into(),
                        reason: format!("part {} has no examples", empty + 1),
                    });
                }
                Ok(Dataset::Mixture(parts))
            }
        }
    }
}

fn parse_tasks(value: &str) -> std::result::Result<TaskMix, String> {
    match value {
        "short" => Ok(TaskMix::short()),
        "all" => Ok(TaskMix::all()),
        _ => value.split('+').map(Task::named).collect::<std::result::Result<Vec<Task>, String>>().map(TaskMix),
    }
}
