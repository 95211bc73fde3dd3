//! Test support shared by every crate of the workspace: where the committed fixtures are, and
//! temporary directories that are removed when a test ends, also when it panics.

use std::path::PathBuf;

pub use tempfile::TempDir;

/// The tiny llava-hf model (transformers 5.x layout, 4 layers) most tests run on.
pub const TINY_LLAVA: &str = "tiny-llava-hf5";

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `tests/fixtures`: tiny models, images, HF reference outputs, GGUF files.
pub fn fixtures() -> PathBuf {
    workspace_root().join("tests/fixtures")
}

/// A fixture by its path inside `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// The tiny llava-hf model directory ([`TINY_LLAVA`]).
pub fn tiny_llava() -> PathBuf {
    fixture(TINY_LLAVA)
}

/// A test image by its file name (`tests/fixtures/images`).
pub fn image(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}

/// A new empty directory under the system's temporary directory, named after `label`; it is
/// deleted when the returned value is dropped.
pub fn temp_dir(label: &str) -> TempDir {
    tempfile::Builder::new().prefix(&format!("twigvlm-{label}-")).tempdir().expect("a temporary directory")
}
