//! Packed vs unpacked kernel throughput, measured in the same run.
//!
//! `cargo run --release --example packed_bench -p rgemma-quant [-- SECTION... TYPE...]`
//! where SECTION is `cache` (one core, 64 × 2560 weights: fits L2), `dram` (1 GiB of
//! weights, 2 threads, decode) or `pp` (2560 × 2560 weights, 512 tokens, 1 and 2 threads),
//! and TYPE a ggml type name (`q4_0`, `q8_0`, `q4_K`, `q6_K`). Defaults: every section,
//! every type with a packed layout. `COLS=N` makes the `cache` and `dram` sections
//! multiply N columns (batched decoding of N sequences) instead of one; `RGEMMA_TWO_GROUPS=0`
//! or `1` switches the few-column two-group AVX-512 kernels off or on (`packed::tiles`).
//! Section `ab` (AVX-512 only, not in the defaults) measures the one- and two-group kernels
//! on the `dram` matrix with `COLS` columns, alternated within the process (`ROUNDS`,
//! default 10), and prints the median of their per-round ratios: a shared machine's drift
//! over seconds then cancels, which comparing two separate runs does not give.

use rgemma_quant::dot::Backend;
use rgemma_quant::packed::{self, bench};
use rgemma_quant::GgmlType;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut sections: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| matches!(*a, "cache" | "dram" | "pp" | "ab"))
        .collect();
    if sections.is_empty() {
        sections = vec!["cache", "dram", "pp"];
    }
    let mut types: Vec<GgmlType> = args.iter().filter_map(|a| GgmlType::from_name(a)).collect();
    if types.is_empty() {
        types = [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K]
            .into_iter()
            .filter(|t| packed::supports(*t))
            .collect();
    }
    let best = Backend::best_available();
    let mut backends = vec![best];
    if best == Backend::Avx512 {
        backends.push(Backend::Avx2);
    }
    let n = 2560;
    let cols: usize = match std::env::var("COLS") {
        Ok(v) => match v.parse() {
            Ok(c) if c > 0 => c,
            _ => {
                eprintln!("packed_bench: COLS must be a positive integer, not {v:?}");
                std::process::exit(2);
            }
        },
        Err(_) => 1,
    };
    println!(
        "best backend: {}; GB/s of weight bytes, Gop/s = 2·rows·n·ncols/s",
        best.name()
    );
    if sections.contains(&"dram") {
        let gbps = read_bandwidth(2);
        println!("memory read roofline (1 GiB, 2 threads): {gbps:.1} GB/s");
    }
    for ty in types {
        let rb = ty.row_size(n as u64).unwrap() as usize;
        for &section in &sections {
            if section == "ab" {
                alternate_two_groups(best, ty, n, (1 << 30) / rb, cols);
                continue;
            }
            let (rows, ncols, threads): (usize, usize, &[usize]) = match section {
                "cache" => (64, cols, &[1]),
                "dram" => ((1 << 30) / rb, cols, &[2]),
                _ => (2560, 512, &[1, 2]),
            };
            for &t in threads {
                let label = format!("{ty} {section:5} rows={rows} n={n} ncols={ncols} t={t}");
                let u = bench::bench_unpacked_with(best, ty, n, rows, ncols, t, 8);
                print!("{label}: unpacked {:6.1} GB/s {:6.1} Gop/s", u.gbps, u.gops);
                for &b in &backends {
                    let p = bench::bench_packed_with(b, ty, n, rows, ncols, t, 8);
                    print!(
                        " | packed {} {:6.1} GB/s {:6.1} Gop/s",
                        b.name(),
                        p.gbps,
                        p.gops
                    );
                }
                println!();
            }
        }
    }
}

/// Best of 8 streaming reads of a 1 GiB buffer split over `threads` threads, in GB/s: the
/// bound on decode speed that the DRAM rows should be compared with.
fn read_bandwidth(threads: usize) -> f64 {
    let buf = vec![1u8; 1 << 30];
    let per = buf.len() / threads;
    (0..8)
        .map(|_| {
            let t = std::time::Instant::now();
            std::thread::scope(|s| {
                for part in buf.chunks(per) {
                    s.spawn(move || {
                        std::hint::black_box(rgemma_quant::dot::membw::read_checksum(part))
                    });
                }
            });
            buf.len() as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// The one-group and two-group kernels on the same matrix, alternated round by round; prints
/// their mean GB/s and the median (and range) of the per-round ratios two / one.
fn alternate_two_groups(best: Backend, ty: GgmlType, n: usize, rows: usize, cols: usize) {
    if best != Backend::Avx512 {
        println!("{ty} ab: needs AVX-512 (the two-group kernels' registers)");
        return;
    }
    let rounds = match std::env::var("ROUNDS").map(|v| v.parse::<usize>()) {
        Err(_) => 10,
        Ok(Ok(r)) if r > 0 => r,
        Ok(_) => {
            eprintln!("packed_bench: ROUNDS must be a positive integer");
            std::process::exit(2);
        }
    };
    let res = bench::bench_packed_alternating(best, ty, n, rows, cols, 2, rounds, 2, |v| {
        packed::set_two_group_kernels(Some(v == 1))
    });
    packed::set_two_group_kernels(None);
    let gbps = |v: usize| res[v].iter().map(|t| t.gbps).collect::<Vec<f64>>();
    let (one, two) = (gbps(0), gbps(1));
    let mut ratios: Vec<f64> = one.iter().zip(&two).map(|(a, b)| b / a).collect();
    ratios.sort_by(f64::total_cmp);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "{ty} ab rows={rows} n={n} ncols={cols} t=2, {rounds} rounds: one group {:.1} GB/s, \
         two groups {:.1} GB/s, two / one median {:.3} (range {:.3}-{:.3})",
        mean(&one),
        mean(&two),
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
}
