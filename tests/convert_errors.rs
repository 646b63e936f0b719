//! Bad input: each case gives a one-line error naming the key / tensor / file, exit code 1
//! from the CLI, and no file at OUTPUT.

mod convert_util;

use std::path::{Path, PathBuf};
use std::process::Command;

use convert_util::*;

/// An edit of a checkpoint's tensor list.
type Edit<'a> = &'a dyn Fn(&mut Vec<(String, RawTensor)>);
use rgemma::convert::FileType;

/// A copy of tiny-rg with `edit_config` applied to config.json and `edit_tensors` to the
/// tensor list (None = keep model.safetensors as is).
fn broken_copy(
    name: &str,
    edit_config: impl FnOnce(&mut serde_json::Value),
    edit_tensors: Option<Edit<'_>>,
) -> PathBuf {
    let dir = fresh_dir(name).join("ckpt");
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture("tiny-rg");
    copy_configs(&src, &dir);
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    edit_config(&mut cfg);
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&cfg).unwrap(),
    )
    .unwrap();
    match edit_tensors {
        None => {
            std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
        }
        Some(f) => {
            let mut t: Vec<(String, RawTensor)> = read_safetensors(&src.join("model.safetensors"))
                .into_iter()
                .collect();
            f(&mut t);
            write_safetensors(&dir.join("model.safetensors"), &t);
        }
    }
    dir
}

