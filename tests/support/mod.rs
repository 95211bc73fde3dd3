//! Shared helpers of the integration tests: fixture paths, reference tensors, tolerances.

use std::path::PathBuf;

use twigvlm_backbone::weights::TensorSource;

/// The backend the integration tests run on: flex, wgpu with the `wgpu` feature (CI runs the
/// parity tests on Mesa's lavapipe software Vulkan driver too), or CUDA with `cuda` (the GPU
/// check), all in f32.
#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
pub type TestBackend = burn::backend::Flex;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
pub type TestBackend = burn::backend::Wgpu;
#[cfg(feature = "cuda")]
pub type TestBackend = burn::backend::Cuda;

/// `tests/fixtures` of the workspace.
pub fn fixtures() -> PathBuf {
    twigvlm_testkit::fixtures()
}

pub fn model_dir(name: &str) -> PathBuf {
    twigvlm_testkit::fixture(name)
}

pub fn image_path(name: &str) -> PathBuf {
    twigvlm_testkit::image(name)
}

/// Tolerances of docs/design.md §5.
#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
mod tolerance {
    pub const VISION_ATOL: f32 = 1e-4;
    pub const LOGITS_ATOL: f32 = 1e-3;
    pub const ATTENTION_ATOL: f32 = 1e-4;
    /// Hidden states are compared at the logits tolerance.
    pub const HIDDEN_ATOL: f32 = 1e-3;
    /// The backend's matmuls round at f32: the absolute tolerances cover it.
    pub const MATMUL_RTOL: f32 = 0.0;
}
/// The GPU backends' kernels accumulate in other orders (tiled matmuls, fused reductions) and
/// their `exp`/`erf` differ from libm by a few ulps: docs/design.md §5's tolerances, 10× looser.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod tolerance {
    pub const VISION_ATOL: f32 = 1e-3;
    pub const LOGITS_ATOL: f32 = 1e-2;
    pub const ATTENTION_ATOL: f32 = 1e-3;
    pub const HIDDEN_ATOL: f32 = 1e-2;
    /// On lavapipe (CI) everything is f32.
    #[cfg(not(feature = "cuda"))]
    pub const MATMUL_RTOL: f32 = 0.0;
    /// On CUDA with tensor cores, f32 matmuls run as TF32: 10 mantissa bits, a relative rounding
    /// of 2^-11 ≈ 4.9e-4 per operand (bench/results/gpu/README.md), compounding over the vision
    /// tower's and the language model's layers. Measured on an H100: 1.44e-2 on vision features
    /// of magnitude ~8, 5.7e-2 on a layer-2 hidden state of magnitude ~18 (3e-3 of the largest
    /// value). Allowed on top of the absolute tolerance: 5e-3 of the compared tensor's largest
    /// magnitude, about 10× TF32's rounding.
    #[cfg(feature = "cuda")]
    pub const MATMUL_RTOL: f32 = 5e-3;
}
pub use tolerance::*;

/// Attention probabilities: a softmax turns an absolute error δ of the scores into a relative
/// error of up to 2δ of each probability, and a score `q·k` carries the relative matmul error of
/// both `q` and `k` (about 2 × `MATMUL_RTOL` for scores of order one). Allowed per element on top
/// of `ATTENTION_ATOL`: this share of the reference probability (zero where matmuls round at
/// f32). Measured on an H200 (bench/results/gpu/README.md): up to 2.0% at layers 2–3 of the
/// fixtures, where the largest-magnitude rule allowed 3.4e-3 for a 5.3e-3 deviation at p = 0.27.
pub const SOFTMAX_RTOL: f32 = 4.0 * MATMUL_RTOL;

/// One case of a reference file written by `xtask/fixtures/make_llava_fixtures.py`.
#[derive(Debug, Clone)]
pub struct ReferenceCase {
    pub name: String,
    pub image: Option<String>,
    pub prompt_ids: Vec<u32>,
    pub greedy_ids: Vec<u32>,
}

/// Reference tensors and ids for one fixture model.
pub struct Reference {
    tensors: TensorSource,
    pub cases: Vec<ReferenceCase>,
    pub transformers_version: String,
}

impl Reference {
    pub fn load(model: &str) -> Self {
        let dir = fixtures().join("reference");
        let mut tensors = TensorSource::default();
        tensors.add_safetensors(&dir.join(format!("{model}.safetensors"))).expect("reference tensors");
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{model}.json"))).expect("reference json"))
                .expect("valid json");
        let ids =
            |v: &serde_json::Value| v.as_array().expect("id list").iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let cases = meta["cases"]
            .as_object()
            .expect("cases")
            .iter()
            .map(|(name, c)| ReferenceCase {
                name: name.clone(),
                image: c["image"].as_str().map(String::from),
                prompt_ids: ids(&c["prompt_ids"]),
                greedy_ids: ids(&c["greedy_ids"]),
            })
            .collect();
        Self { tensors, cases, transformers_version: meta["transformers"].as_str().unwrap_or("?").to_string() }
    }

    /// `(values, shape)` of `{case}.{name}`.
    pub fn tensor(&self, case: &str, name: &str) -> (Vec<f32>, Vec<usize>) {
        let key = format!("{case}.{name}");
        let raw = self.tensors.get(&key).unwrap_or_else(|| panic!("reference has no {key}"));
        (raw.read_f32(&key).expect("readable"), raw.shape.clone())
    }
}

/// Largest absolute difference; panics on a length mismatch.
pub fn max_abs_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

/// Asserts `|got - want| ≤ atol + MATMUL_RTOL · max|want|` element-wise (the relative term is
/// zero except on TF32 matmuls), naming the largest deviation.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32) {
    let scale = largest_magnitude(want);
    assert_within(what, got, want, |_| atol + MATMUL_RTOL * scale);
}

/// Asserts `|got - want| ≤ ATTENTION_ATOL + SOFTMAX_RTOL · want` element-wise for attention
/// probabilities.
pub fn assert_close_probabilities(what: &str, got: &[f32], want: &[f32]) {
    assert_within(what, got, want, |p| ATTENTION_ATOL + SOFTMAX_RTOL * p.abs());
}

fn largest_magnitude(values: &[f32]) -> f32 {
    values.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// Asserts `|got_i - want_i| ≤ allowed(want_i)` for every element, naming the element that
/// exceeds its allowance most (or comes closest to it).
fn assert_within(what: &str, got: &[f32], want: &[f32], allowed: impl Fn(f32) -> f32) {
    let diff = max_abs_diff(got, want);
    let deviation = |i: usize| (got[i] - want[i]).abs();
    let excess = |i: usize| deviation(i) - allowed(want[i]);
    let worst = (0..got.len()).max_by(|&a, &b| excess(a).total_cmp(&excess(b))).unwrap_or(0);
    let around = worst.saturating_sub(3)..(worst + 4).min(got.len());
    // Printed for every comparison, so that `--nocapture` logs the measured deviations.
    eprintln!(
        "parity: {what}: max |diff| {diff:.3e} (largest |value| {:.2}); tightest: {:.3e} allowed {:.1e} at index {worst}",
        largest_magnitude(want),
        deviation(worst),
        allowed(want[worst])
    );
    assert!(
        excess(worst) <= 0.0,
        "{what}: |diff| {:.3e} exceeds the allowed {:.1e} at index {worst} of {}; got {:?}, want {:?} around it",
        deviation(worst),
        allowed(want[worst]),
        got.len(),
        &got[around.clone()],
        &want[around]
    );
}
