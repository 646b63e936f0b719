//! rg-server's endpoints against references: greedy text against the torch continuation of
//! the bundled model, tokenize/detokenize against the library's tokenizer, sampled answers
//! against the library's own sampler loop (`generate`), the response and streaming schemas
//! of OpenAI, `n` forks against single requests, logprobs against the greedy choice.

mod server_common;

use std::sync::Arc;

use rgemma::generate::{generate, GenerateOptions, GenerateSink};
use rgemma::model::{Context, ContextParams, Model};
use rgemma::sampling::{Sampler, SamplerParams, TokenPenalties};
use serde_json::{json, Value};
use server_common::{answer_text, chat, Server, TINY_F32, TINY_Q8};

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/tiny-fortunes/reference.json"
    );
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Text of what the library's single-sequence loop generates for `prompt`.
fn library_generation(
    model: &Arc<Model>,
    prompt: &[u32],
    params: SamplerParams,
    penalties: TokenPenalties,
    max_tokens: usize,
) -> String {
    struct Collect(String);
    impl GenerateSink for Collect {
        fn text(&mut self, t: &str) -> rgemma::Result<()> {
            self.0.push_str(t);
            Ok(())
        }
    }
    let tok = model.tokenizer().unwrap();
    let mut ctx = Context::new(
        Arc::clone(model),
        ContextParams {
            n_threads: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let mut sampler = Sampler::new(params);
    sampler.set_token_penalties(penalties);
    let opts = GenerateOptions {
        max_tokens: Some(max_tokens),
        stop_tokens: [tok.eos()]
            .into_iter()
            .chain(tok.token_id("<end_of_turn>"))
            .collect(),
        ..Default::default()
    };
    let mut out = Collect(String::new());
    generate(&mut ctx, &mut sampler, Some(tok), prompt, &opts, &mut out).unwrap();
    out.0
}

#[test]
fn greedy_completion_is_the_torch_continuation() {
    let server = Server::start_model(TINY_F32, &["-np", "2"]);
    let r = reference();
    let g = &r["greedy"];
    let want = g["gen_text"].as_str().unwrap();
    // All margins of the reference are > 1e-3, so f32 rounding cannot flip a token.
    assert!(g["margins"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m.as_f64().unwrap() > 1e-3));
    let body = json!({"prompt": g["prompt"], "max_tokens": 32, "temperature": 0});
    let v = server.post_ok("/v1/completions", &body);
    assert_eq!(answer_text(&v, 0), want);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 32);
    assert_eq!(
        v["usage"]["prompt_tokens"],
        g["prompt_ids"].as_array().unwrap().len()
    );
    // The same prompt as token ids (the torch ids, BOS included).
    let body = json!({"prompt": g["prompt_ids"], "max_tokens": 32, "temperature": 0});
    assert_eq!(
        answer_text(&server.post_ok("/v1/completions", &body), 0),
        want
    );
}

#[test]
fn chat_answer_schema_and_usage() {
    let server = Server::start(&[]);
    let v = server.post_ok(
        "/v1/chat/completions",
        &chat(
            "Tell me a fortune.",
            json!({"max_tokens": 12, "temperature": 0}),
        ),
    );
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "tiny-fortunes-q8_0");
    let c = &v["choices"][0];
    assert_eq!(c["index"], 0);
    assert_eq!(c["message"]["role"], "assistant");
    assert!(c["message"]["content"].is_string());
    assert_eq!(c["finish_reason"], "length");
    assert!(c["logprobs"].is_null());
    let u = &v["usage"];
    assert_eq!(u["completion_tokens"], 12);
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + 12
    );
    // The prompt is the Gemma template of the message (tokenized by the server itself).
    let t = server.post_ok(
        "/tokenize",
        &json!({"content": "<start_of_turn>user\nTell me a fortune.<end_of_turn>\n<start_of_turn>model\n", "add_special": true}),
    );
    assert_eq!(u["prompt_tokens"], t["tokens"].as_array().unwrap().len());
    // max_completion_tokens is the newer spelling of max_tokens.
    let v = server.post_ok(
        "/v1/chat/completions",
        &chat("Hi", json!({"max_completion_tokens": 3})),
    );
    assert_eq!(v["usage"]["completion_tokens"], 3);
}

