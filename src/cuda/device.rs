//! Opening the GPU: checks that the driver and NVRTC libraries can be loaded (cudarc panics
//! when a missing library is first used, so this is asked before anything else), creates the
//! context and stream and reads the architecture.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream};

use super::cu_err;
use crate::{Error, Result};

/// What [`probe`] found.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub name: String,
    /// Compute capability (major, minor), e.g. (9, 0) for H100.
    pub arch: (i32, i32),
    pub total_mem: usize,
    /// NVRTC version; `None` when libnvrtc is absent (then only cached kernels load).
    pub nvrtc: Option<(i32, i32)>,
}

/// An opened GPU: context, the one stream all work goes to, and its properties.
pub struct Device {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub info: DeviceInfo,
}

impl Device {
    /// Opens GPU `ordinal`. Errors (never panics) when the driver library is absent, no GPU
    /// is present, or the GPU is older than sm_61 (dp4a). A missing NVRTC is reported when
    /// the kernels are loaded (a filled kernel cache does without it).
    pub fn open(ordinal: usize) -> Result<Device> {
        // SAFETY: these only try to dlopen the libraries.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::Unsupported(
                "the CUDA driver library (libcuda.so) was not found".into(),
            ));
        }
        let n = CudaContext::device_count().map_err(|e| cu_err("init", e))?;
        if n <= 0 {
            return Err(Error::Unsupported("no CUDA device found".into()));
        }
        if ordinal >= n as usize {
            return Err(Error::InvalidArgument(format!(
                "CUDA device {ordinal} requested, {n} present"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| cu_err("context", e))?;
        // One stream and no cross-stream sharing: the per-launch event bookkeeping is not
        // needed. SAFETY: all buffers are used only on `stream` below.
        unsafe { ctx.disable_event_tracking() };
        // A created stream rather than the legacy default one: only those can be captured
        // into CUDA graphs.
        let stream = ctx.new_stream().map_err(|e| cu_err("stream", e))?;
        let arch = ctx
            .compute_capability()
            .map_err(|e| cu_err("compute capability", e))?;
        if arch < (6, 1) {
            return Err(Error::Unsupported(format!(
                "GPU compute capability {}.{} is below 6.1 (dp4a)",
                arch.0, arch.1
            )));
        }
        let info = DeviceInfo {
            name: ctx.name().unwrap_or_else(|_| "unknown GPU".into()),
            arch,
            total_mem: ctx.total_mem().unwrap_or(0),
            nvrtc: super::compile::nvrtc_version().ok(),
        };
        Ok(Device { ctx, stream, info })
    }
}

/// Opens GPU 0 and reports what it is, or why there is none.
pub fn probe() -> Result<DeviceInfo> {
    Device::open(0).map(|d| d.info)
}
