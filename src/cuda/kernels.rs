//! Device buffers and the compiled kernels with typed launch wrappers (one per `extern "C"`
//! kernel of `cuda/*.cu`; argument lists mirror the kernel signatures exactly).
//!
//! Buffers are passed to kernels as raw device addresses (`u64`), computed once at
//! allocation: the forward pass offsets into them freely and the stream orders all work.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig};

use super::compile::{load_module, SOURCES};
use super::cu_err;
use super::device::Device;
use crate::Result;

/// A device allocation and its address.
pub struct DevBuf {
    mem: CudaSlice<u8>,
    /// Device address of byte 0.
    pub ptr: u64,
    pub bytes: usize,
}

impl DevBuf {
    /// `bytes` zeroed bytes (at least 1, so that every buffer has an address).
    pub fn zeros(stream: &Arc<CudaStream>, bytes: usize) -> Result<DevBuf> {
        let mem = stream
            .alloc_zeros::<u8>(bytes.max(1))
            .map_err(|e| cu_err(&format!("alloc {bytes} bytes"), e))?;
        let ptr = {
            use cudarc::driver::DevicePtr;
            let (p, _sync) = mem.device_ptr(stream);
            p
        };
        Ok(DevBuf { mem, ptr, bytes })
    }

    pub fn from_bytes(stream: &Arc<CudaStream>, data: &[u8]) -> Result<DevBuf> {
        let mut b = DevBuf::zeros(stream, data.len())?;
        b.upload(stream, 0, data)?;
        Ok(b)
    }

    pub fn from_f32(stream: &Arc<CudaStream>, data: &[f32]) -> Result<DevBuf> {
        DevBuf::from_bytes(stream, f32_bytes(data))
    }

    /// Copies `data` to byte offset `off`.
    pub fn upload(&mut self, stream: &Arc<CudaStream>, off: usize, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut view = self.mem.slice_mut(off..off + data.len());
        stream
            .memcpy_htod(data, &mut view)
            .map_err(|e| cu_err("upload", e))
    }

    /// Copies bytes `off .. off + dst.len()` to the host and waits for them.
    pub fn download(&self, stream: &Arc<CudaStream>, off: usize, dst: &mut [u8]) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        let view = self.mem.slice(off..off + dst.len());
        stream
            .memcpy_dtoh(&view, dst)
            .map_err(|e| cu_err("download", e))?;
        stream.synchronize().map_err(|e| cu_err("synchronize", e))
    }

    /// Zeroes the whole buffer.
    pub fn zero(&mut self, stream: &Arc<CudaStream>) -> Result<()> {
        stream
            .memset_zeros(&mut self.mem)
            .map_err(|e| cu_err("memset", e))
    }

    /// Address of the f32 element `i`.
    pub fn f32_at(&self, i: usize) -> u64 {
        self.ptr + 4 * i as u64
    }
}

pub fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte is a valid u8; the length is scaled.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

pub fn f32_bytes_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: every bit pattern is a valid f32, so writing arbitrary bytes is sound.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v)) }
}

