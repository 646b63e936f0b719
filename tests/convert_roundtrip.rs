//! Sharded input, requantization, and the CLI's happy path.

mod convert_util;

use std::process::Command;

use convert_util::*;
use rgemma::convert::{convert, ConvertOptions, FileType};
use rgemma::gguf::GgufFile;

/// Splits tiny-rg's model.safetensors into 3 shards plus model.safetensors.index.json
/// (shard files ordered differently from the index, as in real checkpoints).
fn make_sharded_copy(dir: &std::path::Path) {
    let src = fixture("tiny-rg");
    copy_configs(&src, dir);
    let tensors: Vec<(String, RawTensor)> = read_safetensors(&src.join("model.safetensors"))
        .into_iter()
        .collect();
    let mut shards: Vec<Vec<(String, RawTensor)>> = vec![Vec::new(); 3];
    for (i, t) in tensors.into_iter().enumerate() {
        shards[(i * 7) % 3].push(t);
    }
    let mut weight_map = serde_json::Map::new();
    for (s, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-00003.safetensors", s + 1);
        write_safetensors(&dir.join(&file), shard);
        for (name, _) in shard {
            weight_map.insert(name.clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
}

#[test]
fn sharded_input_gives_byte_identical_output() {
    // Same directory name ("tiny-rg") so the default general.name agrees.
    let sharded = fresh_dir("sharded").join("tiny-rg");
    std::fs::create_dir_all(&sharded).unwrap();
    make_sharded_copy(&sharded);
    assert!(!sharded.join("model.safetensors").exists());
    let out = fresh_dir("sharded-out");
    for ft in [FileType::F32, FileType::Q4_0, FileType::Q4KM] {
        let a = out.join(format!("single-{}.gguf", ft.name()));
        let b = out.join(format!("sharded-{}.gguf", ft.name()));
        run(&fixture("tiny-rg"), &a, ft).unwrap();
        run(&sharded, &b, ft).unwrap();
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "{ft}: outputs differ"
        );
    }
}

#[test]
fn requantize_f32_gguf_to_q8_0_equals_direct_conversion() {
    let dir = fresh_dir("requant");
    let f32_path = dir.join("tiny-f32.gguf");
    let direct = dir.join("tiny-q8_0-direct.gguf");
    let requant = dir.join("tiny-q8_0-requant.gguf");
    run(&fixture("tiny-rg"), &f32_path, FileType::F32).unwrap();
    run(&fixture("tiny-rg"), &direct, FileType::Q8_0).unwrap();
    run(&f32_path, &requant, FileType::Q8_0).unwrap();
    assert!(
        std::fs::read(&direct).unwrap() == std::fs::read(&requant).unwrap(),
        "requantized file differs"
    );
    let g = GgufFile::open(&requant).unwrap();
    assert_eq!(g.get_u32("general.file_type").unwrap(), 7);
}

#[test]
fn requantizing_a_quantized_file_needs_the_flag() {
    let dir = fresh_dir("requant-flag");
    let q8 = dir.join("tiny-q8_0.gguf");
    let q4 = dir.join("tiny-q4_0.gguf");
    run(&fixture("tiny-rg"), &q8, FileType::Q8_0).unwrap();
    let err = run(&q8, &q4, FileType::Q4_0).unwrap_err().to_string();
    assert!(
        err.contains("--allow-requantize") && err.contains("Q8_0"),
        "{err}"
    );
    assert!(!q4.exists());

    let mut opts = ConvertOptions::new(&q8, &q4, FileType::Q4_0);
    opts.allow_requantize = true;
    convert(&opts, &mut |_| {}).unwrap();
    let g = GgufFile::open(&q4).unwrap();
    assert_eq!(g.get_u32("general.file_type").unwrap(), 2);
    assert_eq!(
        g.tensor("blk.0.rg_x.weight").unwrap().ty,
        rgemma::quant::GgmlType::Q4_0
    );
    // Q8_0 -> Q4_0 stays within Q8_0's bound plus Q4_0's worst case (a full step, at the
    // capped end; d grows by at most Q8_0's error).
    let src = read_safetensors(&fixture("tiny-rg/model.safetensors"));
    let t = g.tensor("blk.0.rg_x.weight").unwrap();
    let (_, want) = expected(&src, &t.name);
    let got = decode(t.ty, g.tensor_data(t), want.len());
    for (gb, wb) in got.chunks(32).zip(want.chunks(32)) {
        let amax = wb.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (g, w) in gb.iter().zip(wb) {
            assert!(
                (g - w).abs() <= 1.12 * amax / 8.0 + 0.6 * amax / 127.0 + 1e-6,
                "{g} vs {w}"
            );
        }
    }
}

#[test]
fn cli_converts_and_prints_a_line_per_tensor() {
    let dir = fresh_dir("cli-ok");
    let out = dir.join("tiny-q4_k_m.gguf");
    let res = Command::new(env!("CARGO_BIN_EXE_rg-quantize"))
        .arg(fixture("tiny-rg"))
        .arg(&out)
        .arg("q4_k_m")
        .args(["--threads", "2", "--name", "tiny test"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with('[')).count(),
        112,
        "{stdout}"
    );
    assert!(
        stdout.contains("token_embd.weight") && stdout.contains("F32 -> Q8_0"),
        "{stdout}"
    );
    assert!(stdout.contains("bits per weight"), "{stdout}");
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.get_str("general.name").unwrap(), "tiny test");
    assert_eq!(g.get_u32("general.file_type").unwrap(), 15);

    // --quiet prints nothing on stdout; --force overwrites.
    let res = Command::new(env!("CARGO_BIN_EXE_rg-quantize"))
        .arg(fixture("tiny-rg"))
        .arg(&out)
        .arg("Q8_0")
        .args(["--quiet", "--force"])
        .output()
        .unwrap();
    assert!(res.status.success());
    assert!(res.stdout.is_empty());
    assert_eq!(
        GgufFile::open(&out)
            .unwrap()
            .get_u32("general.file_type")
            .unwrap(),
        7
    );
}
