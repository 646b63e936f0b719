//! Packed gemm throughput against the number of activation columns (decoding 1, 2, 4, ...
//! sequences together), with the weights streamed from DRAM or, for a small `MiB`, from cache:
//! where a few-column kernel stops being bound by memory and starts being bound by arithmetic.
//! `cargo run --release --example cols_bench -p rgemma-quant -- TYPE N MiB [THREADS]`
//! (`COLS=1,4,8` in the environment picks the column counts).
use rgemma_quant::packed::bench;
use rgemma_quant::GgmlType;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: cols_bench TYPE N MiB [THREADS]  (e.g. q4_0 2560 512 2)";
    let (Some(ty), Some(n), Some(mib)) = (
        args.first().and_then(|a| GgmlType::from_name(a)),
        args.get(1).and_then(|a| a.parse::<usize>().ok()),
        args.get(2).and_then(|a| a.parse::<usize>().ok()),
    ) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let threads = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1);
    let cols = std::env::var("COLS").unwrap_or_else(|_| "1,2,4,8,16,32,64,512".into());
    let row_bytes = ty.row_size(n as u64).expect("n a whole number of blocks") as usize;
    let rows = (mib << 20) / row_bytes / 8 * 8;
    for ncols in cols.split(',').filter_map(|c| c.parse::<usize>().ok()) {
        let (gbps, gops) = bench::bench_gemm(ty, n, rows.max(8), ncols, threads, 3);
        println!("{ty} n={n} rows={rows} cols={ncols} threads={threads}: {gbps:.2} GB/s of weights, {gops:.1} Gop/s");
    }
}
