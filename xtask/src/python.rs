//! The Python environment for fixture generation and HF baselines (outside CI only).

use std::path::PathBuf;
use std::process::Command;

use crate::{run, workspace_root};

/// Creates (once) `target/xtask-venv` with the pinned packages and returns its interpreter.
pub fn venv() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let dir = root.join("target/xtask-venv");
    let python = dir.join("bin/python");
    let stamp = dir.join(".installed");
    if !stamp.is_file() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
        run(Command::new(&python).args(["-m", "pip", "install", "--quiet", "-r", "xtask/fixtures/requirements.txt"]))?;
        std::fs::write(&stamp, b"")?;
    }
    Ok(python)
}
