//! The C ABI: the C and Python examples against the Rust engine, valgrind, error handling,
//! threads, state save/restore, and many sequences (batches, forks, per-sequence states).

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rgemma::capi::*;
use rgemma::model::{Context, ContextParams, Model};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-rg");
const N_VOCAB: usize = 512;

fn work_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("capi");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Converts the fixture checkpoint to `ty` with rg-quantize (tests share the outputs; the
/// converter's atomic rename makes concurrent conversions safe).
fn converted(ty: &str) -> PathBuf {
    let out = work_dir().join(format!("tiny-rg-{ty}.gguf"));
    if !out.exists() {
        let st = Command::new(env!("CARGO_BIN_EXE_rg-quantize"))
            .args([FIXTURE, out.to_str().unwrap(), ty, "--quiet", "--force"])
            .status()
            .unwrap();
        assert!(st.success(), "rg-quantize {ty}");
    }
    out
}

/// The directory holding the librgemma.so / librgemma.a of this build: `cargo test` leaves
/// them in `deps/` beside the binaries (`cargo build` also copies them up one level, where an
/// older build's copy may linger, so `deps/` comes first).
fn lib_dir() -> PathBuf {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_rg-quantize"))
        .parent()
        .unwrap();
    [bin_dir.join("deps"), bin_dir.to_path_buf()]
        .into_iter()
        .find(|d| d.join("librgemma.so").exists() || d.join("librgemma.dylib").exists())
        .unwrap_or_else(|| panic!("librgemma not built in {} or its deps/", bin_dir.display()))
}

fn prompt() -> Vec<u32> {
    vec![2, 17, 300, 45, 9, 411, 123]
}

fn ids_arg(ids: &[u32]) -> String {
    ids.iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Greedy generation with the Rust engine directly: the ids and the logits behind each choice.
fn rust_greedy(model_path: &Path, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<f32>) {
    let model = Arc::new(Model::load(model_path).unwrap());
    let mut ctx = Context::new(model, ContextParams::default()).unwrap();
    ctx.eval(prompt, false).unwrap();
    let (mut ids, mut rows) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let logits = ctx.logits();
        rows.extend_from_slice(logits);
        let best = argmax(logits);
        ids.push(best);
        ctx.eval(&[best], false).unwrap();
    }
    (ids, rows)
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn parse_ids(s: &[u8]) -> Vec<u32> {
    String::from_utf8_lossy(s)
        .trim()
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect()
}

fn build_c_example() -> PathBuf {
    build_c("simple")
}

/// Compiles examples/c/NAME.c against the shared librgemma (warnings are errors).
fn build_c(name: &str) -> PathBuf {
    let exe = work_dir()
        .join(format!("{name}-{:?}", std::thread::current().id()).replace(['(', ')'], ""));
    let root = env!("CARGO_MANIFEST_DIR");
    let st = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-O1", "-g", "-Wall", "-Wextra", "-Werror", "-std=c11"])
        .arg(format!("-I{root}/include"))
        .arg(format!("{root}/examples/c/{name}.c"))
        .arg(format!("-L{}", lib_dir().display()))
        .args(["-lrgemma", "-o"])
        .arg(&exe)
        .status()
        .unwrap();
    assert!(st.success(), "compiling examples/c/{name}.c");
    exe
}

/// Runs examples/python/simple.py; `None` (with a "skipped" line) when there is no Python.
fn run_python_example(
    model: &Path,
    prompt: &str,
    n: usize,
    logits_out: Option<&Path>,
) -> Option<std::process::Output> {
    let python = std::env::var("RG_PYTHON").unwrap_or_else(|_| "python3".into());
    if Command::new(&python).arg("--version").output().is_err() {
        eprintln!("skipped: no python3");
        return None;
    }
    let mut cmd = Command::new(&python);
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/python/simple.py"
    ))
    .arg(model)
    .arg(prompt)
    .arg(n.to_string())
    .env("RGEMMA_LIB", lib_dir().join("librgemma.so"));
    if let Some(path) = logits_out {
        cmd.arg(path);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "python example failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out)
}

/// Runs a built C example with librgemma on the loader path.
fn run_c_example(
    exe: &Path,
    model: &Path,
    prompt: &str,
    n: usize,
    logits_out: Option<&Path>,
) -> std::process::Output {
    let mut cmd = Command::new(exe);
    cmd.arg(model)
        .arg(prompt)
        .arg(n.to_string())
        .env("LD_LIBRARY_PATH", lib_dir());
    if let Some(path) = logits_out {
        cmd.arg(path);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "C example failed: {stderr}");
    assert!(stderr.contains("reproduces the logits: yes"), "{stderr}");
    out
}

#[test]
fn c_example_matches_the_rust_engine() {
    let model = converted("F32");
    let n = 8;
    let (ids, rows) = rust_greedy(&model, &prompt(), n);
    let logits_out = work_dir().join("c_logits.bin");
    let out = run_c_example(
        &build_c_example(),
        &model,
        &ids_arg(&prompt()),
        n,
        Some(&logits_out),
    );
    assert_eq!(parse_ids(&out.stdout), ids);
    assert_eq!(
        read_f32(&logits_out),
        rows,
        "C logits differ from the Rust engine's"
    );
}

/// Runs `exe args` under valgrind (definite or indirect leaks and memory errors fail the
/// run) and returns its stdout; `None` when valgrind is not installed.
fn run_clean_under_valgrind(exe: &Path, args: &[&str]) -> Option<String> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        eprintln!("skipped: valgrind not installed");
        return None;
    }
    let out = Command::new("valgrind")
        .args([
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect",
        ])
        .arg(exe)
        .args(args)
        .env("LD_LIBRARY_PATH", lib_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "valgrind reported errors or leaks:\n{stderr}"
    );
    assert!(stderr.contains("ERROR SUMMARY: 0 errors"), "{stderr}");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn c_example_is_clean_under_valgrind() {
    let model = converted("Q8_0");
    let exe = build_c_example();
    let model = model.to_str().expect("utf-8 path");
    run_clean_under_valgrind(&exe, &[model, "2,17,300", "3"]);
}

#[test]
fn python_example_matches_the_rust_engine() {
    let model = converted("F32");
    let n = 6;
    let logits_out = work_dir().join("py_logits.bin");
    let Some(out) = run_python_example(&model, &ids_arg(&prompt()), n, Some(&logits_out)) else {
        return;
    };
    let (ids, rows) = rust_greedy(&model, &prompt(), n);
    assert_eq!(parse_ids(&out.stdout), ids);
    assert_eq!(read_f32(&logits_out), rows);
}

