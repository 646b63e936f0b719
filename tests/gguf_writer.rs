//! GgufWriter: byte-identical to gguf-py's GGUFWriter, round trips, atomicity.

mod gguf_common;

use gguf_common::{fixture, list_dir, scratch_dir};
use rgemma::gguf::{GgufError, GgufFile, GgufWriter, MetaArray, MetaValue, TensorSpec};
use rgemma::quant::GgmlType;

/// The metadata of tests/fixtures/gguf/gguf_py_small.gguf, in the order scripts/gguf_fixture.py
/// adds it (general.alignment, added last there, is appended by our writer).
fn fixture_metadata() -> Vec<(String, MetaValue)> {
    use MetaValue as V;
    let kv = |k: &str, v: MetaValue| (k.to_string(), v);
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        kv("general.architecture", V::String("test".into())),
        kv("general.name", V::String("gguf fixture \u{2713}".into())),
        kv("t.u8", V::U8(200)),
        kv("t.i8", V::I8(-100)),
        kv("t.u16", V::U16(60000)),
        kv("t.i16", V::I16(-30000)),
        kv("t.u32", V::U32(4_000_000_000)),
        kv("t.i32", V::I32(-2_000_000_000)),
        kv("t.f32", V::F32(0.1)),
        kv("t.bool_true", V::Bool(true)),
        kv("t.bool_false", V::Bool(false)),
        kv("t.str", V::String("hello\nworld \u{e9}".into())),
        kv("t.u64", V::U64((1 << 63) + 5)),
        kv("t.i64", V::I64(-(1 << 62))),
        kv("t.f64", V::F64(1.0 / 3.0)),
        kv("t.arr.u8", V::Array(MetaArray::U8(vec![1, 2, 255]))),
        kv("t.arr.i8", V::Array(MetaArray::I8(vec![-1, 0, 127]))),
        kv("t.arr.u16", V::Array(MetaArray::U16(vec![0, 65535]))),
        kv("t.arr.i16", V::Array(MetaArray::I16(vec![-32768, 7]))),
        kv("t.arr.u32", V::Array(MetaArray::U32(vec![1, u32::MAX]))),
        kv("t.arr.i32", V::Array(MetaArray::I32(vec![-5, 6, 7]))),
        kv(
            "t.arr.f32",
            V::Array(MetaArray::F32(vec![0.5, -1.25, 1e-6])),
        ),
        kv(
            "t.arr.bool",
            V::Array(MetaArray::Bool(vec![true, false, true])),
        ),
        kv(
            "t.arr.str",
            V::Array(MetaArray::String(strings(&[
                "a",
                "",
                "\u{fc}n\u{ef}",
                "x y",
            ]))),
        ),
        kv("t.arr.u64", V::Array(MetaArray::U64(vec![u64::MAX, 0]))),
        kv(
            "t.arr.i64",
            V::Array(MetaArray::I64(vec![i64::MIN, i64::MAX])),
        ),
        kv("t.arr.f64", V::Array(MetaArray::F64(vec![0.1, -2.5e300]))),
    ]
}

/// The tensors of the fixture: (name, type, numpy shape).
const FIXTURE_TENSORS: [(&str, GgmlType, &[u64]); 11] = [
    ("f32.vec", GgmlType::F32, &[5]),
    ("f32.mat", GgmlType::F32, &[3, 4]),
    ("f16.mat", GgmlType::F16, &[2, 8]),
    ("bf16.mat", GgmlType::BF16, &[2, 3]),
    ("q8_0.mat", GgmlType::Q8_0, &[2, 64]),
    ("q4_0.mat", GgmlType::Q4_0, &[3, 32]),
    ("q4_k.mat", GgmlType::Q4K, &[2, 256]),
    ("q6_k.vec", GgmlType::Q6K, &[256]),
    ("iq2_xs.mat", GgmlType::Iq2Xs, &[1, 256]),
    ("i32.cube", GgmlType::I32, &[2, 2, 2]),
    ("f16.4d", GgmlType::F16, &[1, 2, 1, 2]),
];

/// Tensor bytes as scripts/gguf_fixture.py makes them.
fn fixture_tensor_bytes(k: usize, name: &str, size: usize) -> Vec<u8> {
    if name == "f32.mat" {
        (0..size / 4)
            .flat_map(|i| (i as f32 * 0.25 - 3.0).to_le_bytes())
            .collect()
    } else {
        (0..size)
            .map(|j| ((j * 37 + 11 * k + 5) % 256) as u8)
            .collect()
    }
}

fn fixture_specs() -> Vec<TensorSpec> {
    FIXTURE_TENSORS
        .iter()
        .map(|(name, ty, shape)| TensorSpec {
            name: name.to_string(),
            ty: *ty,
            dims: shape.iter().rev().copied().collect(),
        })
        .collect()
}

