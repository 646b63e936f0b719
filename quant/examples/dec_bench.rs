//! Packed vs stored one-column (decode) throughput from DRAM, 2 threads, 512 MiB of
//! weights, at the two row lengths of the 2B model (2560 and 7680): the number that says
//! whether a packed kernel keeps decoding memory-bound.
//! `cargo run --release --example dec_bench -p rgemma-quant`
use rgemma_quant::dot::Backend;
use rgemma_quant::packed::bench;
use rgemma_quant::GgmlType;
fn main() {
    for ty in [GgmlType::Q4K, GgmlType::Q6K, GgmlType::Q4_0] {
        for n in [2560usize, 7680] {
            let rows = ((512usize << 20) / ty.row_size(n as u64).unwrap() as usize) / 8 * 8;
            let p = bench::bench_packed_with(Backend::detect(), ty, n, rows, 1, 2, 3);
            let u = bench::bench_unpacked_with(Backend::detect(), ty, n, rows, 1, 2, 3);
            println!(
                "{ty} n={n} rows={rows}: packed {:.1} GB/s, stored {:.1} GB/s",
                p.gbps, u.gbps
            );
        }
    }
}
