//! The `rg-gguf` binary: info (text and JSON), dump to .npy, and one-line errors.

mod gguf_common;

use std::process::{Command, Output};

use gguf_common::{fixture, scratch_dir};

fn rg_gguf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rg-gguf"))
        .args(args)
        .output()
        .unwrap()
}

fn small() -> String {
    fixture("gguf_py_small.gguf").to_string_lossy().into_owned()
}

#[test]
fn info_json_describes_the_fixture() {
    let out = rg_gguf(&["info", &small(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], 3);
    assert_eq!(v["alignment"], 32);
    assert_eq!(v["data_offset"], 1536);
    let meta = v["metadata"].as_object().unwrap();
    assert_eq!(meta.len(), 28);
    assert_eq!(meta["general.name"], "gguf fixture \u{2713}");
    assert_eq!(meta["t.u64"].as_u64(), Some((1 << 63) + 5));
    assert_eq!(meta["t.f32"].as_f64().map(|x| x as f32), Some(0.1f32));
    assert_eq!(
        meta["t.arr.str"],
        serde_json::json!(["a", "", "\u{fc}n\u{ef}", "x y"])
    );
    assert_eq!(meta["t.arr.f32"], serde_json::json!([0.5, -1.25, 1e-6]));
    assert_eq!(v["metadata_types"]["t.arr.str"], "array of string");
    assert_eq!(v["metadata_types"]["t.i16"], "i16");
    let tensors = v["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 11);
    assert_eq!(
        tensors[6],
        serde_json::json!({"name": "q4_k.mat", "type": "Q4_K", "shape": [2, 256], "offset": 384, "size": 288})
    );
    assert_eq!(tensors[8]["type"], "IQ2_XS");
    assert_eq!(tensors[10]["shape"], serde_json::json!([1, 2, 1, 2]));
}

#[test]
fn info_text_lists_keys_tensors_and_totals() {
    let out = rg_gguf(&["info", &small()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("GGUF v3, alignment 32, 28 metadata keys, 11 tensors, data at byte 1536")
    );
    for needle in [
        "t.arr.str",
        "string[4]",
        "[\"a\", \"\", \"ünï\", \"x y\"]",
        "q4_k.mat",
        "[2, 256]",
        "IQ2_XS",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    let all = text.lines().last().unwrap();
    assert!(
        all.contains("11 tensors") && all.contains("914 bytes"),
        "{all}"
    );
}

#[test]
fn dump_f32_writes_npy() {
    let dir = scratch_dir("cli-dump");
    let npy = dir.join("m.npy");
    let out = rg_gguf(&["dump", &small(), "f32.mat", "--out", npy.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&npy).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    assert_eq!((10 + header_len) % 64, 0);
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert_eq!(
        header.trim_end(),
        "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }"
    );
    let values: Vec<f32> = bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(
        values,
        (0..12).map(|i| i as f32 * 0.25 - 3.0).collect::<Vec<_>>()
    );
}

#[track_caller]
fn assert_one_line_failure(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("rg-gguf: ") && err.contains(needle),
        "{err}"
    );
}

#[test]
fn bad_inputs_fail_with_one_line() {
    let dir = scratch_dir("cli-bad");
    let bad = dir.join("bad.gguf");
    let mut bytes = std::fs::read(fixture("gguf_py_small.gguf")).unwrap();
    bytes.truncate(1000);
    std::fs::write(&bad, &bytes).unwrap();
    let bad = bad.to_str().unwrap();
    assert_one_line_failure(&rg_gguf(&["info", bad]), "bad.gguf: at byte ");
    assert_one_line_failure(&rg_gguf(&["info", bad, "--json"]), "truncated");
    let be = fixture("gguf_py_big_endian.gguf");
    assert_one_line_failure(
        &rg_gguf(&["info", be.to_str().unwrap()]),
        "at byte 4: big-endian GGUF is not supported",
    );
    assert_one_line_failure(
        &rg_gguf(&["info", "/no/such/file.gguf"]),
        "/no/such/file.gguf",
    );
    let npy = dir.join("x.npy");
    let npy = npy.to_str().unwrap();
    assert_one_line_failure(
        &rg_gguf(&["dump", &small(), "nope", "--out", npy]),
        "no tensor named \"nope\"",
    );
    assert_one_line_failure(
        &rg_gguf(&["dump", &small(), "iq2_xs.mat", "--out", npy]),
        "IQ2_XS",
    );
    assert!(
        !std::path::Path::new(npy).exists(),
        "no partial .npy after a failure"
    );
}

/// Reads a float32 .npy written by rg-gguf: (shape text, values).
fn read_npy(path: &std::path::Path) -> (String, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    let shape = header
        .split("'shape': ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let values = bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (format!("{shape})"), values)
}

#[test]
fn dump_every_computable_type_equals_gguf_py_dequantize() {
    // tests/fixtures/gguf/gguf_py_small.dequant.f32: gguf.quants.dequantize of these tensors,
    // in this order (scripts/gguf_fixture.py).
    let tensors = [
        ("f32.vec", "(5,)"),
        ("f32.mat", "(3, 4)"),
        ("f16.mat", "(2, 8)"),
        ("bf16.mat", "(2, 3)"),
        ("q8_0.mat", "(2, 64)"),
        ("q4_0.mat", "(3, 32)"),
        ("q4_k.mat", "(2, 256)"),
        ("q6_k.vec", "(256,)"),
        ("f16.4d", "(1, 2, 1, 2)"),
    ];
    let reference: Vec<f32> = std::fs::read(fixture("gguf_py_small.dequant.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let dir = scratch_dir("cli-dump-all");
    let mut at = 0;
    for (name, shape) in tensors {
        let npy = dir.join(format!("{name}.npy"));
        let out = rg_gguf(&["dump", &small(), name, "--out", npy.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (got_shape, values) = read_npy(&npy);
        assert_eq!(got_shape, shape, "{name}");
        let expected = &reference[at..at + values.len()];
        for (i, (a, b)) in values.iter().zip(expected).enumerate() {
            let same = a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
            assert!(
                same,
                "{name}[{i}]: rg-gguf {a:e} ({:#x}), gguf-py {b:e}",
                a.to_bits()
            );
        }
        at += values.len();
    }
    assert_eq!(at, reference.len());
}
