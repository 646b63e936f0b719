//! A stable-Rust mutation fuzzer for the GGUF reader and the `rg-gguf info` rendering.
//!
//! Target: `GgufFile::from_bytes`, then (when it parses) every typed getter on every key,
//! every tensor's data slice, and the text and JSON info renderings. Any panic is a failure;
//! the input is saved under `target/gguf-fuzz-crashes/`.
//!
//! Inputs come from valid seeds (gguf-py's fixture and files made by our writer) through
//! stacked byte-level mutations, with overwrites of length/count-like fields by boundary
//! values. Feedback without coverage instrumentation: an input joins the corpus when it parses
//! or when it yields an error message template (digits removed) not seen before.
//!
//! - `fuzz_smoke` (always runs): a fixed-seed run of 20,000 inputs.
//! - `fuzz_long` (ignored): `RG_FUZZ_SECS=600 nice -n 19 cargo test --release --test gguf_fuzz
//!   -- --ignored --nocapture fuzz_long` runs for that many seconds and prints the figures.

mod gguf_common;

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use gguf_common::fixture;
use rgemma::gguf::{render, GgufError, GgufFile, GgufWriter, MetaArray, MetaValue, TensorSpec};
use rgemma::quant::GgmlType;

/// xorshift64*: small, deterministic, good enough for choosing mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Everything `rg-gguf info` and the engine do with a parsed file.
fn exercise(bytes: Vec<u8>) -> Result<(), GgufError> {
    let f = GgufFile::from_bytes(bytes)?;
    for (key, _) in f.metadata() {
        let _ = f.get_u32(key);
        let _ = f.get_u64(key);
        let _ = f.get_f32(key);
        let _ = f.get_bool(key);
        let _ = f.get_str(key);
        let _ = f.get_str_array(key);
    }
    let mut total = 0usize;
    for t in f.tensors() {
        let data = f.tensor_data(t);
        assert_eq!(data.len() as u64, t.size, "tensor {} slice length", t.name);
        assert!(f.tensor(&t.name).is_some());
        total += data.len();
    }
    std::hint::black_box(total);
    render::write_info_text(&f, &mut std::io::sink()).unwrap();
    render::write_info_json(&f, &mut std::io::sink()).unwrap();
    Ok(())
}

/// The words of the reader's source: error messages are built from them, names mostly not.
fn message_vocabulary() -> HashSet<&'static str> {
    include_str!("../src/gguf/reader.rs")
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| w.len() > 1)
        .collect()
}

/// The error message reduced to the reader's own words (numbers and names dropped): a cheap
/// stand-in for "which check fired".
fn template(e: &GgufError, vocabulary: &HashSet<&str>) -> String {
    let message = e.to_string();
    // Messages read "at byte N: [key K: | tensor T: ]what failed"; keep the last part.
    let check = message.rsplit(": ").next().unwrap_or("");
    let words: Vec<&str> = check
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| vocabulary.contains(w))
        .collect();
    words.join(" ")
}

fn writer_seed(name: &str, meta: Vec<(String, MetaValue)>, tensors: Vec<TensorSpec>) -> Vec<u8> {
    let dir = gguf_common::scratch_dir(&format!("fuzz-seed-{name}"));
    let path = dir.join("s.gguf");
    let mut w = GgufWriter::create(&path, &meta, &tensors).unwrap();
    for (k, t) in tensors.iter().enumerate() {
        let n = t.size().unwrap() as usize;
        w.write_tensor_data(&(0..n).map(|i| (i * 7 + k) as u8).collect::<Vec<_>>())
            .unwrap();
    }
    w.finish().unwrap();
    std::fs::read(&path).unwrap()
}

fn seeds() -> Vec<Vec<u8>> {
    let spec = |name: &str, ty, dims: &[u64]| TensorSpec {
        name: name.into(),
        ty,
        dims: dims.to_vec(),
    };
    let kv = |k: &str, v| (k.to_string(), v);
    vec![
        std::fs::read(fixture("gguf_py_small.gguf")).unwrap(),
        writer_seed(
            "a64",
            vec![
                kv("general.alignment", MetaValue::U32(64)),
                kv(
                    "s",
                    MetaValue::Array(MetaArray::String(vec!["x".into(), "yz".into()])),
                ),
                kv("b", MetaValue::Bool(true)),
            ],
            vec![
                spec("w", GgmlType::Q8_0, &[64, 2]),
                spec("v", GgmlType::F32, &[3]),
            ],
        ),
        writer_seed(
            "k",
            vec![
                kv("f", MetaValue::F64(1.5)),
                kv("u", MetaValue::Array(MetaArray::U64(vec![1, 2]))),
            ],
            vec![
                spec("q4k", GgmlType::Q4K, &[256]),
                spec("s", GgmlType::F16, &[1, 1, 2, 2]),
            ],
        ),
        writer_seed("empty", vec![], vec![]),
    ]
}

