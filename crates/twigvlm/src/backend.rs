//! Run-time backend selection. Model code is generic over `B: Backend`; this is the one place that
//! names concrete backends.

use burn::backend::Autodiff;
use burn::prelude::Backend;
use burn::tensor::backend::AutodiffBackend;

/// Backends the binary can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Pure-Rust CPU backend (always available).
    Flex,
    /// Vulkan / Metal / DX12 through wgpu (cargo feature `wgpu`).
    Wgpu,
    /// NVIDIA CUDA (cargo feature `cuda`).
    Cuda,
}

/// How hard the GPU backends (cubecl) search for the fastest kernels of each new tensor shape.
/// Each new shape costs a benchmark of every candidate kernel: on short runs with many shapes
/// (training on variable-length batches) `minimal` avoids spending the run tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GpuAutotune {
    Minimal,
    Balanced,
    Extensive,
    Full,
}

/// Sets the GPU runtime's options; call once, before any GPU work. A `cubecl.toml` in the working
/// directory is read first and the arguments override it. No-op without a GPU backend.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub fn configure_gpu(autotune: GpuAutotune) {
    use cubecl_common::config::RuntimeConfig;
    use cubecl_runtime::config::autotune::AutotuneLevel;
    use cubecl_runtime::config::CubeClRuntimeConfig;

    let mut config = CubeClRuntimeConfig::from_current_dir();
    config.autotune.level = match autotune {
        GpuAutotune::Minimal => AutotuneLevel::Minimal,
        GpuAutotune::Balanced => AutotuneLevel::Balanced,
        GpuAutotune::Extensive => AutotuneLevel::Extensive,
        GpuAutotune::Full => AutotuneLevel::Full,
    };
    CubeClRuntimeConfig::set(config);
}

/// Sets the GPU runtime's options; call once, before any GPU work. No-op without a GPU backend.
#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
pub fn configure_gpu(_autotune: GpuAutotune) {}

/// Work to run on whichever backend was chosen.
pub trait BackendJob {
    type Output;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output;
}

/// Training work: runs on the chosen backend wrapped in burn's autodiff.
pub trait AutodiffJob {
    type Output;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

struct WithAutodiff<J>(J);

impl<J: AutodiffJob> BackendJob for WithAutodiff<J> {
    type Output = J::Output;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        self.0.run::<Autodiff<B>>(device)
    }
}

/// The backend was not compiled into this binary.
#[derive(Debug, thiserror::Error)]
#[error("backend `{backend}` is not compiled into this binary; rebuild with `--features {feature}`")]
pub struct BackendUnavailable {
    pub backend: &'static str,
    pub feature: &'static str,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Flex => "flex",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }

    /// Runs `job` on this backend's default device.
    pub fn run<J: BackendJob>(self, job: J) -> Result<J::Output, BackendUnavailable> {
        match self {
            BackendKind::Flex => Ok(job.run::<burn::backend::Flex>(Default::default())),
            BackendKind::Wgpu => run_wgpu(job),
            BackendKind::Cuda => run_cuda(job),
        }
    }

    /// Runs training `job` on this backend with autodiff.
    pub fn run_autodiff<J: AutodiffJob>(self, job: J) -> Result<J::Output, BackendUnavailable> {
        self.run(WithAutodiff(job))
    }
}

#[cfg(feature = "wgpu")]
fn run_wgpu<J: BackendJob>(job: J) -> Result<J::Output, BackendUnavailable> {
    Ok(job.run::<burn::backend::Wgpu>(Default::default()))
}

#[cfg(not(feature = "wgpu"))]
fn run_wgpu<J: BackendJob>(_job: J) -> Result<J::Output, BackendUnavailable> {
    Err(BackendUnavailable { backend: "wgpu", feature: "wgpu" })
}

#[cfg(feature = "cuda")]
fn run_cuda<J: BackendJob>(job: J) -> Result<J::Output, BackendUnavailable> {
    Ok(job.run::<burn::backend::Cuda>(Default::default()))
}

#[cfg(not(feature = "cuda"))]
fn run_cuda<J: BackendJob>(_job: J) -> Result<J::Output, BackendUnavailable> {
    Err(BackendUnavailable { backend: "cuda", feature: "cuda" })
}