#[test]
fn writer_output_equals_gguf_py_bytes() {
    let dir = scratch_dir("compat");
    let out = dir.join("ours.gguf");
    let specs = fixture_specs();
    let mut w = GgufWriter::create(&out, &fixture_metadata(), &specs).unwrap();
    for (k, spec) in specs.iter().enumerate() {
        let size = spec.size().unwrap() as usize;
        w.write_tensor_data(&fixture_tensor_bytes(k, &spec.name, size))
            .unwrap();
    }
    w.finish().unwrap();
    let ours = std::fs::read(&out).unwrap();
    let reference = std::fs::read(fixture("gguf_py_small.gguf")).unwrap();
    assert_eq!(ours.len(), reference.len(), "file sizes differ");
    if let Some(i) = ours.iter().zip(&reference).position(|(a, b)| a != b) {
        panic!(
            "first difference at byte {i}: ours {:#04x}, gguf-py {:#04x}",
            ours[i], reference[i]
        );
    }
    assert_eq!(list_dir(&dir), ["ours.gguf"]);
}

#[test]
fn round_trip_every_metadata_type_and_tensor_type() {
    let dir = scratch_dir("round-trip");
    let out = dir.join("rt.gguf");
    let mut metadata = fixture_metadata();
    // Values the fixture does not cover: extremes, non-finite floats, long and empty strings.
    metadata.push(("x.f32_inf".into(), MetaValue::F32(f32::NEG_INFINITY)));
    metadata.push(("x.f64_tiny".into(), MetaValue::F64(f64::MIN_POSITIVE / 4.0)));
    metadata.push(("x.empty".into(), MetaValue::String(String::new())));
    metadata.push(("x.long".into(), MetaValue::String("ab\u{0}c".repeat(5000))));
    metadata.push((
        "x.empty_arr".into(),
        MetaValue::Array(MetaArray::F32(vec![])),
    ));
    metadata.push(("x.i8_min".into(), MetaValue::I8(i8::MIN)));
    metadata.push(("general.alignment".into(), MetaValue::U32(64)));
    let specs = fixture_specs();
    let data: Vec<Vec<u8>> = specs
        .iter()
        .enumerate()
        .map(|(k, s)| fixture_tensor_bytes(k + 3, &s.name, s.size().unwrap() as usize))
        .collect();
    let mut w = GgufWriter::create(&out, &metadata, &specs).unwrap();
    for d in &data {
        w.write_tensor_data(d).unwrap();
    }
    w.finish().unwrap();

    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 64);
    assert_eq!(
        f.metadata(),
        &metadata[..],
        "metadata (present alignment is not re-added)"
    );
    assert_eq!(f.tensors().len(), specs.len());
    let mut expected_offset = 0;
    for ((info, spec), bytes) in f.tensors().iter().zip(&specs).zip(&data) {
        assert_eq!(
            (&info.name, info.ty, &info.dims),
            (&spec.name, spec.ty, &spec.dims)
        );
        assert_eq!(
            info.offset, expected_offset,
            "{}: offsets are the running padded sum",
            info.name
        );
        assert_eq!(f.tensor_data(info), &bytes[..], "{}", info.name);
        expected_offset += info.size.div_ceil(64) * 64;
    }
    assert_eq!(f.data_start() % 64, 0);
    assert_eq!(
        f.file_size(),
        f.data_start() + expected_offset,
        "last tensor padded too"
    );
}

#[test]
fn writer_adds_default_alignment_last() {
    let dir = scratch_dir("default-alignment");
    let out = dir.join("a.gguf");
    let meta = vec![("k".to_string(), MetaValue::U8(1))];
    GgufWriter::create(&out, &meta, &[])
        .unwrap()
        .finish()
        .unwrap();
    let f = GgufFile::open(&out).unwrap();
    let keys: Vec<&str> = f.metadata().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["k", "general.alignment"]);
    assert_eq!(f.get("general.alignment"), Some(&MetaValue::U32(32)));
}

fn one_tensor(name: &str, n: u64) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        ty: GgmlType::F32,
        dims: vec![n],
    }
}

