//! Packed kernel throughput (filled in with bench.rs).

fn main() {}