#[test]
fn models_health_metrics_and_chat_page() {
    let server = Server::start(&["--alias", "fortunes"]);
    let v = server.get("/v1/models").json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "fortunes");
    assert_eq!(v["data"][0]["object"], "model");
    let h = server.get("/health");
    assert_eq!((h.status, h.json()["status"].as_str()), (200, Some("ok")));
    let page = server.get("/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let html = page.text();
    assert!(html.contains("/v1/chat/completions") && html.contains("id=\"send\""));
    let m = server.get("/metrics");
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let text = m.text();
    for name in [
        "rgemma_requests_total{status=\"200\"}",
        "rgemma_prompt_tokens_total",
        "rgemma_prompt_tokens_cached_total",
        "rgemma_tokens_generated_total",
        "rgemma_tokens_per_second",
        "rgemma_queue_length",
        "rgemma_slots_busy",
        "rgemma_cache_hits_total",
        "rgemma_cache_misses_total",
        "rgemma_cache_bytes",
    ] {
        assert!(text.contains(&format!("\n{name} ")), "no {name} in\n{text}");
    }
    // Every request is logged: method, path, status, tokens, time.
    server.post_ok("/v1/completions", &json!({"prompt": "A", "max_tokens": 4}));
    let line = server.wait_log("POST /v1/completions 200");
    assert!(line.contains("in=2 out=4"), "{line}");
    // The engine's recent speed and its time counters moved with the request.
    let text = server.get("/metrics").text();
    let value = |name: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"));
        line[name.len() + 1..].parse().unwrap()
    };
    for name in [
        "rgemma_tokens_per_second",
        "rgemma_prompt_tokens_per_second",
        "rgemma_generation_seconds_total",
        "rgemma_prompt_seconds_total",
    ] {
        assert!(value(name) > 0.0, "{name} is not positive in\n{text}");
    }
}

#[test]
fn tokenize_and_detokenize_match_the_library() {
    let server = Server::start(&[]);
    let model = Model::load(TINY_Q8).unwrap();
    let tok = model.tokenizer().unwrap();
    let text = "Hello world, <start_of_turn>user\nÄpfel 😀";
    let want = tok.encode(text, false, true).unwrap();
    let v = server.post_ok("/tokenize", &json!({"content": text}));
    assert_eq!(ids(&v["tokens"]), want);
    let v = server.post_ok("/tokenize", &json!({"content": text, "add_special": true}));
    assert_eq!(ids(&v["tokens"]), tok.encode(text, true, true).unwrap());
    let v = server.post_ok(
        "/tokenize",
        &json!({"content": "a<bos>", "parse_special": false}),
    );
    assert_eq!(
        ids(&v["tokens"]),
        tok.encode("a<bos>", false, false).unwrap()
    );
    let v = server.post_ok(
        "/tokenize",
        &json!({"content": "Hello", "with_pieces": true}),
    );
    let pieces: Vec<String> = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["piece"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(pieces.concat(), "Hello");
    let v = server.post_ok("/detokenize", &json!({"tokens": want}));
    assert_eq!(v["content"], tok.decode(&want, false).unwrap());
    assert_eq!(v["content"], text);
}

/// The chat stream: role first, content deltas that add up to the non-streamed answer,
/// a finish chunk, the usage chunk, `[DONE]`.
#[test]
fn chat_stream_adds_up_to_the_answer() {
    let server = Server::start(&[]);
    let params = json!({"max_tokens": 40, "temperature": 0});
    let whole = server.post_ok("/v1/chat/completions", &chat("Why?", params.clone()));
    let mut body = chat("Why?", params);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let mut s = server.stream("/v1/chat/completions", &body);
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    let events = s.rest();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, answer_text(&whole, 0));
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("length")]);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    for field in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage["usage"][field], whole["usage"][field]);
    }
    // The second identical prompt came whole from the prompt cache.
    assert_eq!(
        usage["usage"]["prompt_tokens_details"]["cached_tokens"],
        whole["usage"]["prompt_tokens"]
    );
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c["usage"].is_null()));
}

#[test]
fn completion_stream_and_stop_strings() {
    let server = Server::start(&[]);
    let base = json!({"prompt": "The meaning of life is", "max_tokens": 48, "temperature": 0});
    let whole = answer_text(&server.post_ok("/v1/completions", &base), 0);
    let mut body = base.clone();
    body["stream"] = json!(true);
    let mut s = server.stream("/v1/completions", &body);
    let events = s.rest();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "text_completion" && c.get("usage").is_none()));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, whole);

    // A stop string from the middle of that text: the answer ends right before it.
    let cut = whole
        .char_indices()
        .nth(whole.chars().count() / 2)
        .unwrap()
        .0;
    let stop: String = whole[cut..].chars().take(3).collect();
    let expect = &whole[..whole.find(&stop).unwrap()];
    let mut body = base.clone();
    body["stop"] = json!(["never-in-the-output", stop]);
    let v = server.post_ok("/v1/completions", &body);
    assert_eq!(answer_text(&v, 0), expect);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // The same, streamed.
    body["stream"] = json!(true);
    let events = server.stream("/v1/completions", &body).rest();
    let streamed: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(streamed, expect);
}