fn last_error() -> String {
    // SAFETY: rg_last_error returns a valid NUL-terminated string.
    unsafe { CStr::from_ptr(rg_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn load(path: &Path) -> *mut rg_model {
    let c = CString::new(path.to_str().unwrap()).unwrap();
    let m = rg_model_load(c.as_ptr(), std::ptr::null());
    assert!(!m.is_null(), "{}", last_error());
    m
}

/// The logits of the last decode, copied.
fn logits_of(ctx: *mut rg_context) -> Vec<f32> {
    let p = rg_get_logits(ctx);
    assert!(!p.is_null(), "{}", last_error());
    // SAFETY: non-null logits hold n_vocab floats until the next decode on ctx.
    unsafe { std::slice::from_raw_parts(p, N_VOCAB) }.to_vec()
}

#[test]
fn null_pointers_and_bad_arguments_are_errors() {
    assert!(rg_model_load(std::ptr::null(), std::ptr::null()).is_null());
    assert!(last_error().contains("NULL"), "{}", last_error());
    let missing = CString::new("/nonexistent/model.gguf").unwrap();
    assert!(rg_model_load(missing.as_ptr(), std::ptr::null()).is_null());
    assert!(last_error().contains("nonexistent"), "{}", last_error());
    assert_eq!(rg_model_n_vocab(std::ptr::null()), -1);
    assert!(rg_context_new(std::ptr::null(), std::ptr::null()).is_null());
    assert_eq!(
        rg_decode(std::ptr::null_mut(), std::ptr::null(), 1),
        rg_status::RG_ERR_INVALID_ARGUMENT
    );
    assert!(rg_get_logits(std::ptr::null_mut()).is_null());
    assert_eq!(rg_state_size(std::ptr::null()), 0);
    assert_eq!(
        rg_sampler_sample(std::ptr::null_mut(), std::ptr::null_mut()),
        -1
    );
    assert_eq!(
        rg_tokenize(
            std::ptr::null(),
            std::ptr::null(),
            0,
            std::ptr::null_mut(),
            0,
            true
        ),
        i32::MIN
    );
    rg_model_free(std::ptr::null_mut());
    rg_context_free(std::ptr::null_mut());
    rg_sampler_free(std::ptr::null_mut());
    rg_sampler_reset(std::ptr::null_mut());
    rg_context_reset(std::ptr::null_mut());

    // A corrupt file is a format error, not a crash.
    let corrupt = work_dir().join("corrupt.gguf");
    let mut bytes = std::fs::read(converted("Q8_0")).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&corrupt, bytes).unwrap();
    let c = CString::new(corrupt.to_str().unwrap()).unwrap();
    assert!(rg_model_load(c.as_ptr(), std::ptr::null()).is_null());
    assert!(!last_error().is_empty());

    let model = load(&converted("F32"));
    assert_eq!(rg_model_n_vocab(model), N_VOCAB as i32);
    let ctx = rg_context_new(model, std::ptr::null());
    assert!(!ctx.is_null());
    assert!(rg_get_logits(ctx).is_null(), "no logits before any decode");
    let bad = [2, 512];
    assert_eq!(
        rg_decode(ctx, bad.as_ptr(), 2),
        rg_status::RG_ERR_INVALID_ARGUMENT
    );
    assert!(last_error().contains("512"), "{}", last_error());
    assert_eq!(
        rg_context_n_past(ctx),
        0,
        "a failed decode leaves the context unchanged"
    );
    assert_eq!(
        rg_decode(ctx, [-1].as_ptr(), 1),
        rg_status::RG_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        rg_decode(ctx, bad.as_ptr(), -1),
        rg_status::RG_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        rg_decode(ctx, bad.as_ptr(), 0),
        rg_status::RG_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        rg_decode(ctx, std::ptr::null(), 3),
        rg_status::RG_ERR_INVALID_ARGUMENT
    );
    let p = rg_context_params {
        n_batch: 0,
        ..rg_context_default_params()
    };
    assert!(rg_context_new(model, &p).is_null());
    let p = rg_context_params {
        n_batch: 8,
        n_threads: -2,
        ..rg_context_default_params()
    };
    assert!(rg_context_new(model, &p).is_null());
    let sp = rg_sampler_params {
        top_p: 2.0,
        ..rg_sampler_default_params()
    };
    assert!(rg_sampler_new(&sp).is_null());
    assert!(last_error().contains("top-p"), "{}", last_error());
    // The fixture has no tokenizer: tokenizing is an error, not a crash.
    let text = b"hello";
    let mut toks = [0i32; 8];
    assert_eq!(
        rg_tokenize(model, text.as_ptr().cast(), 5, toks.as_mut_ptr(), 8, true),
        i32::MIN
    );
    assert!(last_error().contains("tokenizer"), "{}", last_error());
    let s = rg_sampler_new(std::ptr::null());
    assert_eq!(rg_sampler_sample(s, ctx), -1, "nothing decoded yet");
    assert_eq!(rg_decode(ctx, [2, 17].as_ptr(), 2), rg_status::RG_OK);
    let t = rg_sampler_sample(s, ctx);
    assert_eq!(
        t as u32,
        argmax(&logits_of(ctx)),
        "NULL sampler params = greedy"
    );
    rg_context_reset(ctx);
    assert_eq!(rg_context_n_past(ctx), 0);
    assert!(rg_get_logits(ctx).is_null(), "no logits after reset");
    rg_sampler_free(s);
    rg_context_free(ctx);
    rg_model_free(model);
}

#[test]
fn state_save_restore_is_bit_identical_and_validated() {
    let model = load(&converted("F32"));
    let ctx = rg_context_new(model, std::ptr::null());
    // Longer than the fixture's window (16), so the K/V rings have wrapped.
    let prompt: Vec<i32> = (0..40).map(|i| 2 + (i * 37) % 500).collect();
    assert_eq!(
        rg_decode(ctx, prompt.as_ptr(), prompt.len() as i32),
        rg_status::RG_OK
    );
    let size = rg_state_size(ctx);
    assert!(size > 0);
    let mut state = vec![0u8; size];
    assert_eq!(
        rg_state_save(ctx, state.as_mut_ptr(), size - 1),
        rg_status::RG_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        rg_state_save(ctx, state.as_mut_ptr(), size),
        rg_status::RG_OK
    );
    let at_save = logits_of(ctx);

    let run = |ctx: *mut rg_context| -> Vec<f32> {
        let mut rows = Vec::new();
        for t in [33, 44, 55, 66, 77] {
            assert_eq!(rg_decode(ctx, &t, 1), rg_status::RG_OK);
            rows.extend(logits_of(ctx));
        }
        rows
    };
    let first = run(ctx);
    assert_eq!(rg_state_load(ctx, state.as_ptr(), size), rg_status::RG_OK);
    assert_eq!(rg_context_n_past(ctx), prompt.len() as i32);
    assert_eq!(
        logits_of(ctx),
        at_save,
        "the last logits are part of the state"
    );
    assert_eq!(
        run(ctx),
        first,
        "restored state must give bit-identical logits"
    );

    // Into a fresh context too.
    let ctx2 = rg_context_new(model, std::ptr::null());
    assert_eq!(rg_state_load(ctx2, state.as_ptr(), size), rg_status::RG_OK);
    assert_eq!(run(ctx2), first);

    // Wrong size, corrupt, or from another model: errors, context unchanged.
    let before = rg_context_n_past(ctx2);
    let before_logits = logits_of(ctx2);
    assert_eq!(
        rg_state_load(ctx2, state.as_ptr(), size - 1),
        rg_status::RG_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        rg_state_load(ctx2, std::ptr::null(), size),
        rg_status::RG_ERR_INVALID_ARGUMENT
    );
    for pos in [0, 20, size / 2, size - 1] {
        let mut corrupt = state.clone();
        corrupt[pos] ^= 0x5a;
        assert_eq!(
            rg_state_load(ctx2, corrupt.as_ptr(), size),
            rg_status::RG_ERR_INVALID_ARGUMENT,
            "byte {pos}"
        );
    }
    assert_eq!(rg_context_n_past(ctx2), before);
    assert_eq!(logits_of(ctx2), before_logits);
    for other_type in ["Q8_0", "BF16"] {
        let other = load(&converted(other_type));
        let octx = rg_context_new(other, std::ptr::null());
        assert_eq!(rg_state_size(octx), size, "same geometry, same state size");
        assert_eq!(
            rg_state_load(octx, state.as_ptr(), size),
            rg_status::RG_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains("another model"), "{}", last_error());
        rg_context_free(octx);
        rg_model_free(other);
    }
    rg_context_free(ctx2);
    rg_context_free(ctx);
    rg_model_free(model);
}

#[test]
fn two_contexts_on_one_model_in_two_threads() {
    let path = converted("F32");
    let model = load(&path);
    let (ids, expected) = rust_greedy(&path, &prompt(), 5);
    struct Shared(*mut rg_model);
    // SAFETY: rg_model is immutable after load and documented as shareable across threads.
    unsafe impl Send for Shared {}
    unsafe impl Sync for Shared {}
    let shared = Arc::new(Shared(model));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let m = shared.0;
                let ctx = rg_context_new(m, std::ptr::null());
                let greedy = rg_sampler_new(std::ptr::null());
                let prompt: Vec<i32> = prompt().iter().map(|&t| t as i32).collect();
                assert_eq!(
                    rg_decode(ctx, prompt.as_ptr(), prompt.len() as i32),
                    rg_status::RG_OK
                );
                let (mut gen, mut rows) = (Vec::new(), Vec::new());
                for _ in 0..5 {
                    rows.extend(logits_of(ctx));
                    let t = rg_sampler_sample(greedy, ctx);
                    gen.push(t as u32);
                    assert_eq!(rg_decode(ctx, &t, 1), rg_status::RG_OK);
                }
                rg_sampler_free(greedy);
                rg_context_free(ctx);
                (gen, rows)
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), (ids.clone(), expected.clone()));
    }
    rg_model_free(model);
}

