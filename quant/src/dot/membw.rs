//! Streaming-read kernel for measuring memory read bandwidth (the roofline that bounds
//! decode speed). `rg-membw` and `rg-bench` time it over a buffer much larger than the
//! caches.

/// Reads every byte of `buf` once and returns a checksum (wrapping sum of its
/// little-endian u64 words) so the reads cannot be optimised away.
///
/// On x86-64 with AVX2 the loop issues four 32-byte loads per 128 bytes (as few
/// instructions per byte as the dot kernels, so the out-of-order window holds as many
/// outstanding cache misses); elsewhere eight independent u64 accumulators, which the
/// compiler vectorises with the baseline SIMD of the target.
pub fn read_checksum(buf: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if super::Backend::detect().has_avx2() {
        // SAFETY: Avx2 is only detected on CPUs that have it.
        return unsafe { read_checksum_avx2(buf) };
    }
    read_checksum_portable(buf)
}

fn read_checksum_portable(buf: &[u8]) -> u64 {
    let mut acc = [0u64; 8];
    let mut chunks = buf.chunks_exact(64);
    for c in &mut chunks {
        for (k, a) in acc.iter_mut().enumerate() {
            let w = u64::from_le_bytes(c[8 * k..8 * k + 8].try_into().expect("8 bytes"));
            *a = a.wrapping_add(w);
        }
    }
    let tail: u64 = chunks.remainder().iter().map(|&b| b as u64).sum();
    acc.iter().fold(tail, |s, &a| s.wrapping_add(a))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn read_checksum_avx2(buf: &[u8]) -> u64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_si256(); 4];
    let mut chunks = buf.chunks_exact(128);
    for c in &mut chunks {
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: 32 bytes at 32k of a 128-byte chunk.
            let v = unsafe { _mm256_loadu_si256(c.as_ptr().add(32 * k) as *const __m256i) };
            *a = _mm256_add_epi64(*a, v);
        }
    }
    let mut lanes = [0u64; 4];
    let sum = _mm256_add_epi64(
        _mm256_add_epi64(acc[0], acc[1]),
        _mm256_add_epi64(acc[2], acc[3]),
    );
    // SAFETY: 32 bytes into a [u64; 4].
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, sum) };
    let rest = read_checksum_portable(chunks.remainder());
    lanes.iter().fold(rest, |s, &a| s.wrapping_add(a))
}

#[cfg(test)]
mod tests {
    #[test]
    fn checksum_counts_every_word() {
        let mut buf = vec![0u8; 1000];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let want = buf
            .chunks_exact(64)
            .flat_map(|c| c.chunks_exact(8))
            .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
            .fold(0u64, |s, w| s.wrapping_add(w))
            .wrapping_add(buf[960..].iter().map(|&b| b as u64).sum::<u64>());
        assert_eq!(super::read_checksum(&buf), want);
        assert_eq!(super::read_checksum_portable(&buf), want);
    }
}
