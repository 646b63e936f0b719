//! CUDA backend (cargo feature `cuda`).
//!
//! - The CUDA driver and NVRTC are loaded at run time (cudarc's dynamic loading): a build
//!   needs no toolkit, and a machine without them gets an error from [`CudaModel::new`] that
//!   callers turn into a fallback to the CPU ([`fallback_message`]).
//! - Kernels are the `cuda/*.cu` files, compiled with NVRTC for the present GPU at first use
//!   and cached on disk ([`compile`]).
//! - [`CudaModel`] holds the weights, uploaded once from the memory map in their stored
//!   (quantized) form; [`CudaBatch`] holds the state of `n_seq` sequences (every state array
//!   has a sequence dimension) and runs the forward pass for a prompt chunk of one sequence or
//!   one decode token each for several sequences; [`CudaOffload`] plugs a one-sequence batch
//!   into [`crate::model::Context`].
//!
//! Environment: `RGEMMA_CUDA_CACHE` (compiled kernels; default `$XDG_CACHE_HOME/rgemma` or
//! `~/.cache/rgemma`), `RGEMMA_CUDA_GRAPHS=1` (replay decode steps from CUDA graphs).
//!
//! Status: written on a machine without a GPU. Every kernel file compiles with NVRTC for
//! sm_80/sm_90 in CI (scripts/nvrtc_crosscheck.py); results on a GPU are checked by
//! scripts/gpu-check.sh (tests/cuda_*.rs against the CPU reference and the official fixtures).

pub mod compile;
mod device;
mod forward;
mod kernels;
pub mod testing;
mod weights;

use std::fmt::Display;

pub use device::{probe, Device, DeviceInfo};
pub use forward::{CudaBatch, CudaOffload, HeadRows, MatmulKernel};
pub use kernels::{DevBuf, Kernels};
pub use weights::{is_supported_type, CudaModel, GpuMatrix};

use crate::Error;

/// A driver/NVRTC failure as an rgemma error.
pub(crate) fn cu_err(what: &str, e: impl Display) -> Error {
    Error::Unsupported(format!("CUDA {what}: {e}"))
}

/// The one line a tool prints when it was asked for the GPU and falls back to the CPU.
pub fn fallback_message(reason: &impl Display) -> String {
    format!("rgemma: CUDA unavailable ({reason}); running on the CPU")
}
