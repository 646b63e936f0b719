//! Kernel compilation: NVRTC turns each `cuda/*.cu` file (embedded in the binary) into a
//! CUBIN for the present GPU's architecture at first use, and the CUBIN is cached on disk,
//! keyed by a hash of the sources, the options, the NVRTC version and the architecture.
//!
//! A CUBIN (SASS for `sm_XY`) rather than PTX is loaded so that a newer NVRTC than the driver
//! (allowed by CUDA's minor-version compatibility) never needs the driver's PTX JIT. The key
//! leaves out the NVRTC version, so a cache filled elsewhere ([`precompile`]) serves a
//! machine that has the driver but no NVRTC.

use std::ffi::{c_char, c_int, CString};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaModule};
use cudarc::nvrtc::sys as nv;
use cudarc::nvrtc::Ptx;

use super::cu_err;
use crate::{Error, Result};

/// Headers every kernel file may `#include` by name.
pub const HEADERS: [(&str, &str); 1] = [("common.cuh", include_str!("../../cuda/common.cuh"))];

/// The kernel files, by name.
pub const SOURCES: [(&str, &str); 6] = [
    ("quantize.cu", include_str!("../../cuda/quantize.cu")),
    ("mmvq.cu", include_str!("../../cuda/mmvq.cu")),
    ("matmul.cu", include_str!("../../cuda/matmul.cu")),
    ("ops.cu", include_str!("../../cuda/ops.cu")),
    ("recurrent.cu", include_str!("../../cuda/recurrent.cu")),
    ("attention.cu", include_str!("../../cuda/attention.cu")),
];

/// NVRTC options besides the architecture; scripts/nvrtc_crosscheck.py uses the same.
pub const NVRTC_OPTIONS: [&str; 2] = ["--std=c++17", "--fmad=true"];

/// FNV-1a, 64 bit: a stable hash for cache keys (std's hasher may change between releases).
fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// `$RGEMMA_CUDA_CACHE`, else `$XDG_CACHE_HOME/rgemma`, else `~/.cache/rgemma`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("RGEMMA_CUDA_CACHE") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("rgemma"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("rgemma"))
}

/// Whether libnvrtc can be loaded (cudarc panics on the first call into a missing library).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { nv::is_culib_present() }
}

fn nvrtc_missing() -> Error {
    Error::Unsupported(
        "the NVRTC library (libnvrtc.so) was not found; install the CUDA toolkit or the \
         nvidia-cuda-nvrtc-cu12 wheel and add its lib folder to LD_LIBRARY_PATH"
            .into(),
    )
}

/// The NVRTC library version (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_present() {
        return Err(nvrtc_missing());
    }
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: both out-pointers are valid for the call.
    let rc = unsafe { nv::nvrtcVersion(&mut major, &mut minor) };
    check(rc, "nvrtcVersion")?;
    Ok((major, minor))
}

fn check(rc: nv::nvrtcResult, what: &str) -> Result<()> {
    if rc == nv::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(Error::Unsupported(format!("NVRTC {what}: {rc:?}")))
    }
}

/// Compiles `src` for `sm_{arch}` and returns the CUBIN. The error carries NVRTC's log.
pub fn compile_cubin(name: &str, src: &str, arch: (i32, i32)) -> Result<Vec<u8>> {
    if !nvrtc_present() {
        return Err(nvrtc_missing());
    }
    let cstr = |s: &str| {
        CString::new(s).map_err(|_| Error::InvalidArgument(format!("{name}: NUL in source")))
    };
    let src_c = cstr(src)?;
    let name_c = cstr(name)?;
    let hdr_src: Vec<CString> = HEADERS
        .iter()
        .map(|(_, s)| cstr(s))
        .collect::<Result<_>>()?;
    let hdr_name: Vec<CString> = HEADERS
        .iter()
        .map(|(n, _)| cstr(n))
        .collect::<Result<_>>()?;
    let hdr_src_p: Vec<*const c_char> = hdr_src.iter().map(|s| s.as_ptr()).collect();
    let hdr_name_p: Vec<*const c_char> = hdr_name.iter().map(|s| s.as_ptr()).collect();
    let mut opts: Vec<CString> = NVRTC_OPTIONS
        .iter()
        .map(|o| cstr(o))
        .collect::<Result<_>>()?;
    opts.push(cstr(&format!(
        "--gpu-architecture=sm_{}{}",
        arch.0, arch.1
    ))?);
    let opts_p: Vec<*const c_char> = opts.iter().map(|s| s.as_ptr()).collect();

    let mut prog: nv::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: every pointer refers to a NUL-terminated string owned above and alive for the
    // whole function; the arrays have the lengths passed.
    unsafe {
        check(
            nv::nvrtcCreateProgram(
                &mut prog,
                src_c.as_ptr(),
                name_c.as_ptr(),
                hdr_src_p.len() as c_int,
                hdr_src_p.as_ptr(),
                hdr_name_p.as_ptr(),
            ),
            "create program",
        )?;
    }
    // SAFETY: `prog` was created above and is destroyed exactly once, below.
    let result = unsafe {
        let rc = nv::nvrtcCompileProgram(prog, opts_p.len() as c_int, opts_p.as_ptr());
        let log = program_log(prog);
        if rc != nv::nvrtcResult::NVRTC_SUCCESS {
            Err(Error::Unsupported(format!(
                "NVRTC could not compile {name} for sm_{}{}: {rc:?}\n{log}",
                arch.0, arch.1
            )))
        } else {
            let mut size = 0usize;
            check(nv::nvrtcGetCUBINSize(prog, &mut size), "cubin size").and_then(|_| {
                let mut cubin = vec![0u8; size];
                check(
                    nv::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char),
                    "get cubin",
                )
                .map(|_| cubin)
            })
        }
    };
    // SAFETY: created above, not used afterwards.
    unsafe {
        nv::nvrtcDestroyProgram(&mut prog);
    }
    result
}