const TEXT_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/tiny-fortunes-q8_0.gguf"
);

#[test]
fn tokenizer_functions_match_the_rust_tokenizer() {
    let rust = Model::load(TEXT_MODEL).unwrap();
    let tok = rust.tokenizer().expect("the bundled model has a tokenizer");
    let model = load(Path::new(TEXT_MODEL));
    assert!(rg_model_has_tokenizer(model));
    assert_eq!(rg_token_bos(model), tok.bos() as i32);
    assert_eq!(rg_token_eos(model), tok.eos() as i32);
    let eot = rg_token_eot(model);
    assert_eq!(Some(eot as u32), tok.token_id("<end_of_turn>"));
    assert!(rg_token_is_eog(model, eot) && rg_token_is_eog(model, rg_token_eos(model)));
    assert!(!rg_token_is_eog(model, 100));

    let text = "<start_of_turn>user\nWhat is a fortune, café? 🍀<end_of_turn>\n";
    let expected = tok.encode(text, true, true).unwrap();
    let mut ids = vec![0i32; 4];
    let n = rg_tokenize(
        model,
        text.as_ptr().cast(),
        text.len() as i32,
        ids.as_mut_ptr(),
        4,
        true,
    );
    assert_eq!(
        n,
        -(expected.len() as i32),
        "too small a buffer reports the size needed"
    );
    ids.resize(expected.len(), 0);
    let n = rg_tokenize(
        model,
        text.as_ptr().cast(),
        text.len() as i32,
        ids.as_mut_ptr(),
        ids.len() as i32,
        true,
    );
    assert_eq!(n, expected.len() as i32);
    assert_eq!(ids.iter().map(|&t| t as u32).collect::<Vec<_>>(), expected);
    // Invalid UTF-8 is an error, not a crash.
    let bad = [0xffu8, 0xfe];
    assert_eq!(
        rg_tokenize(model, bad.as_ptr().cast(), 2, ids.as_mut_ptr(), 8, false),
        i32::MIN
    );

    // Pieces concatenate to the text; detokenize gives it back.
    let mut bytes = Vec::new();
    for &id in &ids[1..] {
        let mut buf = [0u8; 64];
        let n = rg_token_to_piece(model, id, buf.as_mut_ptr().cast(), 64);
        assert!(n >= 0, "{}", last_error());
        bytes.extend_from_slice(&buf[..n as usize]);
    }
    assert_eq!(String::from_utf8(bytes).unwrap(), text);
    let mut out = vec![0u8; 256];
    let n = rg_detokenize(
        model,
        ids[1..].as_ptr(),
        ids.len() as i32 - 1,
        out.as_mut_ptr().cast(),
        256,
        false,
    );
    assert_eq!(&out[..n as usize], text.as_bytes());
    assert_eq!(out[n as usize], 0, "NUL-terminated");
    let n_small = rg_detokenize(
        model,
        ids[1..].as_ptr(),
        ids.len() as i32 - 1,
        out.as_mut_ptr().cast(),
        3,
        false,
    );
    assert_eq!(n_small, -(text.len() as i32 + 1));
    let mut buf = [0u8; 8];
    assert_eq!(
        rg_token_to_piece(model, 1 << 20, buf.as_mut_ptr().cast(), 8),
        i32::MIN
    );
    rg_model_free(model);
}

/// The Rust engine's greedy continuation of `prompt` with the bundled text model, decoded.
fn rust_greedy_text(prompt: &str, n: usize) -> String {
    let rust = Model::load(TEXT_MODEL).unwrap();
    let tok = rust.tokenizer().unwrap();
    let ids = tok.encode(prompt, true, true).unwrap();
    let (generated, _) = rust_greedy(Path::new(TEXT_MODEL), &ids, n);
    tok.decode(&generated, false).unwrap()
}

