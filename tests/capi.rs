//! The C ABI: the C and Python examples against the Rust engine, valgrind, error handling,
//! threads, and state save/restore.

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
    let exe = work_dir()
        .join(format!("simple-{:?}", std::thread::current().id()).replace(['(', ')'], ""));
    let root = env!("CARGO_MANIFEST_DIR");
    let st = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-O1", "-g", "-Wall", "-Wextra", "-Werror", "-std=c11"])
        .arg(format!("-I{root}/include"))
        .arg(format!("{root}/examples/c/simple.c"))
        .arg(format!("-L{}", lib_dir().display()))
        .args(["-lrgemma", "-o"])
        .arg(&exe)
        .status()
        .unwrap();
    assert!(st.success(), "compiling examples/c/simple.c");
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

#[test]
fn c_example_is_clean_under_valgrind() {
    if Command::new("valgrind").arg("--version").output().is_err() {
        eprintln!("skipped: valgrind not installed");
        return;
    }
    let model = converted("Q8_0");
    let exe = build_c_example();
    let out = Command::new("valgrind")
        .args([
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect",
        ])
        .arg(&exe)
        .arg(&model)
        .arg("2,17,300")
        .arg("3")
        .env("LD_LIBRARY_PATH", lib_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "valgrind reported errors or leaks:\n{stderr}"
    );
    assert!(stderr.contains("ERROR SUMMARY: 0 errors"), "{stderr}");
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
        n_threads: 0,
    };
    assert!(rg_context_new(model, &p).is_null());
    let p = rg_context_params {
        n_batch: 8,
        n_threads: -2,
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