#[test]
fn error_midway_leaves_no_file_and_keeps_old_output() {
    let dir = scratch_dir("atomic-error");
    let out = dir.join("model.gguf");
    std::fs::write(&out, b"old contents").unwrap();
    let specs = [one_tensor("a", 4), one_tensor("b", 8)];
    let mut w = GgufWriter::create(&out, &[], &specs).unwrap();
    assert_eq!(
        list_dir(&dir).len(),
        2,
        "a temporary file exists while writing"
    );
    w.write_tensor_data(&[0u8; 16]).unwrap();
    let err = w.write_tensor_data(&[0u8; 3]).unwrap_err();
    assert!(
        matches!(err, GgufError::Write(ref m) if m.contains("got 3 bytes, expected 32")),
        "{err}"
    );
    // After a failed write, finish refuses, and the temporary file goes away.
    assert!(w.finish().is_err());
    assert_eq!(list_dir(&dir), ["model.gguf"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"old contents");
}

/// A tensor written in parts (as the converter streams large tensors) gives the bytes of the
/// whole write; parts that run past the tensor, or a whole write after a part, are errors.
#[test]
fn tensors_written_in_parts_equal_whole_writes() {
    let dir = scratch_dir("parts");
    let specs = [one_tensor("a", 12), one_tensor("b", 4), one_tensor("c", 0)];
    let data: Vec<Vec<u8>> = specs
        .iter()
        .enumerate()
        .map(|(k, s)| fixture_tensor_bytes(k, &s.name, s.size().unwrap() as usize))
        .collect();
    let whole = dir.join("whole.gguf");
    let mut w = GgufWriter::create(&whole, &[], &specs).unwrap();
    for d in &data {
        w.write_tensor_data(d).unwrap();
    }
    w.finish().unwrap();
    let parts = dir.join("parts.gguf");
    let mut w = GgufWriter::create(&parts, &[], &specs).unwrap();
    for piece in data[0].chunks(5) {
        w.write_tensor_part(piece).unwrap();
    }
    w.write_tensor_part(&data[1][..10]).unwrap();
    w.write_tensor_part(&data[1][10..]).unwrap();
    w.write_tensor_part(&[]).unwrap(); // the empty tensor "c"
    w.finish().unwrap();
    assert_eq!(
        std::fs::read(&whole).unwrap(),
        std::fs::read(&parts).unwrap()
    );

    let out = dir.join("overrun.gguf");
    let mut w = GgufWriter::create(&out, &[], &specs).unwrap();
    w.write_tensor_part(&data[0][..40]).unwrap();
    let err = w.write_tensor_part(&data[0][..9]).unwrap_err().to_string();
    assert!(err.contains("49 bytes written, expected 48"), "{err}");
    assert!(w.finish().is_err());
    let mut w = GgufWriter::create(&out, &[], &specs).unwrap();
    w.write_tensor_part(&data[0][..8]).unwrap();
    let err = w.write_tensor_data(&data[0]).unwrap_err().to_string();
    assert!(err.contains("after 8 bytes"), "{err}");
    assert!(w.finish().is_err());
    assert!(!out.exists());
}

#[test]
fn drop_without_finish_leaves_nothing() {
    let dir = scratch_dir("atomic-drop");
    let out = dir.join("model.gguf");
    let specs = [one_tensor("a", 4)];
    {
        let mut w = GgufWriter::create(&out, &[], &specs).unwrap();
        w.write_tensor_data(&[1u8; 16]).unwrap();
        assert!(
            list_dir(&dir)[0].starts_with(".model.gguf.tmp"),
            "{:?}",
            list_dir(&dir)
        );
    }
    assert!(list_dir(&dir).is_empty(), "{:?}", list_dir(&dir));
}

#[test]
fn finish_with_missing_tensors_fails_and_cleans_up() {
    let dir = scratch_dir("atomic-missing");
    let out = dir.join("m.gguf");
    let specs = [one_tensor("a", 4), one_tensor("b", 4)];
    let mut w = GgufWriter::create(&out, &[], &specs).unwrap();
    w.write_tensor_data(&[0u8; 16]).unwrap();
    let err = w.finish().unwrap_err().to_string();
    assert!(err.contains("only 1 of 2 tensors"), "{err}");
    assert!(list_dir(&dir).is_empty());
}

#[test]
fn create_refuses_bad_requests_without_leaving_files() {
    let dir = scratch_dir("create-refuses");
    let out = dir.join("m.gguf");
    let dup = [one_tensor("a", 4), one_tensor("a", 4)];
    let long_name = "x".repeat(64);
    type Case<'a> = (Vec<(String, MetaValue)>, Vec<TensorSpec>, &'a str);
    let cases: Vec<Case> = vec![
        (vec![], dup.to_vec(), "duplicate tensor name a"),
        (
            vec![],
            vec![one_tensor(&long_name, 1)],
            "is 64 bytes (max 63)",
        ),
        (
            vec![],
            vec![TensorSpec {
                name: "q".into(),
                ty: GgmlType::Q4_0,
                dims: vec![33],
            }],
            "not a multiple of the Q4_0 block size 32",
        ),
        (
            vec![],
            vec![TensorSpec {
                name: "d".into(),
                ty: GgmlType::F32,
                dims: vec![1; 5],
            }],
            "5 dimensions",
        ),
        (
            vec![
                ("k".into(), MetaValue::U8(1)),
                ("k".into(), MetaValue::U8(2)),
            ],
            vec![],
            "duplicate metadata key k",
        ),
        (
            vec![("general.alignment".into(), MetaValue::U32(48))],
            vec![],
            "power of two",
        ),
        (
            vec![("general.alignment".into(), MetaValue::U64(32))],
            vec![],
            "power of two",
        ),
    ];
    for (meta, specs, expected) in cases {
        let err = GgufWriter::create(&out, &meta, &specs)
            .err()
            .expect(expected)
            .to_string();
        assert!(err.contains(expected), "{err} (wanted {expected})");
        assert!(list_dir(&dir).is_empty());
    }
    let missing_dir = dir.join("no/such/dir/m.gguf");
    let err = GgufWriter::create(&missing_dir, &[], &[]).err().unwrap();
    assert!(matches!(err, GgufError::Io { .. }), "{err}");
}
