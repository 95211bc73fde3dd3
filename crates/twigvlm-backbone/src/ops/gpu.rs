//! The GPU backends (CUDA, wgpu) run the default bodies of [`DecodeOps`] until they have kernels
//! of their own: a plain `CubeBackend` and the fusing `Fusion` wrapper burn builds around it.

use burn::tensor::backend::DeviceOps;
use burn_cubecl::cubecl::server::ComputeServer;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_fusion::{Fusion, FusionBackend};

use super::DecodeOps;

impl<R, F, I, BT> DecodeOps for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    R::Server: ComputeServer,
    R::Device: DeviceOps,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
}

impl<B: FusionBackend + DecodeOps> DecodeOps for Fusion<B> {}
