//! GgufFile: reading gguf-py's files, typed getters, and rejection of malformed input.

mod gguf_common;

use gguf_common::{fixture, Raw};
use rgemma::gguf::{GgufError, GgufFile, MetaArray, MetaValue};
use rgemma::quant::GgmlType;

fn small() -> GgufFile {
    GgufFile::open(fixture("gguf_py_small.gguf")).unwrap()
}

/// Parses `bytes`, expecting a Malformed error at `offset` whose message contains `what`.
#[track_caller]
fn expect_malformed(bytes: Vec<u8>, offset: u64, what: &str) {
    match GgufFile::from_bytes(bytes) {
        Ok(_) => panic!("accepted a malformed file (wanted {what:?})"),
        Err(GgufError::Malformed { offset: o, what: w }) => {
            assert!(w.contains(what), "message {w:?} lacks {what:?}");
            assert_eq!(o, offset, "offset for {w:?}");
        }
        Err(e) => panic!("wrong error kind: {e}"),
    }
}

#[test]
fn reads_gguf_py_fixture() {
    let f = small();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.metadata().len(), 28);
    assert_eq!(f.get_str("general.architecture").unwrap(), "test");
    assert_eq!(f.get_str("general.name").unwrap(), "gguf fixture \u{2713}");
    assert_eq!(f.get("t.i8"), Some(&MetaValue::I8(-100)));
    assert_eq!(f.get("t.f32"), Some(&MetaValue::F32(0.1)));
    assert_eq!(f.get("t.f64"), Some(&MetaValue::F64(1.0 / 3.0)));
    assert_eq!(f.get("t.u64"), Some(&MetaValue::U64((1 << 63) + 5)));
    assert_eq!(
        f.get_str_array("t.arr.str").unwrap(),
        ["a", "", "\u{fc}n\u{ef}", "x y"].map(String::from)
    );
    assert_eq!(
        f.get("t.arr.bool"),
        Some(&MetaValue::Array(MetaArray::Bool(vec![true, false, true])))
    );
    assert_eq!(
        f.get("t.arr.i64"),
        Some(&MetaValue::Array(MetaArray::I64(vec![i64::MIN, i64::MAX])))
    );

    // Offsets and shapes as gguf-py's GGUFReader reports them (data_offset - data start).
    let expected = [
        ("f32.vec", GgmlType::F32, vec![5], 0, 20),
        ("f32.mat", GgmlType::F32, vec![3, 4], 32, 48),
        ("f16.mat", GgmlType::F16, vec![2, 8], 96, 32),
        ("bf16.mat", GgmlType::BF16, vec![2, 3], 128, 12),
        ("q8_0.mat", GgmlType::Q8_0, vec![2, 64], 160, 136),
        ("q4_0.mat", GgmlType::Q4_0, vec![3, 32], 320, 54),
        ("q4_k.mat", GgmlType::Q4K, vec![2, 256], 384, 288),
        ("q6_k.vec", GgmlType::Q6K, vec![256], 672, 210),
        ("iq2_xs.mat", GgmlType::Iq2Xs, vec![1, 256], 896, 74),
        ("i32.cube", GgmlType::I32, vec![2, 2, 2], 992, 32),
        ("f16.4d", GgmlType::F16, vec![1, 2, 1, 2], 1024, 8),
    ];
    assert_eq!(f.data_start(), 1536);
    assert_eq!(f.tensors().len(), expected.len());
    for (t, (name, ty, shape, offset, size)) in f.tensors().iter().zip(expected) {
        assert_eq!(
            (t.name.as_str(), t.ty, t.shape(), t.offset, t.size),
            (name, ty, shape, offset, size)
        );
    }
    let mat = f.tensor("f32.mat").unwrap();
    let values: Vec<f32> = f
        .tensor_data(mat)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(
        values,
        (0..12).map(|i| i as f32 * 0.25 - 3.0).collect::<Vec<_>>()
    );
    assert_eq!(
        f.tensor_data(f.tensor("q4_0.mat").unwrap())[..3],
        [5 + 55, 5 + 55 + 37, (5 + 55 + 74) as u8]
    );
    assert!(f.tensor("nope").is_none());
}

#[test]
fn from_bytes_equals_open() {
    let bytes = std::fs::read(fixture("gguf_py_small.gguf")).unwrap();
    let a = GgufFile::from_bytes(bytes).unwrap();
    let b = small();
    assert_eq!(a.metadata(), b.metadata());
    assert_eq!(a.tensors(), b.tensors());
    for t in a.tensors() {
        assert_eq!(a.tensor_data(t), b.tensor_data(t));
    }
}

