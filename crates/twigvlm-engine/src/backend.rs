//! Run-time backend selection. Model code is generic over `B: DecodeOps`; this is the one place that
//! names concrete backends.

use burn::backend::Autodiff;
use serde_with::{DeserializeFromStr, SerializeDisplay};
use strum::{Display, EnumMessage, EnumString, VariantArray};
use twigvlm_backbone::ops::{DecodeAutodiff, DecodeOps};

/// Backends a build can run on.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Display,
    EnumString,
    VariantArray,
    EnumMessage,
    SerializeDisplay,
    DeserializeFromStr,
)]
#[strum(serialize_all = "lowercase")]
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
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Display,
    EnumString,
    VariantArray,
    EnumMessage,
    SerializeDisplay,
    DeserializeFromStr,
)]
#[strum(serialize_all = "lowercase")]
pub enum GpuAutotune {
    /// The fewest candidates: fastest to start, slowest kernels.
    Minimal,
    /// cubecl's default.
    Balanced,
    /// More candidates per shape.
    Extensive,
    /// Every candidate: slowest to start, fastest kernels.
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
    /// What the job returns.
    type Output;
    /// Runs the job on backend `B`, on `device`.
    fn run<B: DecodeOps>(self, device: B::Device) -> Self::Output;
}

/// Training work: runs on the chosen backend wrapped in burn's autodiff.
pub trait AutodiffJob {
    /// What the job returns.
    type Output;
    /// Runs the job on the autodiff backend `B`, on `device`.
    fn run<B: DecodeAutodiff>(self, device: B::Device) -> Self::Output;
}

struct WithAutodiff<J>(J);

impl<J: AutodiffJob> BackendJob for WithAutodiff<J> {
    type Output = J::Output;
    fn run<B: DecodeOps>(self, device: B::Device) -> Self::Output {
        self.0.run::<Autodiff<B>>(device)
    }
}

/// Floating-point type the model computes in.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Display,
    EnumString,
    VariantArray,
    EnumMessage,
    SerializeDisplay,
    DeserializeFromStr,
)]
#[strum(serialize_all = "lowercase")]
pub enum FloatDtype {
    /// 32-bit floats (every backend).
    F32,
    /// IEEE half precision (CUDA, most wgpu adapters).
    F16,
    /// bfloat16 (CUDA).
    Bf16,
}

/// Why a job cannot run where it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend was not compiled into this binary.
    #[error("backend `{backend}` is not compiled into this binary; rebuild with `--features {feature}`")]
    Unavailable {
        /// The backend asked for.
        backend: &'static str,
        /// The cargo feature that compiles it in.
        feature: &'static str,
    },
    /// The backend cannot compute in the dtype asked for.
    #[error("backend `{backend}` does not compute in {dtype} (it supports: {supported})")]
    Dtype {
        /// The backend asked for.
        backend: BackendKind,
        /// The dtype asked for.
        dtype: FloatDtype,
        /// The dtypes it does compute in.
        supported: &'static str,
    },
}

impl BackendKind {
    /// Whether the backend compiles a kernel for each new tensor shape (the GPU ones, through
    /// cubecl), so that batches are better padded to a few lengths.
    pub fn compiles_kernels_per_shape(self) -> bool {
        match self {
            BackendKind::Flex => false,
            BackendKind::Wgpu | BackendKind::Cuda => true,
        }
    }

    /// The dtype used when none is asked for: f16 on CUDA (tensor cores; every A100-class card
    /// has them), f32 elsewhere (flex is f32-only, and f16 shader support varies across wgpu
    /// adapters).
    pub fn default_dtype(self) -> FloatDtype {
        match self {
            BackendKind::Cuda => FloatDtype::F16,
            BackendKind::Flex | BackendKind::Wgpu => FloatDtype::F32,
        }
    }

    /// Runs `job` on this backend's default device in f32.
    pub fn run<J: BackendJob>(self, job: J) -> Result<J::Output, BackendError> {
        self.run_in(FloatDtype::F32, job)
    }

    /// Runs `job` on this backend's default device, computing in `dtype`.
    pub fn run_in<J: BackendJob>(self, dtype: FloatDtype, job: J) -> Result<J::Output, BackendError> {
        match (self, dtype) {
            (BackendKind::Flex, FloatDtype::F32) => Ok(job.run::<burn::backend::Flex>(Default::default())),
            (BackendKind::Flex, dtype) => {
                Err(BackendError::Dtype { backend: BackendKind::Flex, dtype, supported: "f32" })
            }
            (BackendKind::Wgpu, dtype) => run_wgpu(dtype, job),
            (BackendKind::Cuda, dtype) => run_cuda(dtype, job),
        }
    }

    /// Runs training `job` on this backend with autodiff (f32: optimiser state and gradients).
    pub fn run_autodiff<J: AutodiffJob>(self, job: J) -> Result<J::Output, BackendError> {
        self.run(WithAutodiff(job))
    }
}

#[cfg(feature = "wgpu")]
fn run_wgpu<J: BackendJob>(dtype: FloatDtype, job: J) -> Result<J::Output, BackendError> {
    use burn::backend::Wgpu;
    match dtype {
        FloatDtype::F32 => Ok(job.run::<Wgpu>(Default::default())),
        FloatDtype::F16 => Ok(job.run::<Wgpu<burn::tensor::f16>>(Default::default())),
        // WGSL has no bf16 type.
        FloatDtype::Bf16 => {
            Err(BackendError::Dtype { backend: BackendKind::Wgpu, dtype: FloatDtype::Bf16, supported: "f32, f16" })
        }
    }
}

#[cfg(not(feature = "wgpu"))]
fn run_wgpu<J: BackendJob>(_dtype: FloatDtype, _job: J) -> Result<J::Output, BackendError> {
    Err(BackendError::Unavailable { backend: "wgpu", feature: "wgpu" })
}

#[cfg(feature = "cuda")]
fn run_cuda<J: BackendJob>(dtype: FloatDtype, job: J) -> Result<J::Output, BackendError> {
    use burn::backend::Cuda;
    Ok(match dtype {
        FloatDtype::F32 => job.run::<Cuda>(Default::default()),
        FloatDtype::F16 => job.run::<Cuda<burn::tensor::f16>>(Default::default()),
        FloatDtype::Bf16 => job.run::<Cuda<burn::tensor::bf16>>(Default::default()),
    })
}

#[cfg(not(feature = "cuda"))]
fn run_cuda<J: BackendJob>(_dtype: FloatDtype, _job: J) -> Result<J::Output, BackendError> {
    Err(BackendError::Unavailable { backend: "cuda", feature: "cuda" })
}
