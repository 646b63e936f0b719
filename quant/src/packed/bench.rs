//! Throughput measurement of the packed kernels (filled in below).