#[test]
fn typed_getters_convert_and_explain() {
    let f = small();
    assert_eq!(f.get_u32("t.u8").unwrap(), 200);
    assert_eq!(f.get_u32("t.u16").unwrap(), 60000);
    assert_eq!(f.get_u32("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(f.get_u64("t.u64").unwrap(), (1 << 63) + 5);
    assert_eq!(f.get_u64("general.alignment").unwrap(), 32);
    assert_eq!(f.get_f32("t.f32").unwrap(), 0.1);
    assert_eq!(f.get_f32("t.f64").unwrap(), (1.0f64 / 3.0) as f32);
    assert!(f.get_bool("t.bool_true").unwrap());
    assert!(!f.get_bool("t.bool_false").unwrap());
    assert_eq!(f.get_str("t.str").unwrap(), "hello\nworld \u{e9}");

    let msg = |r: Result<u32, GgufError>| r.unwrap_err().to_string();
    assert_eq!(
        msg(f.get_u32("t.f32")),
        "key t.f32: expected u32, found f32"
    );
    assert_eq!(
        msg(f.get_u32("t.i8")),
        "key t.i8: expected u32, found i8 -100 (out of range)"
    );
    assert_eq!(
        msg(f.get_u32("t.u64")),
        format!(
            "key t.u64: expected u32, found u64 {} (out of range)",
            (1u64 << 63) + 5
        )
    );
    assert_eq!(msg(f.get_u32("missing")), "missing metadata key missing");
    assert_eq!(
        f.get_u64("t.i64").unwrap_err().to_string(),
        format!(
            "key t.i64: expected u64, found i64 {} (out of range)",
            -(1i64 << 62)
        )
    );
    assert_eq!(
        f.get_str("t.u8").unwrap_err().to_string(),
        "key t.u8: expected string, found u8"
    );
    assert_eq!(
        f.get_bool("t.u8").unwrap_err().to_string(),
        "key t.u8: expected bool, found u8"
    );
    assert_eq!(
        f.get_f32("t.str").unwrap_err().to_string(),
        "key t.str: expected f32, found string"
    );
    assert_eq!(
        f.get_str_array("t.arr.u8").unwrap_err().to_string(),
        "key t.arr.u8: expected array of string, found array of u8"
    );
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = std::fs::read(fixture("gguf_py_small.gguf")).unwrap();
    for len in 0..bytes.len() {
        match GgufFile::from_bytes(bytes[..len].to_vec()) {
            Err(GgufError::Malformed { offset, .. }) => assert!(offset <= len as u64, "len {len}"),
            Err(e) => panic!("len {len}: unexpected error kind {e}"),
            Ok(_) => panic!(
                "a file truncated to {len} of {} bytes was accepted",
                bytes.len()
            ),
        }
    }
    assert!(GgufFile::from_bytes(bytes).is_ok());
}

#[test]
fn bad_magic_and_versions() {
    let mut bad = Raw::header(3, 0, 0).take();
    bad[3] = b'X';
    expect_malformed(bad, 0, "bad magic");
    expect_malformed(Raw::header(1, 0, 0).take(), 4, "version 1 is not supported");
    expect_malformed(Raw::header(4, 0, 0).take(), 4, "unsupported GGUF version 4");
    expect_malformed(Raw::header(0, 0, 0).take(), 4, "unsupported GGUF version 0");
    // v2 has the same layout as v3.
    let v2 = GgufFile::from_bytes(Raw::header(2, 0, 1).kv_u32("a", 1).take()).unwrap();
    assert_eq!((v2.version(), v2.get_u32("a").unwrap()), (2, 1));
}

#[test]
fn big_endian_file_is_refused_clearly() {
    let bytes = std::fs::read(fixture("gguf_py_big_endian.gguf")).unwrap();
    expect_malformed(bytes, 4, "big-endian GGUF is not supported");
    let mut swapped_magic = Raw::header(3, 0, 0).take();
    swapped_magic[..4].copy_from_slice(b"FUGG");
    expect_malformed(swapped_magic, 0, "big-endian GGUF is not supported");
}

#[test]
fn huge_counts_and_lengths_are_refused() {
    expect_malformed(Raw::header(3, u64::MAX, 0).take(), 8, "tensor count");
    expect_malformed(Raw::header(3, 0, 1 << 40).take(), 16, "metadata count");
    // Key length u64::MAX.
    expect_malformed(
        Raw::header(3, 0, 1).u64(u64::MAX).zeros(16).take(),
        24,
        "metadata key length",
    );
    // String value of length 2^62.
    let r = Raw::header(3, 0, 1)
        .str("k")
        .u32(8)
        .u64(1 << 62)
        .zeros(32)
        .take();
    expect_malformed(r, 24 + 9 + 4, "key k length");
    // Arrays: u64 elements whose byte size overflows, and strings counted past the end.
    let r = Raw::header(3, 0, 1)
        .str("k")
        .u32(9)
        .u32(10)
        .u64(u64::MAX / 2)
        .zeros(64)
        .take();
    expect_malformed(r, 24 + 9 + 8, "array length");
    let r = Raw::header(3, 0, 1)
        .str("k")
        .u32(9)
        .u32(8)
        .u64(1 << 30)
        .zeros(64)
        .take();
    expect_malformed(
        r,
        24 + 9 + 8,
        "array length 1073741824 needs at least 8589934592 bytes",
    );
    // Tensor name length.
    let r = Raw::header(3, 1, 0).u64(u64::MAX - 3).zeros(40).take();
    expect_malformed(r, 24, "tensor name length");
}

/// A file with one metadata key and the given tensor infos, padded, then `data_len` bytes.
fn with_tensors(infos: &[(&str, &[u64], u32, u64)], data_len: usize) -> Vec<u8> {
    let mut r = Raw::header(3, infos.len() as u64, 1);
    r.kv_u32("general.alignment", 32);
    for (name, dims, ty, off) in infos {
        r.tensor(name, dims, *ty, *off);
    }
    r.pad(32).zeros(data_len);
    r.take()
}

/// Offset of the `offset` field of the i-th tensor info of `with_tensors` (all names 1 byte).
fn offset_field(dims_before: &[usize], i: usize) -> u64 {
    let start = 24 + (8 + 17 + 4 + 4);
    let infos: usize = dims_before[..i]
        .iter()
        .map(|&d| 8 + 1 + 4 + 8 * d + 4 + 8)
        .sum();
    (start + infos + 8 + 1 + 4 + 8 * dims_before[i] + 4) as u64
}

#[test]
fn valid_tensor_layout_is_accepted() {
    let f = GgufFile::from_bytes(with_tensors(
        &[("a", &[8], 0, 0), ("b", &[64, 2], 8, 32)],
        32 + 160,
    ))
    .unwrap();
    assert_eq!(f.tensor("b").unwrap().size, 136);
    assert_eq!(f.tensor_data(f.tensor("b").unwrap()).len(), 136);
}

#[test]
fn tensor_data_outside_the_file_is_refused() {
    let past_end = with_tensors(&[("a", &[8], 0, 0), ("b", &[64, 2], 8, 32)], 32 + 136);
    expect_malformed(past_end, offset_field(&[1, 2], 1), "tensor b: data at");
    let far = with_tensors(&[("a", &[8], 0, u64::MAX - 31)], 64);
    expect_malformed(
        far,
        offset_field(&[1], 0),
        "extends past the end of the file",
    );
}

#[test]
fn misaligned_and_overlapping_tensors_are_refused() {
    let misaligned = with_tensors(&[("a", &[8], 0, 16)], 64);
    expect_malformed(
        misaligned,
        offset_field(&[1], 0),
        "offset 16 is not a multiple of the alignment 32",
    );
    let overlap = with_tensors(&[("a", &[16], 0, 0), ("b", &[8], 0, 32)], 96);
    expect_malformed(
        overlap,
        offset_field(&[1, 1], 1),
        "tensor b (offset 32) overlaps tensor a",
    );
    let same = with_tensors(&[("a", &[8], 0, 0), ("b", &[8], 0, 0)], 32);
    expect_malformed(same, offset_field(&[1, 1], 1), "overlaps tensor a");
}

#[test]
fn bad_tensor_types_and_dims_are_refused() {
    for id in [4, 31, 36, 43, 1000, u32::MAX] {
        let f = with_tensors(&[("a", &[32], id, 0)], 64);
        expect_malformed(
            f,
            offset_field(&[1], 0) - 4,
            &format!("tensor a: unknown ggml type id {id}"),
        );
    }
    // Known but not computable types are listed, not refused.
    let iq = GgufFile::from_bytes(with_tensors(&[("a", &[256], 17, 0)], 96)).unwrap();
    assert_eq!(iq.tensors()[0].ty, GgmlType::Iq2Xs);

    let dims_at = 24 + 33 + 8 + 1;
    let f = with_tensors(&[("a", &[1 << 32, 1 << 32], 0, 0)], 32);
    expect_malformed(f, dims_at, "element count overflows");
    let f = with_tensors(&[("a", &[1 << 62, 4], 0, 0)], 32);
    expect_malformed(f, dims_at, "element count overflows");
    let f = with_tensors(&[("a", &[1 << 61], 28, 0)], 32);
    expect_malformed(f, dims_at, "byte size overflows");
    let f = with_tensors(&[("a", &[1, 1, 1, 1, 1], 0, 0)], 32);
    expect_malformed(f, dims_at, "5 dimensions (max 4)");
    let f = with_tensors(&[("a", &[33], 2, 0)], 64);
    expect_malformed(
        f,
        dims_at,
        "ne[0] = 33 is not a multiple of the Q4_0 block size 32",
    );
    let f = with_tensors(&[("a", &[100, 2], 12, 0)], 640);
    expect_malformed(f, dims_at, "not a multiple of the Q4_K block size 256");
}

#[test]
fn duplicate_names_and_bad_names_are_refused() {
    let dup = with_tensors(&[("a", &[8], 0, 0), ("a", &[8], 0, 32)], 64);
    expect_malformed(dup, offset_field(&[1], 0) + 8, "duplicate tensor name a");
    let long = "n".repeat(64);
    let mut r = Raw::header(3, 1, 0);
    r.tensor(&long, &[1], 0, 0).pad(32).zeros(32);
    expect_malformed(r.take(), 24, "is 64 bytes (max 63)");

    let r = Raw::header(3, 0, 2).kv_u32("k", 1).kv_u32("k", 2).take();
    expect_malformed(r, 24 + 17, "duplicate metadata key k");
    let r = Raw::header(3, 0, 1)
        .u64(2)
        .u8(0xff)
        .u8(0xfe)
        .u32(4)
        .u32(0)
        .take();
    expect_malformed(r, 24, "metadata key is not valid UTF-8");
}

#[test]
fn bad_metadata_values_are_refused() {
    let value_at = 24 + 9 + 4;
    let r = Raw::header(3, 0, 1).str("k").u32(13).u32(0).take();
    expect_malformed(r, 24 + 9, "unknown metadata value type 13");
    let r = Raw::header(3, 0, 1).str("k").u32(7).u8(2).take();
    expect_malformed(r, value_at, "bool byte is 2, must be 0 or 1");
    let r = Raw::header(3, 0, 1)
        .str("k")
        .u32(9)
        .u32(7)
        .u64(3)
        .u8(1)
        .u8(0)
        .u8(0xff)
        .take();
    expect_malformed(r, value_at + 12 + 2, "bool byte is 255");
    let r = Raw::header(3, 0, 1)
        .str("k")
        .u32(9)
        .u32(9)
        .u64(1)
        .u32(4)
        .u64(1)
        .u32(5)
        .take();
    expect_malformed(r, value_at, "key k: nested arrays are not supported");
    let r = Raw::header(3, 0, 1).str("k").u32(9).u32(99).u64(0).take();
    expect_malformed(r, value_at, "unknown metadata value type 99");
    let r = Raw::header(3, 0, 1)
        .str("k")
        .u32(8)
        .u64(2)
        .u8(0xc3)
        .u8(0x28)
        .take();
    expect_malformed(r, value_at, "k is not valid UTF-8");
}

#[test]
fn alignment_must_be_a_u32_power_of_two() {
    let value_at = 24 + 8 + 17 + 4;
    let r = Raw::header(3, 0, 1)
        .str("general.alignment")
        .u32(4)
        .u32(48)
        .take();
    expect_malformed(r, value_at, "general.alignment 48 is not a power of two");
    let r = Raw::header(3, 0, 1)
        .str("general.alignment")
        .u32(4)
        .u32(0)
        .take();
    expect_malformed(r, value_at, "general.alignment 0 is not a power of two");
    let r = Raw::header(3, 0, 1)
        .str("general.alignment")
        .u32(10)
        .u64(32)
        .take();
    expect_malformed(r, value_at, "general.alignment must be u32, found u64");

    // Alignment 64 is honoured for the data start and the offsets.
    let mut r = Raw::header(3, 2, 1);
    r.kv_u32("general.alignment", 64)
        .tensor("a", &[4], 0, 0)
        .tensor("b", &[4], 0, 64)
        .pad(64);
    let data_start = r.bytes.len();
    r.zeros(128);
    let f = GgufFile::from_bytes(r.take()).unwrap();
    assert_eq!((f.alignment(), f.data_start()), (64, data_start as u64));
    let mut r = Raw::header(3, 2, 1);
    r.kv_u32("general.alignment", 64)
        .tensor("a", &[4], 0, 0)
        .tensor("b", &[4], 0, 32)
        .pad(64)
        .zeros(128);
    assert!(
        GgufFile::from_bytes(r.take()).is_err(),
        "offset 32 is misaligned at 64"
    );
}

#[test]
fn files_without_tensors_and_empty_files() {
    let f = GgufFile::from_bytes(Raw::header(3, 0, 0).take()).unwrap();
    assert!(f.metadata().is_empty() && f.tensors().is_empty());
    expect_malformed(Vec::new(), 0, "truncated magic");
    let dir = gguf_common::scratch_dir("empty-file");
    std::fs::write(dir.join("e.gguf"), b"").unwrap();
    assert!(matches!(
        GgufFile::open(dir.join("e.gguf")),
        Err(GgufError::Malformed { offset: 0, .. })
    ));
    assert!(matches!(
        GgufFile::open(dir.join("missing.gguf")),
        Err(GgufError::Io { .. })
    ));
}
