//! The process's own memory figures, for the load report and the benchmarks: fields of
//! Linux's `/proc/self/status` (`VmRSS`, `VmHWM`) and `/proc/meminfo` (`MemAvailable`).
//! Elsewhere (macOS, Windows) every figure is `None` and callers print "n/a".

/// A field of `/proc/self/status` in KiB, e.g. `"VmHWM"` (the peak resident set).
pub fn status_kib(field: &str) -> Option<u64> {
    proc_kib("/proc/self/status", field)
}

/// A field of `/proc/meminfo` in KiB, e.g. `"MemAvailable"`.
pub fn meminfo_kib(field: &str) -> Option<u64> {
    proc_kib("/proc/meminfo", field)
}

/// The process's resident set now, in bytes.
pub fn resident_bytes() -> Option<u64> {
    status_kib("VmRSS").map(|kib| kib * 1024)
}

fn proc_kib(file: &str, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(file).ok()?;
    let line = s.lines().find(|l| l.split(':').next() == Some(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn resident_set_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let rss = super::resident_bytes().unwrap();
            // A test binary with its code mapped is at least a megabyte resident.
            assert!(rss > 1 << 20, "{rss}");
            assert!(super::status_kib("VmHWM").unwrap() * 1024 >= rss);
            assert!(super::meminfo_kib("MemAvailable").unwrap() > 0);
            assert_eq!(super::status_kib("NoSuchField"), None);
        } else {
            assert_eq!(super::resident_bytes(), None);
        }
    }
}