pub fn i32_bytes(v: &[i32]) -> &[u8] {
    // SAFETY: as f32_bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// Every kernel, loaded from the compiled modules.
pub struct Kernels {
    pub quantize_q8_1: CudaFunction,
    pub mmvq_q4_0: CudaFunction,
    pub mmvq_q8_0: CudaFunction,
    pub mmvq_q4_k: CudaFunction,
    pub mmvq_q6_k: CudaFunction,
    pub matvec_any: CudaFunction,
    pub gemm_tiled: CudaFunction,
    pub dequantize_rows: CudaFunction,
    pub embed_rows: CudaFunction,
    pub rmsnorm_rows: CudaFunction,
    pub add_in_place: CudaFunction,
    pub gelu_in_place: CudaFunction,
    pub geglu_in_place: CudaFunction,
    pub mul_in_place: CudaFunction,
    pub softcap_in_place: CudaFunction,
    pub rope_rows: CudaFunction,
    pub argmax_rows: CudaFunction,
    pub conv1d_segments: CudaFunction,
    pub rglru_segments: CudaFunction,
    pub attend_rows: CudaFunction,
    pub ring_write: CudaFunction,
}

/// Bytes of one q8_1 activation block (`q8_1_block` in common.cuh).
pub const Q8_1_BLOCK_BYTES: usize = 40;
/// Activation rows the mmvq / matvec kernels take at once.
pub const MMV_MAX_COLS: usize = 8;

impl Kernels {
    /// Compiles (or loads from the cache) every kernel file for the device.
    pub fn load(dev: &Device) -> Result<Kernels> {
        let mut modules = Vec::new();
        for (name, src) in SOURCES {
            modules.push((name, load_module(&dev.ctx, name, src, dev.info.arch)?));
        }
        let f = |file: &str, kernel: &str| -> Result<CudaFunction> {
            let m = &modules
                .iter()
                .find(|(n, _)| *n == file)
                .expect("kernel file listed in SOURCES")
                .1;
            m.load_function(kernel)
                .map_err(|e| cu_err(&format!("kernel {kernel} in {file}"), e))
        };
        Ok(Kernels {
            quantize_q8_1: f("quantize.cu", "quantize_q8_1")?,
            mmvq_q4_0: f("mmvq.cu", "mmvq_q4_0")?,
            mmvq_q8_0: f("mmvq.cu", "mmvq_q8_0")?,
            mmvq_q4_k: f("mmvq.cu", "mmvq_q4_k")?,
            mmvq_q6_k: f("mmvq.cu", "mmvq_q6_k")?,
            matvec_any: f("matmul.cu", "matvec_any")?,
            gemm_tiled: f("matmul.cu", "gemm_tiled")?,
            dequantize_rows: f("matmul.cu", "dequantize_rows")?,
            embed_rows: f("ops.cu", "embed_rows")?,
            rmsnorm_rows: f("ops.cu", "rmsnorm_rows")?,
            add_in_place: f("ops.cu", "add_in_place")?,
            gelu_in_place: f("ops.cu", "gelu_in_place")?,
            geglu_in_place: f("ops.cu", "geglu_in_place")?,
            mul_in_place: f("ops.cu", "mul_in_place")?,
            softcap_in_place: f("ops.cu", "softcap_in_place")?,
            rope_rows: f("ops.cu", "rope_rows")?,
            argmax_rows: f("ops.cu", "argmax_rows")?,
            conv1d_segments: f("recurrent.cu", "conv1d_segments")?,
            rglru_segments: f("recurrent.cu", "rglru_segments")?,
            attend_rows: f("attention.cu", "attend_rows")?,
            ring_write: f("attention.cu", "ring_write")?,
        })
    }
}

/// Launch configuration helper.
pub fn cfg(grid: (u32, u32, u32), block: u32, shared: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (block, 1, 1),
        shared_mem_bytes: shared,
    }
}

/// Grid size for a grid-stride elementwise kernel over `n` values.
pub fn grid_1d(n: usize) -> (u32, u32, u32) {
    (n.div_ceil(256).clamp(1, 65535) as u32, 1, 1)
}

/// Launches `func` with the given arguments (each a `&` to a DeviceRepr value: u64
/// addresses, i32, f32).
#[macro_export]
#[doc(hidden)]
macro_rules! cuda_launch {
    ($stream:expr, $func:expr, $cfg:expr, $($arg:expr),* $(,)?) => {{
        let mut b = $stream.launch_builder(&$func);
        $crate::cuda_launch!(@push b; $($arg),*);
        // SAFETY: the argument list matches the kernel's signature (see cuda/*.cu), every
        // address points into a live DevBuf of the size the kernel indexes (checked by the
        // caller's shape logic), and all work is ordered on this one stream.
        unsafe { b.launch($cfg) }
            .map(|_| ())
            .map_err(|e| $crate::cuda::cu_err(concat!("launch ", stringify!($func)), e))
    }};
    // Each argument gets its own `let`, so that temporaries like `&(n as i32)` live until
    // the launch.
    (@push $b:ident; $head:expr $(, $tail:expr)*) => {
        let arg = $head;
        $b.arg(arg);
        $crate::cuda_launch!(@push $b; $($tail),*);
    };
    (@push $b:ident;) => {};
}

pub use crate::cuda_launch as launch;