const INTERESTING: [u64; 24] = [
    0,
    1,
    2,
    3,
    4,
    5,
    7,
    8,
    9,
    12,
    13,
    31,
    32,
    33,
    63,
    64,
    255,
    256,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 62,
    1 << 63,
    u64::MAX,
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let n_mutations = if rng.below(2) == 0 {
        1
    } else {
        1 + rng.below(6)
    };
    for _ in 0..n_mutations {
        let len = input.len();
        match rng.below(10) {
            0 if len > 0 => {
                let p = rng.below(len);
                input[p] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let p = rng.below(len);
                input[p] = [0, 1, 0x7f, 0x80, 0xff, rng.next() as u8][rng.below(6)];
            }
            2 | 3 if len > 0 => {
                // Overwrite a u32/u64-sized field, preferring spots that look like a small
                // little-endian u64 (lengths, counts, dims, offsets).
                let mut p = rng.below(len);
                if rng.below(2) == 0 {
                    for _ in 0..64 {
                        let q = rng.below(len.saturating_sub(8).max(1));
                        let small = input
                            .get(q..q + 8)
                            .is_some_and(|b| b[3..].iter().all(|&x| x == 0));
                        if small {
                            p = q;
                            break;
                        }
                    }
                }
                let mut v = INTERESTING[rng.below(INTERESTING.len())];
                if rng.below(4) == 0 {
                    v = (len as u64)
                        .wrapping_add(rng.below(65) as u64)
                        .wrapping_sub(32);
                }
                let width = if rng.below(2) == 0 { 4 } else { 8 };
                for (i, b) in v.to_le_bytes()[..width].iter().enumerate() {
                    if let Some(x) = input.get_mut(p + i) {
                        *x = *b;
                    }
                }
            }
            4 => input.truncate(rng.below(len + 1)),
            5 => {
                let p = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(p..p, bytes);
            }
            6 if len > 0 => {
                let p = rng.below(len);
                let n = (1 + rng.below(32)).min(len - p);
                input.drain(p..p + n);
            }
            7 if len > 0 => {
                // Duplicate a chunk elsewhere (repeated keys, tensor infos).
                let p = rng.below(len);
                let n = (1 + rng.below(64)).min(len - p);
                let chunk = input[p..p + n].to_vec();
                let q = rng.below(len + 1);
                input.splice(q..q, chunk);
            }
            8 if !corpus.is_empty() => {
                // Splice: our head, another input's tail.
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            _ if len > 0 => {
                let p = rng.below(len);
                input[p] = input[p].wrapping_add(1 + rng.below(3) as u8);
            }
            _ => {}
        }
    }
}

struct Stats {
    execs: u64,
    parsed: u64,
    corpus: usize,
    templates: usize,
    crashes: Vec<String>,
}

fn run(seed: u64, budget: impl Fn(u64) -> bool) -> Stats {
    let mut rng = Rng(seed | 1);
    let mut corpus = seeds();
    let mut seen = HashSet::new();
    let vocabulary = message_vocabulary();
    let mut stats = Stats {
        execs: 0,
        parsed: 0,
        corpus: 0,
        templates: 0,
        crashes: Vec::new(),
    };
    let crash_dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/gguf-fuzz-crashes");
    // Panics are caught and recorded; keep the default message (it names the location).
    while budget(stats.execs) {
        let mut input = corpus[rng.below(corpus.len())].clone();
        mutate(&mut rng, &mut input, &corpus);
        let copy = input.clone();
        stats.execs += 1;
        match catch_unwind(AssertUnwindSafe(|| exercise(copy))) {
            Ok(Ok(())) => {
                stats.parsed += 1;
                if corpus.len() < 512 && rng.below(8) == 0 {
                    corpus.push(input);
                }
            }
            Ok(Err(e)) => {
                if seen.insert(template(&e, &vocabulary)) && corpus.len() < 4096 {
                    corpus.push(input);
                }
            }
            Err(_) => {
                std::fs::create_dir_all(&crash_dir).unwrap();
                let name = crash_dir.join(format!("crash-{seed:x}-{}.gguf", stats.execs));
                std::fs::write(&name, &input).unwrap();
                stats.crashes.push(name.display().to_string());
            }
        }
    }
    if let Ok(path) = std::env::var("RG_FUZZ_TEMPLATES") {
        let mut all: Vec<&String> = seen.iter().collect();
        all.sort();
        let text: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        std::fs::write(path, text.join("\n")).unwrap();
    }
    stats.corpus = corpus.len();
    stats.templates = seen.len();
    stats
}

#[test]
fn fuzz_smoke() {
    let stats = run(0x5eed_0001, |n| n < 20_000);
    assert!(
        stats.crashes.is_empty(),
        "panics, inputs saved: {:?}",
        stats.crashes
    );
    // The mutations reach many distinct checks, and some mutants still parse.
    assert!(
        stats.templates > 30,
        "only {} distinct errors",
        stats.templates
    );
    assert!(stats.parsed > 20, "only {} inputs parsed", stats.parsed);
}

#[test]
#[ignore = "long run: RG_FUZZ_SECS=600 cargo test --release --test gguf_fuzz -- --ignored"]
fn fuzz_long() {
    let secs: u64 = std::env::var("RG_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let seed: u64 = std::env::var("RG_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    // Checking the clock every 1024 inputs keeps its cost out of the loop.
    let stats = run(seed, |n| n % 1024 != 0 || Instant::now() < deadline);
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "gguf fuzz: seed {seed}, {:.1} s, {} executions ({:.0}/s), {} parsed OK, {} distinct errors, corpus {}, {} crashes",
        elapsed,
        stats.execs,
        stats.execs as f64 / elapsed,
        stats.parsed,
        stats.templates,
        stats.corpus,
        stats.crashes.len()
    );
    assert!(
        stats.crashes.is_empty(),
        "panics, inputs saved: {:?}",
        stats.crashes
    );
}
