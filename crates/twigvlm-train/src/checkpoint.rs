//! Training checkpoints: model record, optimizer state and loop state in one directory, replaced
//! atomically (written beside it, then renamed), so an interrupted write never leaves a broken
//! checkpoint behind.

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Result, TrainError};
use twigvlm_backbone::ops::DecodeAutodiff;

const DIR: &str = "checkpoint";
const MODEL: &str = "model";
const OPTIMIZER: &str = "optimizer";
const STATE: &str = "state.json";

fn recorder() -> BinFileRecorder<FullPrecisionSettings> {
    BinFileRecorder::new()
}

fn failed(path: &Path, reason: impl ToString) -> TrainError {
    TrainError::Checkpoint { path: path.to_path_buf(), reason: reason.to_string() }
}

pub fn checkpoint_dir(out_dir: &Path) -> PathBuf {
    out_dir.join(DIR)
}

pub fn exists(out_dir: &Path) -> bool {
    checkpoint_dir(out_dir).join(STATE).is_file()
}

pub fn save<B, M, O, S>(out_dir: &Path, model: &M, optimizer: &O, state: &S) -> Result<()>
where
    B: DecodeAutodiff,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
    S: Serialize,
{
    let final_dir = checkpoint_dir(out_dir);
    let staging = out_dir.join(format!("{DIR}.tmp"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| failed(&staging, e))?;
    recorder().record(model.clone().into_record(), staging.join(MODEL)).map_err(|e| failed(&staging, e))?;
    recorder().record(optimizer.to_record(), staging.join(OPTIMIZER)).map_err(|e| failed(&staging, e))?;
    let state = serde_json::to_string_pretty(state).expect("serialisable state");
    std::fs::write(staging.join(STATE), state).map_err(|e| failed(&staging, e))?;
    let previous = out_dir.join(format!("{DIR}.old"));
    let _ = std::fs::remove_dir_all(&previous);
    if final_dir.exists() {
        std::fs::rename(&final_dir, &previous).map_err(|e| failed(&final_dir, e))?;
    }
    std::fs::rename(&staging, &final_dir).map_err(|e| failed(&final_dir, e))?;
    let _ = std::fs::remove_dir_all(&previous);
    Ok(())
}

pub fn load<B, M, O, S>(out_dir: &Path, model: M, optimizer: O, device: &B::Device) -> Result<(M, O, S)>
where
    B: DecodeAutodiff,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
    S: DeserializeOwned,
{
    let dir = checkpoint_dir(out_dir);
    let model_record = recorder().load(dir.join(MODEL), device).map_err(|e| failed(&dir, e))?;
    let optimizer_record = recorder().load(dir.join(OPTIMIZER), device).map_err(|e| failed(&dir, e))?;
    let state_path = dir.join(STATE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| failed(&state_path, e))?;
    let state = serde_json::from_str(&text).map_err(|e| failed(&state_path, e))?;
    Ok((model.load_record(model_record), optimizer.load_record(optimizer_record), state))
}
