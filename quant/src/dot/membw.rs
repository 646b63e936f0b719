//! Streaming-read kernel for measuring memory read bandwidth (the roofline that bounds
//! decode speed). `rg-membw` and `rg-bench` time it over a buffer much larger than the
//! caches.

/// Reads every byte of `buf` once and returns a checksum (wrapping sum of its
/// little-endian u64 words) so the reads cannot be optimised away.
///
/// Eight independent accumulators keep the loop limited by loads, not by the add chain;
/// the compiler vectorises it with the baseline SIMD of the target (SSE2 / NEON), whose
/// load throughput is far above DRAM bandwidth.
pub fn read_checksum(buf: &[u8]) -> u64 {
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
    }
}
