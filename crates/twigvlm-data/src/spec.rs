//! Dataset specs as written on the command line:
//! `shapes:seed=<u64>,n=<count>[,task=short|describe|all|<task>[+<task>...]][,objects=<min>-<max>][,turns=<k>]`
//! or the path of a LLaVA instruction JSON file.
//!
//! Seeds below [`EVAL_SEED_START`] are for training, seeds from it on for evaluation; the trainer
//! refuses evaluation seeds, so held-out scenes are never trained on.

use std::path::{Path, PathBuf};

use crate::conversation::Conversation;
use crate::error::{DataError, Result};
use crate::llava_json;
use crate::shapes::{SceneConfig, ShapesDataset, Task, TaskMix};

/// First evaluation seed.
pub const EVAL_SEED_START: u64 = 1_000_000;

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
    LlavaJson(PathBuf),
}

/// An opened dataset: generated on demand or read from disk.
#[derive(Debug, Clone)]
pub enum Dataset {
    Shapes(ShapesDataset),
    Records(Vec<Conversation>),
}

impl Dataset {
    pub fn len(&self) -> usize {
        match self {
            Dataset::Shapes(d) => d.len,
            Dataset::Records(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Questions in the dataset (every turn of every example), known without generating it.
    pub fn question_count(&self) -> usize {
        match self {
            Dataset::Shapes(d) => d.len * d.turns_per_image,
            Dataset::Records(r) => r.iter().map(|c| c.turns.len()).sum(),
        }
    }

    pub fn get(&self, index: usize) -> Conversation {
        match self {
            Dataset::Shapes(d) => d.get(index),
            Dataset::Records(r) => r[index].clone(),
        }
    }
}

impl DatasetSpec {
    pub fn parse(spec: &str) -> Result<Self> {
        let error = |reason: String| DataError::Spec { spec: spec.to_string(), reason };
        let Some(params) = spec.strip_prefix("shapes:") else {
            if spec.ends_with(".json") {
                return Ok(DatasetSpec::LlavaJson(PathBuf::from(spec)));
            }
            return Err(error("expected `shapes:seed=..,n=..` or a LLaVA instruction .json file".into()));
        };
        let (mut seed, mut len) = (None, None);
        let mut tasks = TaskMix::short();
        let mut scene = SceneConfig::default();
        let mut turns = 1;
        for pair in params.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| error(format!("`{pair}` is not key=value")))?;
            let number = |v: &str| v.parse::<u64>().map_err(|_| error(format!("{key}={v} is not a non-negative integer")));
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

    /// The seed range of a shapes spec (None for user data).
    pub fn seed_range(&self) -> Option<SeedRange> {
        match self {
            DatasetSpec::Shapes(d) => Some(SeedRange::of(d.seed)),
            DatasetSpec::LlavaJson(_) => None,
        }
    }

    /// Opens the dataset; a JSON file's relative image paths resolve against `image_root`
    /// (default: the JSON file's directory).
    pub fn open(&self, image_root: Option<&Path>) -> Result<Dataset> {
        match self {
            DatasetSpec::Shapes(d) => Ok(Dataset::Shapes(d.clone())),
            DatasetSpec::LlavaJson(path) => {
                let root = image_root.map(Path::to_path_buf).unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).to_path_buf());
                Ok(Dataset::Records(llava_json::read(path, &root)?))
            }
        }
    }
}

fn parse_tasks(value: &str) -> std::result::Result<TaskMix, String> {
    match value {
        "short" => Ok(TaskMix::short()),
        "all" => Ok(TaskMix::all()),
        _ => value.split('+').map(str::parse).collect::<std::result::Result<Vec<Task>, String>>().map(TaskMix),
    }
}