/// Sampling with a seed, with and without penalties, is what the library's own loop gives
/// with the same seed and settings; the same seed twice gives the same text.
#[test]
fn seeded_sampling_matches_the_library_loop() {
    let server = Server::start(&["-np", "3"]);
    let model = Arc::new(Model::load(TINY_Q8).unwrap());
    let tok = model.tokenizer().unwrap();
    let prompt_text = "A fool and his money";
    let prompt = tok.encode(prompt_text, true, true).unwrap();
    let cases = [
        (
            json!({"temperature": 0.9, "seed": 42}),
            SamplerParams {
                temp: 0.9,
                seed: Some(42),
                ..Default::default()
            },
            TokenPenalties::default(),
        ),
        (
            json!({"temperature": 0.7, "seed": 7, "presence_penalty": 1.5, "frequency_penalty": 0.5,
                   "top_k": 20, "top_p": 0.9, "min_p": 0.02, "repeat_penalty": 1.2}),
            SamplerParams {
                temp: 0.7,
                seed: Some(7),
                top_k: 20,
                top_p: 0.9,
                min_p: 0.02,
                repeat_penalty: 1.2,
                ..Default::default()
            },
            TokenPenalties {
                presence: 1.5,
                frequency: 0.5,
            },
        ),
    ];
    for (extra, params, penalties) in cases {
        let mut body = json!({"prompt": prompt_text, "max_tokens": 40});
        server_common::merge(&mut body, extra.clone());
        let got = answer_text(&server.post_ok("/v1/completions", &body), 0);
        let again = answer_text(&server.post_ok("/v1/completions", &body), 0);
        assert_eq!(got, again, "same seed, same text");
        let want = library_generation(&model, &prompt, params, penalties, 40);
        assert_eq!(got, want, "{extra}");
    }
    // Different seeds give different texts (at temperature 1.5, 40 tokens).
    let texts: std::collections::HashSet<String> = (0..3)
        .map(|seed| {
            let body =
                json!({"prompt": prompt_text, "max_tokens": 40, "temperature": 1.5, "seed": seed});
            answer_text(&server.post_ok("/v1/completions", &body), 0)
        })
        .collect();
    assert!(texts.len() > 1);
}

/// `n` choices fork one prompt; choice i is the single request with seed + i.
#[test]
fn n_choices_equal_single_requests_with_successive_seeds() {
    let server = Server::start(&["-np", "3"]);
    let body = chat(
        "Tell me more.",
        json!({"max_tokens": 20, "temperature": 1.0, "seed": 100, "n": 3}),
    );
    let v = server.post_ok("/v1/chat/completions", &body);
    assert_eq!(v["choices"].as_array().unwrap().len(), 3);
    let mut completion_tokens = 0;
    for i in 0..3 {
        assert_eq!(v["choices"][i]["index"], i);
        let single = chat(
            "Tell me more.",
            json!({"max_tokens": 20, "temperature": 1.0, "seed": 100 + i}),
        );
        let s = server.post_ok("/v1/chat/completions", &single);
        assert_eq!(answer_text(&v, i), answer_text(&s, 0), "choice {i}");
        completion_tokens += s["usage"]["completion_tokens"].as_u64().unwrap();
    }
    assert_eq!(
        v["usage"]["completion_tokens"].as_u64().unwrap(),
        completion_tokens
    );
    // Streamed: every choice's deltas add up to its text.
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let events = server.stream("/v1/chat/completions", &stream_body).rest();
    let mut texts = vec![String::new(); 3];
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        let ch = &c["choices"][0];
        if let Some(t) = ch["delta"]["content"].as_str() {
            texts[ch["index"].as_u64().unwrap() as usize].push_str(t);
        }
    }
    for (i, t) in texts.iter().enumerate() {
        assert_eq!(t, &answer_text(&v, i));
    }
}

#[test]
fn logprobs_describe_the_chosen_tokens() {
    let server = Server::start(&[]);
    let body = chat(
        "Hi",
        json!({"max_tokens": 10, "temperature": 0, "logprobs": true, "top_logprobs": 3}),
    );
    let v = server.post_ok("/v1/chat/completions", &body);
    let entries = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(entries.len(), 10);
    let mut text = String::new();
    for e in entries {
        let lp = e["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0);
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(top[0]["token"], e["token"]);
        assert!((top[0]["logprob"].as_f64().unwrap() - lp).abs() < 1e-6);
        assert!(top
            .windows(2)
            .all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
        let mass: f64 = top
            .iter()
            .map(|t| t["logprob"].as_f64().unwrap().exp())
            .sum();
        assert!(mass <= 1.0 + 1e-5);
        let bytes: Vec<u8> = e["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            e["token"].as_str().unwrap()
        );
        text.push_str(e["token"].as_str().unwrap());
    }
    assert_eq!(text, answer_text(&v, 0));
    // Completions: the legacy lists.
    let v = server.post_ok(
        "/v1/completions",
        &json!({"prompt": "Q", "max_tokens": 5, "temperature": 0, "logprobs": 2}),
    );
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 5);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 5);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
    assert_eq!(lp["text_offset"][0], 0);
}
