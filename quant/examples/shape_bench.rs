//! Packed prompt-path throughput at the 2B model's matrix shapes and at llama.cpp's
//! `test-backend-ops` MUL_MAT shape, one thread, 512 tokens, best of 3 runs.
//! `cargo run --release --example shape_bench -p rgemma-quant [-- TYPE...]`
use rgemma_quant::packed::{self, bench};
use rgemma_quant::GgmlType;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut types: Vec<GgmlType> = args.iter().filter_map(|a| GgmlType::from_name(a)).collect();
    if types.is_empty() {
        types = vec![GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K];
    }
    // (rows, n): x/y/out/q/o, gate/up, down, llama.cpp's case.
    let shapes = [(2560, 2560), (7680, 2560), (2560, 7680), (4096, 14336)];
    for ty in types.into_iter().filter(|t| packed::supports(*t)) {
        let line: Vec<String> = shapes
            .iter()
            .map(|&(rows, n)| {
                let (_, gops) = bench::bench_gemm(ty, n, rows, 512, 1, 3);
                format!("{rows}x{n}: {gops:.0}")
            })
            .collect();
        println!("{ty} Gop/s, 1 thread, 512 tokens: {}", line.join(", "));
    }
}