#[test]
fn c_example_prints_text_with_a_tokenized_model() {
    let out = run_c_example(
        &build_c_example(),
        Path::new(TEXT_MODEL),
        "The meaning of life is",
        24,
        None,
    );
    let text = rust_greedy_text("The meaning of life is", 24);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end_matches('\n'),
        text
    );
    assert!(
        text.chars().filter(|c| c.is_alphabetic()).count() > 20,
        "{text:?}"
    );
}

#[test]
fn python_example_prints_text_with_a_tokenized_model() {
    let Some(out) = run_python_example(Path::new(TEXT_MODEL), "A fortune:", 20, None) else {
        return;
    };
    let text = rust_greedy_text("A fortune:", 20);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end_matches('\n'),
        text
    );
}

#[test]
fn c_example_links_against_the_static_library() {
    let exe = work_dir().join("simple-static");
    let root = env!("CARGO_MANIFEST_DIR");
    let st = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-O1", "-std=c11"])
        .arg(format!("-I{root}/include"))
        .arg(format!("{root}/examples/c/simple.c"))
        .arg(lib_dir().join("librgemma.a"))
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .status()
        .unwrap();
    assert!(st.success(), "linking examples/c/simple.c with librgemma.a");
    let model = converted("F32");
    let (ids, _) = rust_greedy(&model, &prompt(), 4);
    let out = Command::new(&exe)
        .arg(&model)
        .arg(ids_arg(&prompt()))
        .arg("4")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(parse_ids(&out.stdout), ids);
}

// ---- Many sequences: batches, forks, per-sequence states ----

/// Counts heap allocations made on the calling thread while `COUNTING` is set (the engine's
/// worker threads are covered by tests/engine_alloc.rs; here the C layer itself is checked).
struct ThreadCounting;