/// The compile log of `prog` (empty when there is none).
///
/// # Safety
/// `prog` must be a live program.
unsafe fn program_log(prog: nv::nvrtcProgram) -> String {
    let mut size = 0usize;
    if nv::nvrtcGetProgramLogSize(prog, &mut size) != nv::nvrtcResult::NVRTC_SUCCESS || size == 0 {
        return String::new();
    }
    let mut buf = vec![0u8; size];
    if nv::nvrtcGetProgramLog(prog, buf.as_mut_ptr() as *mut c_char)
        != nv::nvrtcResult::NVRTC_SUCCESS
    {
        return String::new();
    }
    String::from_utf8_lossy(&buf)
        .trim_end_matches('\0')
        .trim()
        .to_string()
}

/// Cache file name of one kernel file's CUBIN.
fn cache_key(name: &str, src: &str, arch: (i32, i32)) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    h = fnv1a(h, src.as_bytes());
    for (n, s) in HEADERS {
        h = fnv1a(h, n.as_bytes());
        h = fnv1a(h, s.as_bytes());
    }
    for o in NVRTC_OPTIONS {
        h = fnv1a(h, o.as_bytes());
    }
    let stem = name.trim_end_matches(".cu");
    format!("{stem}-{h:016x}-sm_{}{}.cubin", arch.0, arch.1)
}

/// Loads one kernel file into `ctx`: from the disk cache when present, else compiled (and
/// then cached; a cache that cannot be written is not an error).
pub fn load_module(
    ctx: &Arc<CudaContext>,
    name: &str,
    src: &str,
    arch: (i32, i32),
) -> Result<Arc<CudaModule>> {
    let key = cache_key(name, src, arch);
    let cached = cache_dir().map(|d| d.join(&key));
    if let Some(path) = &cached {
        if let Ok(bytes) = std::fs::read(path) {
            if let Ok(m) = ctx.load_module(Ptx::from_binary(bytes)) {
                return Ok(m);
            }
            // A corrupt or stale file: compile again and overwrite it.
        }
    }
    if !nvrtc_present() {
        let where_ = cached.map_or("no cache folder".into(), |p| p.display().to_string());
        return Err(Error::Unsupported(format!(
            "the NVRTC library (libnvrtc.so) was not found and no compiled kernel is cached \
             ({where_})"
        )));
    }
    let cubin = compile_cubin(name, src, arch)?;
    if let Some(path) = &cached {
        let _ = write_atomic(path, &cubin);
    }
    ctx.load_module(Ptx::from_binary(cubin))
        .map_err(|e| cu_err(&format!("loading {name}"), e))
}

/// Compiles every kernel file for `sm_{arch}` into `dir` under its cache name, e.g. to ship
/// a filled `RGEMMA_CUDA_CACHE` to a machine without NVRTC. Returns the files written.
pub fn precompile(arch: (i32, i32), dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (name, src) in SOURCES {
        let cubin = compile_cubin(name, src, arch)?;
        let path = dir.join(cache_key(name, src, arch));
        write_atomic(&path, &cubin).map_err(|e| Error::Io {
            path: path.clone(),
            source: e,
        })?;
        out.push(path);
    }
    Ok(out)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_changes_with_source_and_arch() {
        let a = cache_key("x.cu", "src", (9, 0));
        assert_ne!(a, cache_key("x.cu", "src2", (9, 0)));
        assert_ne!(a, cache_key("x.cu", "src", (8, 0)));
        assert!(a.starts_with("x-") && a.ends_with("-sm_90.cubin"), "{a}");
    }

    #[test]
    fn sources_list_every_kernel_file() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".cu"))
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = SOURCES.iter().map(|(n, _)| n.to_string()).collect();
        listed.sort();
        assert_eq!(on_disk, listed);
    }

    /// Every kernel file compiles to a CUBIN for sm_80 and sm_90 through this module (needs
    /// only libnvrtc, e.g. the wheel's folder on LD_LIBRARY_PATH; skipped without it). With
    /// `RG_CUDA_PRECOMPILE_DIR` set, the CUBINs are left there as a kernel cache.
    #[test]
    fn every_kernel_file_compiles_to_cubin() {
        if !nvrtc_present() {
            eprintln!("skipped: libnvrtc not found");
            return;
        }
        let keep = std::env::var_os("RG_CUDA_PRECOMPILE_DIR").map(PathBuf::from);
        let dir = keep.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("rgemma-cubin-test-{}", std::process::id()))
        });
        for arch in [(8, 0), (9, 0)] {
            let files = precompile(arch, &dir).unwrap();
            assert_eq!(files.len(), SOURCES.len());
            for f in files {
                let cubin = std::fs::read(&f).unwrap();
                assert_eq!(&cubin[..4], b"\x7fELF", "{}", f.display());
            }
        }
        if keep.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
