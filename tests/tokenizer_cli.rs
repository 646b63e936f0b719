//! `rg-tokenize` end to end on GGUFs built from the tiny HF fixture (ids from Python
//! `tokenizers`, see scripts/make_tiny_tokenizer_fixture.py), and its error handling.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rgemma::gguf::{GgufWriter, MetaArray, MetaValue};
use serde_json::Value;

const FIXTURE_DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/tokenizer-tiny-hf"
);

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{FIXTURE_DIR}/expected.json")).unwrap())
        .unwrap()
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rgemma-tokenizer-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A tensor-less GGUF of another architecture carrying the fixture's tokenizer: the json when
/// `with_json`, else only the ggml arrays.
fn write_gguf(name: &str, with_json: bool) -> PathBuf {
    let g = &expected()["ggml"];
    let strings = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let mut metadata = vec![
        (
            "general.architecture".to_owned(),
            MetaValue::String("llama".into()),
        ),
        (
            "tokenizer.ggml.model".to_owned(),
            MetaValue::String("llama".into()),
        ),
        (
            "tokenizer.ggml.tokens".to_owned(),
            MetaValue::Array(MetaArray::String(strings(&g["tokens"]))),
        ),
        (
            "tokenizer.ggml.scores".to_owned(),
            MetaValue::Array(MetaArray::F32(
                g["scores"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect(),
            )),
        ),
        (
            "tokenizer.ggml.token_type".to_owned(),
            MetaValue::Array(MetaArray::I32(
                g["token_type"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap() as i32)
                    .collect(),
            )),
        ),
        ("tokenizer.ggml.bos_token_id".to_owned(), MetaValue::U32(2)),
        ("tokenizer.ggml.eos_token_id".to_owned(), MetaValue::U32(1)),
        (
            "tokenizer.ggml.add_space_prefix".to_owned(),
            MetaValue::Bool(false),
        ),
    ];
    if with_json {
        let json = std::fs::read_to_string(format!("{FIXTURE_DIR}/tokenizer.json")).unwrap();
        metadata.push((
            "tokenizer.huggingface.json".to_owned(),
            MetaValue::String(json),
        ));
    }
    let path = temp_dir().join(format!("{name}.gguf"));
    GgufWriter::create(&path, &metadata, &[])
        .unwrap()
        .finish()
        .unwrap();
    path
}

fn rg_tokenize(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rg-tokenize"))
        .args(args)
        .output()
        .expect("run rg-tokenize")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn ids_match_python_tokenizers() {
    let expected = expected();
    for with_json in [true, false] {
        let model = write_gguf(if with_json { "cli-hf" } else { "cli-ggml" }, with_json);
        for case in expected["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let want = |field: &str| {
                let ids: Vec<String> = case[field]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_string())
                    .collect();
                format!("[{}]\n", ids.join(", "))
            };
            let m = path_str(&model);
            assert_eq!(
                stdout(&rg_tokenize(&["-m", m, "-p", text, "--ids"])),
                want("ids_with_bos"),
                "{text:?}"
            );
            assert_eq!(
                stdout(&rg_tokenize(&["-m", m, "-p", text, "--ids", "--no-bos"])),
                want("ids"),
                "{text:?}"
            );
            assert_eq!(
                stdout(&rg_tokenize(&[
                    "-m",
                    m,
                    "-p",
                    text,
                    "--ids",
                    "--no-bos",
                    "--no-parse-special"
                ])),
                want("ids_split_special"),
                "{text:?}"
            );
        }
    }
}

#[test]
fn lines_show_id_and_text_and_file_input_works() {
    let model = write_gguf("cli-lines", false);
    let text_file = temp_dir().join("prompt.txt");
    std::fs::write(&text_file, "hello world").unwrap();
    let out = stdout(&rg_tokenize(&[
        "-m",
        path_str(&model),
        "-f",
        path_str(&text_file),
    ]));
    let want: Vec<String> = expected()["cases"][0]["ids_with_bos"]
        .as_array()
        .unwrap()
        .iter()
        .zip(["<bos>", "hello", " world"])
        .map(|(id, text)| format!("{:6} -> '{text}'", id.as_u64().unwrap()))
        .collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), want);
}

#[test]
fn errors_are_one_line_and_exit_1() {
    let no_tokenizer = temp_dir().join("no-tokenizer.gguf");
    GgufWriter::create(
        &no_tokenizer,
        &[(
            "general.architecture".to_owned(),
            MetaValue::String("x".into()),
        )],
        &[],
    )
    .unwrap()
    .finish()
    .unwrap();
    let not_utf8 = temp_dir().join("latin1.txt");
    std::fs::write(&not_utf8, b"caf\xe9").unwrap();
    let not_gguf = temp_dir().join("not.gguf");
    std::fs::write(&not_gguf, b"this is not a gguf file at all").unwrap();
    let model = write_gguf("cli-errors", false);
    let m = path_str(&model);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["-m", "/nonexistent/x.gguf", "-p", "hi"],
            "No such file",
        ),
        (
            vec!["-m", path_str(&no_tokenizer), "-p", "hi"],
            "no tokenizer",
        ),
        (vec!["-m", path_str(&not_gguf), "-p", "hi"], ""),
        (vec!["-m", m, "-f", path_str(&not_utf8)], "UTF-8"),
        (
            vec!["-m", m, "-f", "/nonexistent/prompt.txt"],
            "No such file",
        ),
        (vec!["-m", m], "required"),
        (vec!["-m", m, "-p", "a", "-f", "b"], "cannot be used"),
        (vec!["-p", "hi"], "--model"),
        (vec!["-m", m, "-p", "hi", "--bogus"], "--bogus"),
    ];
    for (args, needle) in cases {
        let out = rg_tokenize(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("rg-tokenize: ") && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