thread_local! {
    static COUNTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static COUNTED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn count_allocation() {
    // try_with: an allocation during thread teardown must not panic.
    if COUNTING.try_with(|c| c.get()).unwrap_or(false) {
        let _ = COUNTED.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl std::alloc::GlobalAlloc for ThreadCounting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        count_allocation();
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static GLOBAL: ThreadCounting = ThreadCounting;

/// Allocations made on this thread by `f`.
fn allocations_in(f: impl FnOnce()) -> usize {
    COUNTED.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    COUNTED.with(|n| n.get())
}

const ALONE_TOL: f32 = 1e-5;

fn new_ctx(model: *mut rg_model, n_seq: i32, n_batch: i32, kv: rg_kv_type) -> *mut rg_context {
    let p = rg_context_params {
        n_batch,
        n_seq_max: n_seq,
        kv_type: kv,
        ..rg_context_default_params()
    };
    let ctx = rg_context_new(model, &p);
    assert!(!ctx.is_null(), "{}", last_error());
    ctx
}

/// `n_vocab` floats at `p`, copied; `None` for NULL.
fn floats(p: *const f32) -> Option<Vec<f32>> {
    // SAFETY: non-null logits of the C API hold n_vocab floats until the context changes.
    (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts(p, N_VOCAB) }.to_vec())
}

fn seq_logits(ctx: *mut rg_context, seq: i32) -> Vec<f32> {
    floats(rg_seq_get_logits(ctx, seq))
        .unwrap_or_else(|| panic!("sequence {seq}: {}", last_error()))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Writes `rows` (token, sequence, wants logits) into `batch`'s arrays.
fn fill(batch: &mut rg_batch, rows: &[(i32, i32, bool)]) {
    // SAFETY: every batch passed here comes from rg_batch_init with at least rows.len()
    // rows (the callers size them so).
    let (tokens, seqs, logits) = unsafe {
        (
            std::slice::from_raw_parts_mut(batch.token, rows.len()),
            std::slice::from_raw_parts_mut(batch.seq_id, rows.len()),
            std::slice::from_raw_parts_mut(batch.logits, rows.len()),
        )
    };
    for (i, &(t, s, l)) in rows.iter().enumerate() {
        tokens[i] = t;
        seqs[i] = s;
        logits[i] = l as i8;
    }
    batch.n_tokens = rows.len() as i32;
}

/// Logits after each token of `tokens`, fed one at a time to a single-sequence context
/// through rg_decode: the reference that batched decoding must reproduce.
fn alone(model: *mut rg_model, tokens: &[i32]) -> Vec<Vec<f32>> {
    let ctx = rg_context_new(model, std::ptr::null());
    let rows = tokens
        .iter()
        .map(|t| {
            assert_eq!(rg_decode(ctx, t, 1), rg_status::RG_OK, "{}", last_error());
            logits_of(ctx)
        })
        .collect();
    rg_context_free(ctx);
    rows
}

fn token_stream(len: usize, salt: usize) -> Vec<i32> {
    (0..len)
        .map(|t| 2 + ((t * 31 + salt * 97) % 500) as i32)
        .collect()
}

#[test]
fn batch_decode_of_many_sequences_equals_each_sequence_alone() {
    let model = load(&converted("F32"));
    // Two streams longer than the fixture's attention window (16): their rings wrap.
    let lens = [23usize, 5, 17, 30];
    let streams: Vec<Vec<i32>> = lens
        .iter()
        .enumerate()
        .map(|(s, &n)| token_stream(n, s))
        .collect();
    let reference: Vec<Vec<Vec<f32>>> = streams.iter().map(|t| alone(model, t)).collect();

    let n_batch = 8;
    let ctx = new_ctx(model, 4, n_batch, RG_KV_F32);
    assert_eq!(rg_context_n_seq_max(ctx), 4);
    let mut batch = rg_batch_init(n_batch);
    assert!(!batch.token.is_null(), "{}", last_error());
    let mut next = [0usize; 4];
    let mut last_logits: Vec<Option<Vec<f32>>> = vec![None; 4];
    let (mut calls, mut rows_total, mut compared) = (0, 0, 0);
    while next.iter().zip(&lens).any(|(n, l)| n < l) {
        // Round robin, up to 3 rows per sequence per turn, until the batch is full: rows of
        // one sequence are consecutive positions, sequences interleave.
        let mut rows: Vec<(i32, i32, bool)> = Vec::new();
        let mut pos: Vec<usize> = Vec::new();
        'fill: loop {
            let before = rows.len();
            for s in 0..4 {
                for _ in 0..3 {
                    if rows.len() == n_batch as usize {
                        break 'fill;
                    }
                    if next[s] < lens[s] {
                        // Every third row of the run asks for no logits.
                        let wants = (rows_total + rows.len()) % 3 != 2;
                        rows.push((streams[s][next[s]], s as i32, wants));
                        pos.push(next[s]);
                        next[s] += 1;
                    }
                }
            }
            if rows.len() == before {
                break;
            }
        }
        fill(&mut batch, &rows);
        assert_eq!(
            rg_decode_batch(ctx, batch),
            rg_status::RG_OK,
            "{}",
            last_error()
        );
        calls += 1;
        rows_total += rows.len();

        for (i, (&(_, s, wants), &p)) in rows.iter().zip(&pos).enumerate() {
            match floats(rg_get_logits_ith(ctx, i as i32)) {
                Some(got) => {
                    assert!(wants, "row {i} asked for no logits but has some");
                    let d = max_abs_diff(&got, &reference[s as usize][p]);
                    assert!(d <= ALONE_TOL, "seq {s} pos {p}: |diff| {d}");
                    compared += 1;
                }
                None => {
                    assert!(!wants, "row {i}: {}", last_error());
                    assert!(last_error().contains("no logits"), "{}", last_error());
                }
            }
        }
        assert_eq!(
            rg_get_logits_ith(ctx, -1),
            rg_get_logits_ith(ctx, rows.len() as i32 - 1),
            "-1 is the last row"
        );
        for s in 0..4 {
            assert_eq!(rg_seq_n_past(ctx, s as i32), next[s] as i32);
            let Some(last) = rows.iter().rposition(|r| r.1 == s as i32) else {
                // No rows in this batch: the sequence keeps its logits.
                assert_eq!(floats(rg_seq_get_logits(ctx, s as i32)), last_logits[s]);
                continue;
            };
            let now = floats(rg_seq_get_logits(ctx, s as i32));
            assert_eq!(
                now.is_some(),
                rows[last].2,
                "seq {s}: logits iff its last row asked"
            );
            if let Some(l) = &now {
                let d = max_abs_diff(l, &reference[s][pos[last]]);
                assert!(d <= ALONE_TOL, "seq {s} after pos {}: {d}", pos[last]);
            }
            last_logits[s] = now;
        }
        assert_eq!(
            floats(rg_get_logits(ctx)),
            last_logits[0],
            "rg_get_logits is sequence 0's"
        );
    }
    assert_eq!(rows_total, lens.iter().sum::<usize>());
    assert!(
        calls < rows_total / 4,
        "{calls} calls for {rows_total} rows"
    );
    assert!(compared > rows_total / 2);
    rg_batch_free(batch);
    rg_context_free(ctx);
    rg_model_free(model);
}

#[test]
fn a_fork_continues_like_its_source() {
    let model = load(&converted("F32"));
    let prompt = token_stream(20, 7);
    let (t1, t2, t2b) = (40, 41, 300);
    let reference = alone(model, &[&prompt[..], &[t1, t2]].concat());
    let diverged = alone(model, &[&prompt[..], &[t1, t2b]].concat());

    let ctx = new_ctx(model, 3, 16, RG_KV_F32);
    assert_eq!(
        rg_decode(ctx, prompt.as_ptr(), prompt.len() as i32),
        rg_status::RG_OK
    );
    let source = logits_of(ctx);
    for dst in [1, 2] {
        assert!(
            rg_seq_get_logits(ctx, dst).is_null(),
            "empty before the fork"
        );
        assert_eq!(
            rg_seq_copy(ctx, 0, dst),
            rg_status::RG_OK,
            "{}",
            last_error()
        );
        assert_eq!(
            seq_logits(ctx, dst),
            source,
            "a fork has its source's logits"
        );
        assert_eq!(rg_seq_n_past(ctx, dst), prompt.len() as i32);
    }
    assert_eq!(
        rg_seq_copy(ctx, 1, 1),
        rg_status::RG_OK,
        "onto itself: nothing to do"
    );
    assert_eq!(seq_logits(ctx, 1), source);

    // The same token in the source and both forks.
    let mut batch = rg_batch_init(3);
    fill(&mut batch, &[(t1, 0, true), (t1, 1, true), (t1, 2, true)]);
    assert_eq!(rg_decode_batch(ctx, batch), rg_status::RG_OK);
    for row in 0..3 {
        let got = floats(rg_get_logits_ith(ctx, row)).unwrap();
        let d = max_abs_diff(&got, &reference[prompt.len()]);
        assert!(d <= ALONE_TOL, "row {row}: |diff| {d}");
    }
    // They diverge: the source and one fork take different tokens, the other fork waits.
    let waiting = seq_logits(ctx, 2);
    fill(&mut batch, &[(t2b, 1, true), (t2, 0, true)]);
    assert_eq!(rg_decode_batch(ctx, batch), rg_status::RG_OK);
    let d0 = max_abs_diff(&seq_logits(ctx, 0), &reference[prompt.len() + 1]);
    let d1 = max_abs_diff(&seq_logits(ctx, 1), &diverged[prompt.len() + 1]);
    assert!(d0 <= ALONE_TOL && d1 <= ALONE_TOL, "{d0} {d1}");
    assert!(
        max_abs_diff(&seq_logits(ctx, 0), &seq_logits(ctx, 1)) > 1e-3,
        "different tokens, different logits"
    );
    assert_eq!(seq_logits(ctx, 2), waiting);
    assert_eq!(rg_seq_n_past(ctx, 2), prompt.len() as i32 + 1);

    // Copying over a sequence in use replaces it.
    assert_eq!(rg_seq_copy(ctx, 2, 0), rg_status::RG_OK);
    assert_eq!(rg_context_n_past(ctx), prompt.len() as i32 + 1);
    assert_eq!(logits_of(ctx), waiting);
    assert_eq!(rg_seq_clear(ctx, 2), rg_status::RG_OK);
    assert_eq!(rg_seq_n_past(ctx, 2), 0);
    assert!(
        rg_seq_get_logits(ctx, 2).is_null(),
        "a cleared sequence has no logits"
    );
    assert!(last_error().contains("no logits"), "{}", last_error());
    rg_batch_free(batch);
    rg_context_free(ctx);
    rg_model_free(model);
}

#[test]
fn sequence_states_move_between_sequences_and_contexts() {
    let model = load(&converted("F32"));
    let ctx = new_ctx(model, 3, 16, RG_KV_F32);
    let size = rg_seq_state_size(ctx);
    assert!(size > 0);
    assert_eq!(size, rg_state_size(ctx), "one format for both");

    // Sequence 2 gets 25 tokens (two batches, past the window), sequence 1 a few.
    let stream = token_stream(25, 3);
    let mut batch = rg_batch_init(16);
    let rows: Vec<(i32, i32, bool)> = stream.iter().map(|&t| (t, 2, false)).collect();
    fill(&mut batch, &rows[..16]);
    assert_eq!(rg_decode_batch(ctx, batch), rg_status::RG_OK);
    let mut tail = rows[16..].to_vec();
    tail.last_mut().unwrap().2 = true;
    tail.extend([(5, 1, true), (6, 1, true)]);
    fill(&mut batch, &tail);
    assert_eq!(rg_decode_batch(ctx, batch), rg_status::RG_OK);
    let at_save = seq_logits(ctx, 2);
    let mut state = vec![0u8; size];
    assert_eq!(
        rg_seq_state_save(ctx, 2, state.as_mut_ptr(), size),
        rg_status::RG_OK,
        "{}",
        last_error()
    );

    // Into sequence 0 of the same context: position and logits come along.
    assert_eq!(
        rg_seq_state_load(ctx, 0, state.as_ptr(), size),
        rg_status::RG_OK,
        "{}",
        last_error()
    );
    assert_eq!(rg_context_n_past(ctx), 25);
    assert_eq!(logits_of(ctx), at_save);
    fill(&mut batch, &[(33, 0, true), (33, 2, true)]);
    assert_eq!(rg_decode_batch(ctx, batch), rg_status::RG_OK);
    let next_in_2 = floats(rg_get_logits_ith(ctx, 1)).unwrap();
    let next_in_0 = floats(rg_get_logits_ith(ctx, 0)).unwrap();
    assert!(max_abs_diff(&next_in_0, &next_in_2) <= ALONE_TOL);

    // Into a single-sequence context with rg_state_load, and on from there.
    let single = rg_context_new(model, std::ptr::null());
    assert_eq!(
        rg_state_load(single, state.as_ptr(), size),
        rg_status::RG_OK
    );
    assert_eq!(rg_context_n_past(single), 25);
    assert_eq!(logits_of(single), at_save);
    assert_eq!(rg_decode(single, &33, 1), rg_status::RG_OK);
    let d = max_abs_diff(&logits_of(single), &next_in_2);
    assert!(d <= ALONE_TOL, "single context vs sequence 2: {d}");
    // The full history alone agrees too.
    let reference = alone(model, &[&stream[..], &[33]].concat());
    assert!(max_abs_diff(&logits_of(single), &reference[25]) <= ALONE_TOL);

    // And back: rg_state_save of the single context loads into sequence 1.
    let mut back = vec![0u8; size];
    assert_eq!(
        rg_state_save(single, back.as_mut_ptr(), size),
        rg_status::RG_OK
    );
    assert_eq!(
        rg_seq_state_load(ctx, 1, back.as_ptr(), size),
        rg_status::RG_OK
    );
    assert_eq!(rg_seq_n_past(ctx, 1), 26);
    assert_eq!(seq_logits(ctx, 1), logits_of(single));

    // An empty sequence's state loads as empty: no logits, not zeros.
    assert_eq!(rg_seq_clear(ctx, 1), rg_status::RG_OK);
    let mut empty = vec![0u8; size];
    assert_eq!(
        rg_seq_state_save(ctx, 1, empty.as_mut_ptr(), size),
        rg_status::RG_OK
    );
    assert_eq!(
        rg_seq_state_load(ctx, 2, empty.as_ptr(), size),
        rg_status::RG_OK
    );
    assert_eq!(rg_seq_n_past(ctx, 2), 0);
    assert!(rg_seq_get_logits(ctx, 2).is_null());
    assert_eq!(
        rg_state_load(single, empty.as_ptr(), size),
        rg_status::RG_OK
    );
    assert!(rg_get_logits(single).is_null());

    rg_context_free(single);
    rg_batch_free(batch);
    rg_context_free(ctx);
    rg_model_free(model);
}

/// What an error must leave unchanged: each sequence's position and logits, and the rows of
/// the last batch.
#[derive(Debug, PartialEq)]
struct Snapshot {
    seqs: Vec<(i32, Option<Vec<f32>>)>,
    rows: Vec<Option<Vec<f32>>>,
}

fn snapshot(ctx: *mut rg_context, n_rows: i32) -> Snapshot {
    let n_seq = rg_context_n_seq_max(ctx);
    Snapshot {
        seqs: (0..n_seq)
            .map(|s| (rg_seq_n_past(ctx, s), floats(rg_seq_get_logits(ctx, s))))
            .collect(),
        rows: (0..n_rows)
            .map(|i| floats(rg_get_logits_ith(ctx, i)))
            .collect(),
    }
}

/// Asserts that `status` is an invalid-argument error whose message contains `what`.
#[track_caller]
fn assert_refused(status: rg_status, what: &str) {
    assert_eq!(status, rg_status::RG_ERR_INVALID_ARGUMENT);
    assert!(
        last_error().contains(what),
        "message {:?} lacks {what:?}",
        last_error()
    );
}

#[test]
fn batch_and_sequence_errors_are_reported_and_change_nothing() {
    let model = load(&converted("F32"));
    let null_ctx = std::ptr::null_mut();

    // Context parameters.
    for (n_seq, kv, what) in [
        (0, RG_KV_F32, "n_seq_max"),
        (-1, RG_KV_F32, "n_seq_max"),
        (RG_MAX_SEQ + 1, RG_KV_F32, "n_seq_max"),
        (2, 7, "kv_type"),
        (2, -1, "kv_type"),
    ] {
        let p = rg_context_params {
            n_seq_max: n_seq,
            kv_type: kv,
            ..rg_context_default_params()
        };
        assert!(rg_context_new(model, &p).is_null());
        assert!(last_error().contains(what), "{}", last_error());
    }
    let d = rg_context_default_params();
    assert_eq!((d.n_seq_max, d.kv_type), (1, RG_KV_F32));
    assert_eq!(rg_context_n_seq_max(null_ctx), -1);
    assert_eq!(rg_context_kv_type(null_ctx), -1);
    assert_eq!(rg_seq_state_size(null_ctx), 0);

    // Batches.
    for n in [0, -3] {
        let b = rg_batch_init(n);
        assert!(b.token.is_null() && b.seq_id.is_null() && b.logits.is_null());
        assert!(last_error().contains("n_tokens_max"), "{}", last_error());
    }
    let mut foreign_tokens = [2i32; 4];
    let mut foreign_seqs = [0i32; 4];
    let mut foreign_logits = [1i8; 4];
    let foreign = rg_batch {
        n_tokens: 1,
        token: foreign_tokens.as_mut_ptr(),
        seq_id: foreign_seqs.as_mut_ptr(),
        logits: foreign_logits.as_mut_ptr(),
    };
    rg_batch_free(foreign);
    assert!(
        last_error().contains("not a live batch"),
        "{}",
        last_error()
    );
    let twice = rg_batch_init(2);
    rg_batch_free(twice);
    rg_batch_free(twice);
    assert!(
        last_error().contains("not a live batch"),
        "{}",
        last_error()
    );
    rg_batch_free(rg_batch {
        n_tokens: 0,
        token: std::ptr::null_mut(),
        seq_id: std::ptr::null_mut(),
        logits: std::ptr::null_mut(),
    });

    // A context with something in both sequences and a last batch of 3 rows.
    let ctx = new_ctx(model, 2, 4, RG_KV_F32);
    let mut batch = rg_batch_init(8);
    let small = rg_batch_init(2);
    assert!(rg_get_logits_ith(ctx, 0).is_null(), "no batch yet");
    assert!(last_error().contains("rg_decode_batch"), "{}", last_error());
    fill(&mut batch, &[(7, 0, true), (8, 1, false), (9, 1, true)]);
    assert_eq!(rg_decode_batch(ctx, batch), rg_status::RG_OK);
    let before = snapshot(ctx, 3);
    assert!(before.rows[0].is_some() && before.rows[1].is_none() && before.rows[2].is_some());

    assert_refused(rg_decode_batch(null_ctx, batch), "context is NULL");
    for n in [0, -1] {
        batch.n_tokens = n;
        assert_refused(rg_decode_batch(ctx, batch), "n_tokens");
    }
    fill(&mut batch, &[(7, 0, true); 5]);
    assert_refused(rg_decode_batch(ctx, batch), "n_batch");
    let mut small_overrun = small;
    small_overrun.n_tokens = 3;
    assert_refused(rg_decode_batch(ctx, small_overrun), "rows of rg_batch_init");
    for (field, what) in [(0, "batch.token"), (1, "batch.seq_id"), (2, "batch.logits")] {
        let mut b = foreign;
        match field {
            0 => b.token = std::ptr::null_mut(),
            1 => b.seq_id = std::ptr::null_mut(),
            _ => b.logits = std::ptr::null_mut(),
        }
        assert_refused(rg_decode_batch(ctx, b), what);
    }
    // A bad row after good ones: the good ones are not decoded either.
    for (bad_row, what) in [
        ((7, 2, true), "sequence id 2"),
        ((7, -1, true), "sequence id -1"),
        ((512, 0, true), "token id 512"),
        ((-5, 1, true), "token id -5"),
    ] {
        fill(&mut batch, &[(7, 0, true), (8, 1, true), bad_row]);
        assert_refused(rg_decode_batch(ctx, batch), what);
        assert!(last_error().contains("row 2"), "{}", last_error());
    }
    assert_eq!(
        snapshot(ctx, 3),
        before,
        "failed batches changed the context"
    );

    // Reading logits.
    assert!(rg_get_logits_ith(ctx, 1).is_null());
    assert!(last_error().contains("row 1"), "{}", last_error());
    for i in [3, -4, i32::MIN] {
        assert!(rg_get_logits_ith(ctx, i).is_null());
        assert!(last_error().contains("out of range"), "{}", last_error());
    }
    assert!(rg_get_logits_ith(null_ctx, 0).is_null());
    for s in [2, -1] {
        assert!(rg_seq_get_logits(ctx, s).is_null());
        assert!(last_error().contains("out of range"), "{}", last_error());
        assert_eq!(rg_seq_n_past(ctx, s), -1);
        assert_refused(rg_seq_clear(ctx, s), "out of range");
        assert_refused(rg_seq_copy(ctx, 0, s), "out of range");
        assert_refused(rg_seq_copy(ctx, s, 0), "out of range");
    }
    assert!(rg_seq_get_logits(null_ctx, 0).is_null());
    assert_eq!(rg_seq_n_past(null_ctx, 0), -1);
    assert_refused(rg_seq_clear(null_ctx, 0), "NULL");
    assert_refused(rg_seq_copy(null_ctx, 0, 1), "NULL");
    let s = rg_sampler_new(std::ptr::null());
    assert_eq!(rg_sampler_sample_seq(s, ctx, 2), -1);
    assert_eq!(rg_sampler_sample_seq(std::ptr::null_mut(), ctx, 0), -1);
    assert_eq!(rg_sampler_sample_seq(s, null_ctx, 0), -1);

    // Sequence states.
    let size = rg_seq_state_size(ctx);
    let mut state = vec![0u8; size];
    assert_refused(
        rg_seq_state_save(ctx, 0, state.as_mut_ptr(), size - 1),
        "needed",
    );
    assert_refused(
        rg_seq_state_save(ctx, 2, state.as_mut_ptr(), size),
        "out of range",
    );
    assert_refused(
        rg_seq_state_save(ctx, 0, std::ptr::null_mut(), size),
        "NULL",
    );
    assert_refused(
        rg_seq_state_save(null_ctx, 0, state.as_mut_ptr(), size),
        "NULL",
    );
    assert_eq!(
        rg_seq_state_save(ctx, 1, state.as_mut_ptr(), size),
        rg_status::RG_OK
    );
    assert_refused(rg_seq_state_load(ctx, 0, state.as_ptr(), size - 1), "bytes");
    assert_refused(rg_seq_state_load(ctx, 0, state.as_ptr(), size + 1), "bytes");
    assert_refused(
        rg_seq_state_load(ctx, -1, state.as_ptr(), size),
        "out of range",
    );
    assert_refused(rg_seq_state_load(ctx, 0, std::ptr::null(), size), "NULL");
    assert_refused(rg_seq_state_load(null_ctx, 0, state.as_ptr(), size), "NULL");
    let mut corrupt = state.clone();
    corrupt[size / 2] ^= 0x5a;
    assert_refused(rg_seq_state_load(ctx, 0, corrupt.as_ptr(), size), "corrupt");
    assert_eq!(snapshot(ctx, 3), before, "failed calls changed the context");

    // rg_decode ends the rows' life.
    assert_eq!(rg_decode(ctx, &3, 1), rg_status::RG_OK);
    assert!(rg_get_logits_ith(ctx, 0).is_null());
    assert!(last_error().contains("rg_decode"), "{}", last_error());

    rg_sampler_free(s);
    rg_batch_free(small);
    rg_batch_free(batch);
    rg_context_free(ctx);
    rg_model_free(model);
}

#[test]
fn an_f16_kv_cache_stays_close_to_f32() {
    let model = load(&converted("F32"));
    let exact = rg_context_new(model, std::ptr::null());
    assert_eq!(rg_context_kv_type(exact), RG_KV_F32);
    let half = new_ctx(model, 2, 64, RG_KV_F16);
    assert_eq!(rg_context_kv_type(half), RG_KV_F16);
    // Past the window, so that every ring slot holds rounded values; then single tokens,
    // which attend over the stored ring (a prompt chunk attends over its own f32 keys).
    let prompt = token_stream(40, 11);
    for ctx in [exact, half] {
        assert_eq!(
            rg_decode(ctx, prompt.as_ptr(), prompt.len() as i32),
            rg_status::RG_OK
        );
        for t in [17, 18, 19] {
            assert_eq!(rg_decode(ctx, &t, 1), rg_status::RG_OK);
        }
    }
    let d = max_abs_diff(&logits_of(exact), &logits_of(half));
    eprintln!("f16 K/V cache vs f32: max |diff| {d:e}");
    assert!(d > 0.0, "f16 rings must round something");
    assert!(d < 1e-2, "f16 K/V cache: |diff| {d}");
    // States are saved as f32 whatever the cache type: an f32 state loads into an f16
    // sequence (rounded on the way in) and the two continue alike.
    let size = rg_state_size(exact);
    assert_eq!(size, rg_seq_state_size(half));
    let mut state = vec![0u8; size];
    assert_eq!(
        rg_state_save(exact, state.as_mut_ptr(), size),
        rg_status::RG_OK
    );
    assert_eq!(
        rg_seq_state_load(half, 1, state.as_ptr(), size),
        rg_status::RG_OK,
        "{}",
        last_error()
    );
    assert_eq!(rg_decode(exact, &9, 1), rg_status::RG_OK);
    let mut batch = rg_batch_init(1);
    fill(&mut batch, &[(9, 1, true)]);
    assert_eq!(rg_decode_batch(half, batch), rg_status::RG_OK);
    let d = max_abs_diff(&logits_of(exact), &seq_logits(half, 1));
    assert!(d < 1e-2, "{d}");
    rg_batch_free(batch);
    rg_context_free(half);
    rg_context_free(exact);
    rg_model_free(model);
}

#[test]
fn batched_steps_do_not_allocate_in_the_c_layer() {
    let model = load(&converted("Q8_0"));
    let n_seq = 4;
    let ctx = new_ctx(model, n_seq, 8, RG_KV_F32);
    let mut batch = rg_batch_init(n_seq);
    let samplers: Vec<*mut rg_sampler> = (0..n_seq)
        .map(|i| {
            let p = rg_sampler_params {
                seed: 10 + i as u32,
                ..rg_sampler_default_params()
            };
            rg_sampler_new(&p)
        })
        .collect();
    assert_eq!(rg_decode(ctx, prompt_i32().as_ptr(), 7), rg_status::RG_OK);
    for s in 1..n_seq {
        assert_eq!(rg_seq_copy(ctx, 0, s), rg_status::RG_OK);
    }
    let mut rows = Vec::with_capacity(n_seq as usize);
    let mut step = |batch: &mut rg_batch| {
        rows.clear();
        for (s, &sampler) in samplers.iter().enumerate() {
            let t = rg_sampler_sample_seq(sampler, ctx, s as i32);
            assert!(t >= 0);
            rows.push((t, s as i32, true));
        }
        fill(batch, &rows);
        assert_eq!(rg_decode_batch(ctx, *batch), rg_status::RG_OK);
        assert!(!rg_get_logits_ith(ctx, -1).is_null());
    };
    // Warm-up sizes the engine's buffers (past the window of 16).
    for _ in 0..20 {
        step(&mut batch);
    }
    assert!(
        allocations_in(|| drop(std::hint::black_box(vec![0u8; 64]))) > 0,
        "the counter sees this thread's allocations"
    );
    let made = allocations_in(|| {
        for _ in 0..10 {
            step(&mut batch);
        }
    });
    assert_eq!(
        made, 0,
        "{made} allocations on the calling thread in 10 steps"
    );
    for s in samplers {
        rg_sampler_free(s);
    }
    rg_batch_free(batch);
    rg_context_free(ctx);
    rg_model_free(model);
}

fn prompt_i32() -> Vec<i32> {
    prompt().iter().map(|&t| t as i32).collect()
}

/// What examples/c/parallel.c and examples/python/parallel.py print, computed with the Rust
/// engine: each sequence alone in its own context, sampled with seed `seed + i`.
fn rust_parallel_text(prompt: &str, n_seq: u32, n_gen: usize, seed: u32) -> String {
    let rust = Arc::new(Model::load(TEXT_MODEL).unwrap());
    let tok = rust.tokenizer().unwrap();
    let ids = tok.encode(prompt, true, true).unwrap();
    let eot = tok.token_id("<end_of_turn>");
    let mut out = String::new();
    for i in 0..n_seq {
        let mut ctx = Context::new(Arc::clone(&rust), ContextParams::default()).unwrap();
        ctx.eval(&ids, false).unwrap();
        let mut sampler = rgemma::sampling::Sampler::new(rgemma::sampling::SamplerParams {
            seed: Some((seed + i) as u64),
            ..Default::default()
        });
        let mut gen = Vec::new();
        for step in 0..n_gen {
            let t = sampler.sample(ctx.logits());
            sampler.accept(t);
            if t == tok.eos() || Some(t) == eot {
                break;
            }
            gen.push(t);
            if step + 1 < n_gen {
                ctx.eval(&[t], false).unwrap();
            }
        }
        out += &format!(
            "=== sequence {i} ===\n{}\n",
            tok.decode(&gen, false).unwrap()
        );
    }
    out
}

fn run_parallel_c(args: &[&str]) -> std::process::Output {
    let out = Command::new(build_c("parallel"))
        .arg(TEXT_MODEL)
        .args(args)
        .env("LD_LIBRARY_PATH", lib_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "parallel.c failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn parallel_c_example_matches_each_sequence_sampled_alone() {
    let (prompt, n_seq, n_gen, seed) = ("The meaning of life is", 4, 24, 5);
    let out = run_parallel_c(&[
        prompt,
        &n_seq.to_string(),
        &n_gen.to_string(),
        &seed.to_string(),
    ]);
    let expected = rust_parallel_text(prompt, n_seq, n_gen, seed);
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    // Different seeds gave different continuations (the forks are independent).
    let bodies: Vec<&str> = expected.split("=== sequence ").skip(1).collect();
    assert_eq!(bodies.len(), n_seq as usize);
    assert!(
        bodies.windows(2).any(|w| w[0][1..] != w[1][1..]),
        "{expected}"
    );
}

#[test]
fn parallel_c_example_is_clean_under_valgrind() {
    let exe = build_c("parallel");
    let n_seq = 3;
    let n = n_seq.to_string();
    let Some(stdout) = run_clean_under_valgrind(&exe, &[TEXT_MODEL, "A fortune:", &n, "8", "3"])
    else {
        return;
    };
    for i in 0..n_seq {
        assert!(
            stdout.contains(&format!("=== sequence {i} ===\n")),
            "{stdout}"
        );
    }
    assert_eq!(stdout, rust_parallel_text("A fortune:", n_seq, 8, 3));
}

#[test]
fn parallel_python_example_matches_each_sequence_sampled_alone() {
    let python = std::env::var("RG_PYTHON").unwrap_or_else(|_| "python3".into());
    if Command::new(&python).arg("--version").output().is_err() {
        eprintln!("skipped: no python3");
        return;
    }
    let (prompt, n_seq, n_gen, seed) = ("A fortune:", 3, 20, 9);
    let out = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/python/parallel.py"
        ))
        .arg(TEXT_MODEL)
        .args([
            prompt,
            &n_seq.to_string(),
            &n_gen.to_string(),
            &seed.to_string(),
        ])
        .env("RGEMMA_LIB", lib_dir().join("librgemma.so"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "parallel.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        rust_parallel_text(prompt, n_seq, n_gen, seed)
    );
}
