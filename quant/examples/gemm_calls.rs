//! One packed gemm, called `CALLS` times: a fixed workload for counting the instructions
//! the kernels execute (`scripts/kernel-insns-qemu.py` runs it under qemu's exec log).
//! `gemm_calls TYPE N GROUPS COLS [CALLS]`; `RGEMMA_SIMD` picks the backend as elsewhere.
use rgemma_quant::dot::Backend;
use rgemma_quant::packed::{self, GROUP_ROWS};
use rgemma_quant::GgmlType;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| args.get(i).and_then(|a| a.parse::<usize>().ok());
    let (Some(ty), Some(n), Some(groups), Some(cols)) = (
        args.first().and_then(|a| GgmlType::from_name(a)),
        num(1),
        num(2),
        num(3),
    ) else {
        eprintln!("usage: gemm_calls TYPE N GROUPS COLS [CALLS]  (e.g. q4_k 2560 4 4 1)");
        std::process::exit(2);
    };
    let calls = num(4).unwrap_or(1);
    let backend = Backend::detect();
    let row_bytes = ty.row_size(n as u64).expect("n a whole number of blocks") as usize;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 255) as f32 / 127.0 - 1.0)
        .collect();
    let mut row = vec![0u8; row_bytes];
    rgemma_quant::quantize_row(ty, &x, &mut row).expect("a quantizable type");
    let stored = row.repeat(GROUP_ROWS);
    let gb = packed::group_bytes(ty, n).expect("a packed type");
    let mut w = vec![0u8; gb * groups];
    for g in w.chunks_mut(gb) {
        packed::pack_group(ty, n, &stored, row_bytes, g).unwrap();
    }
    let ab = packed::activation_row_bytes(ty, n).unwrap();
    let mut act = vec![0u8; ab * cols];
    for a in act.chunks_mut(ab) {
        packed::quantize_activation(backend, ty, &x, a).unwrap();
    }
    let rows = groups * GROUP_ROWS;
    let mut out = vec![0f32; rows * cols];
    for _ in 0..calls {
        // SAFETY: `out` holds `cols` rows of `rows` values, written by this thread only.
        unsafe {
            packed::gemm_to_ptr(
                backend,
                ty,
                n,
                &w,
                groups,
                &act,
                ab,
                cols,
                out.as_mut_ptr(),
                rows,
            )
            .unwrap()
        };
    }
    println!(
        "{backend:?} {ty} n={n} rows={rows} cols={cols}: out[0] = {}",
        out[0]
    );
}