/// Converts `input` with the CLI; asserts failure, a one-line message containing every
/// `needles` entry, and no output file. Returns the message.
fn expect_cli_error(input: &Path, needles: &[&str]) -> String {
    let out = input.parent().unwrap().join("out.gguf");
    let _ = std::fs::remove_file(&out);
    let res = Command::new(env!("CARGO_BIN_EXE_rg-quantize"))
        .arg(input)
        .arg(&out)
        .arg("Q8_0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr).to_string();
    assert_eq!(res.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    for n in needles {
        assert!(errors[0].contains(n), "{n:?} not in {:?}", errors[0]);
    }
    assert!(!out.exists(), "output left behind");
    let leftovers: Vec<_> = std::fs::read_dir(input.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "ckpt")
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    errors[0].to_string()
}

fn set(key: &'static str, v: serde_json::Value) -> impl FnOnce(&mut serde_json::Value) {
    move |c| {
        c[key] = v;
    }
}

fn remove(key: &'static str) -> impl FnOnce(&mut serde_json::Value) {
    move |c| {
        c.as_object_mut().unwrap().remove(key);
    }
}

#[test]
fn config_errors_name_the_key() {
    expect_cli_error(
        &broken_copy("cfg-missing", remove("hidden_size"), None),
        &["hidden_size", "config.json"],
    );
    expect_cli_error(
        &broken_copy("cfg-type", set("model_type", "gemma".into()), None),
        &["model_type"],
    );
    // intermediate_size 200 -> branch width 100, but the tensors have 96.
    expect_cli_error(
        &broken_copy("cfg-mlp", set("intermediate_size", 200.into()), None),
        &["intermediate_size", "96"],
    );
    expect_cli_error(
        &broken_copy("cfg-odd", set("intermediate_size", 191.into()), None),
        &["intermediate_size"],
    );
    expect_cli_error(
        &broken_copy("cfg-vocab", set("vocab_size", 500.into()), None),
        &["vocab_size"],
    );
    expect_cli_error(
        &broken_copy(
            "cfg-blocks",
            set("block_types", serde_json::json!(["recurrent", "mlp"])),
            None,
        ),
        &["block_types"],
    );
    expect_cli_error(
        &broken_copy("cfg-heads", set("num_attention_heads", 5.into()), None),
        &["num_attention_heads"],
    );
    expect_cli_error(
        &broken_copy("cfg-layers", set("num_hidden_layers", 7.into()), None),
        &["model.layers.6."],
    );
}

#[test]
fn missing_kv_heads_is_a_warning_not_an_error() {
    let ck = broken_copy("cfg-kv", remove("num_key_value_heads"), None);
    let out = ck.parent().unwrap().join("ok.gguf");
    let (_, warnings) = run(&ck, &out, FileType::F32).unwrap();
    assert!(
        warnings.iter().any(|w| w.contains("num_key_value_heads")),
        "{warnings:?}"
    );
}

#[test]
fn tensor_errors_name_the_tensor() {
    let drop_one: Edit = &|t| t.retain(|(n, _)| n != "model.layers.3.temporal_block.linear_y.bias");
    expect_cli_error(
        &broken_copy("t-missing", |_| {}, Some(drop_one)),
        &["model.layers.3.temporal_block.linear_y.bias", "missing"],
    );

    let reshape: Edit = &|t| {
        for (n, r) in t.iter_mut() {
            if n == "model.layers.0.temporal_block.conv_1d.weight" {
                r.shape = vec![64, 4];
            }
        }
    };
    expect_cli_error(
        &broken_copy("t-shape", |_| {}, Some(reshape)),
        &["model.layers.0.temporal_block.conv_1d.weight", "shape"],
    );

    let f64_dtype: Edit = &|t| {
        for (n, r) in t.iter_mut() {
            if n == "model.layers.1.mlp_block.up_proj.bias" {
                r.bytes = r
                    .values()
                    .iter()
                    .flat_map(|v| (*v as f64).to_le_bytes())
                    .collect();
                r.dtype = "F64".into();
            }
        }
    };
    expect_cli_error(
        &broken_copy("t-dtype", |_| {}, Some(f64_dtype)),
        &["model.layers.1.mlp_block.up_proj.bias", "F64"],
    );

    let extra: Edit = &|t| {
        t.push((
            "model.layers.2.temporal_block.q_proj.bias".into(),
            RawTensor::f32(&[64], &[0.0; 64]),
        ))
    };
    expect_cli_error(
        &broken_copy("t-extra", |_| {}, Some(extra)),
        &["model.layers.2.temporal_block.q_proj.bias", "unexpected"],
    );

    for (case, bad) in [("t-nan", f32::NAN), ("t-inf", f32::INFINITY)] {
        let poison: Edit = &move |t| {
            for (n, r) in t.iter_mut() {
                if n == "model.layers.4.mlp_block.up_proj.weight" {
                    r.bytes[4 * 1000..4 * 1001].copy_from_slice(&bad.to_le_bytes());
                }
            }
        };
        expect_cli_error(
            &broken_copy(case, |_| {}, Some(poison)),
            &["model.layers.4.mlp_block.up_proj.weight", "element 1000"],
        );
    }
}

#[test]
fn corrupt_safetensors_headers_name_the_file() {
    let original = std::fs::read(fixture("tiny-rg/model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // Header length beyond the file.
    let mut b = original.clone();
    b[..8].copy_from_slice(&(original.len() as u64 * 2).to_le_bytes());
    cases.push(("h-len", b));
    // Truncated to 5 bytes.
    cases.push(("h-short", original[..5].to_vec()));
    // Garbage in the JSON.
    let mut b = original.clone();
    b[8] = b'#';
    cases.push(("h-json", b));
    // Data cut off: offsets now run past the end of the file.
    cases.push(("h-trunc", original[..8 + header_len + 1000].to_vec()));
    for (case, bytes) in cases {
        let dir = fresh_dir(case).join("ckpt");
        std::fs::create_dir_all(&dir).unwrap();
        copy_configs(&fixture("tiny-rg"), &dir);
        std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
        expect_cli_error(&dir, &["model.safetensors", "safetensors"]);
    }
    // Shape and offsets disagree.
    let lie: Edit = &|t| {
        for (n, r) in t.iter_mut() {
            if n == "model.final_norm.weight" {
                r.bytes.truncate(4 * 60);
            }
        }
    };
    expect_cli_error(
        &broken_copy("h-size", |_| {}, Some(lie)),
        &["model.final_norm.weight", "model.safetensors"],
    );
}

#[test]
fn output_paths_are_checked() {
    let dir = fresh_dir("paths");
    let out = dir.join("exists.gguf");
    std::fs::write(&out, b"keep me").unwrap();
    let err = run(&fixture("tiny-rg"), &out, FileType::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("exists") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");

    // A GGUF as its own output, even with --force.
    let g = dir.join("tiny.gguf");
    run(&fixture("tiny-rg"), &g, FileType::F32).unwrap();
    let before = std::fs::read(&g).unwrap();
    let mut opts =
        rgemma::convert::ConvertOptions::new(&g, dir.join(".").join("tiny.gguf"), FileType::Q8_0);
    opts.force = true;
    let err = rgemma::convert::convert(&opts, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("is the input"), "{err}");
    assert_eq!(std::fs::read(&g).unwrap(), before);

    // Unknown TYPE and a missing input from the CLI.
    let res = Command::new(env!("CARGO_BIN_EXE_rg-quantize"))
        .arg(fixture("tiny-rg"))
        .arg(dir.join("x.gguf"))
        .arg("Q3_K")
        .output()
        .unwrap();
    assert_eq!(res.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&res.stderr).contains("Q3_K"));
    let res = Command::new(env!("CARGO_BIN_EXE_rg-quantize"))
        .arg(dir.join("no-such-dir"))
        .arg(dir.join("x.gguf"))
        .arg("Q8_0")
        .output()
        .unwrap();
    assert_eq!(res.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&res.stderr).contains("no-such-dir"));
    assert!(!dir.join("x.gguf").exists());
}
