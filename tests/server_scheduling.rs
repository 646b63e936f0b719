//! Continuous batching and the prompt cache: concurrent requests get what they get alone
//! (and the torch continuation where there is one), prompts run in bursts between the runs
//! of generating streams (or, paced, in chunks next to them), a client that leaves frees its
//! slot, a full queue answers 503, a
//! request's time is bounded, cache hits give the same answers as no cache, SIGTERM lets
//! requests in flight finish and exits 0.

mod server_common;

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};
use server_common::{answer_text, chat, Server, ENDLESS, ENDLESS_ARGS, TINY_F32};

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/tiny-fortunes/reference.json"
    );
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// 8 greedy requests at once on 3 slots with a 16-row step budget (so requests queue, join
/// and leave at different steps, and prompts run in chunks beside generating streams): each
/// gets exactly what it gets alone, and the torch prompt gets the torch continuation.
#[test]
fn concurrent_greedy_requests_equal_lone_ones() {
    let server = Server::start_model(TINY_F32, &["-np", "3", "-b", "16", "--cache-ram", "0"]);
    let r = reference();
    let torch_prompt = r["greedy"]["prompt"].as_str().unwrap().to_string();
    let mut bodies = vec![json!({"prompt": torch_prompt, "max_tokens": 32, "temperature": 0})];
    let prompts = [
        "A fool",
        "Never trust a man who, when left alone in a room with a tea cosy, doesn't try it on.",
        "The",
        "Q: How many programmers does it take to change a light bulb?\nA:",
        "If at first you don't succeed, try, try again. Then quit. There's no point in being a damn fool about it.",
        "Love",
    ];
    for (i, p) in prompts.iter().enumerate() {
        bodies.push(json!({"prompt": p, "max_tokens": 20 + 7 * i, "temperature": 0}));
    }
    bodies.push(chat(
        "What is the meaning of life?",
        json!({"max_tokens": 30, "temperature": 0}),
    ));
    let path = |b: &Value| {
        if b.get("messages").is_some() {
            "/v1/chat/completions"
        } else {
            "/v1/completions"
        }
    };
    let alone: Vec<String> = bodies
        .iter()
        .map(|b| answer_text(&server.post_ok(path(b), b), 0))
        .collect();
    assert_eq!(alone[0], r["greedy"]["gen_text"].as_str().unwrap());

    let steps_before = server.metric("rgemma_decode_steps_total");
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|b| {
                let server = &server;
                s.spawn(move || answer_text(&server.post_ok(path(b), b), 0))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, t, "request {i}: alone vs together");
    }
    // Batched: fewer steps than tokens (32 + 20..55 + 30 tokens, prompts in 16-row chunks).
    let steps = server.metric("rgemma_decode_steps_total") - steps_before;
    let generated: f64 = 32.0 + (0..6).map(|i| 20.0 + 7.0 * i as f64).sum::<f64>() + 30.0;
    assert!(steps < generated, "{steps} steps for {generated} tokens");
    server.wait_metric("rgemma_slots_busy", 0.0);
}

/// Seeded sampling on the quantized file (packed Q8_0 and F16 kernels): 6 requests at once on
/// 4 slots give exactly the texts they give alone. Batched decoding is bit-identical to
/// decoding alone (the packed kernels are batch invariant), so a seed reproduces a text
/// whatever else the server is doing; before that, a sampled text could change within a few
/// tokens under load.
#[test]
fn seeded_requests_under_load_equal_lone_ones() {
    let server = Server::start(&["-np", "4", "-b", "16", "--cache-ram", "0"]);
    let prompts = [
        "A fool",
        "The",
        "Love",
        "Q: Why?\nA:",
        "Never",
        "If at first",
    ];
    let bodies: Vec<Value> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            json!({"prompt": p, "max_tokens": 150, "temperature": 1.0, "seed": 1000 + i,
                   "top_k": 0, "top_p": 1.0, "min_p": 0.0})
        })
        .collect();
    let alone: Vec<String> = bodies
        .iter()
        .map(|b| answer_text(&server.post_ok("/v1/completions", b), 0))
        .collect();
    let (steps_before, tokens_before) = (
        server.metric("rgemma_decode_steps_total"),
        server.metric("rgemma_tokens_generated_total"),
    );
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|b| {
                let server = &server;
                s.spawn(move || answer_text(&server.post_ok("/v1/completions", b), 0))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, t, "request {i}: alone vs together");
    }
    let steps = server.metric("rgemma_decode_steps_total") - steps_before;
    let tokens = server.metric("rgemma_tokens_generated_total") - tokens_before;
    assert!(steps < tokens, "batched: {steps} steps for {tokens} tokens");
    server.wait_metric("rgemma_slots_busy", 0.0);
}

/// Paced (`--max-step-ms`): a long prompt runs in chunks between the steps of a generating
/// stream: the stream keeps receiving tokens while the prompt is in, instead of waiting for
/// all of it.
#[test]
fn paced_long_prompts_do_not_stall_running_streams() {
    let args = [
        "-np",
        "2",
        "-b",
        "4",
        "--cache-ram",
        "0",
        "--max-step-ms",
        "1000",
    ];
    let server = Server::start(&[&args, ENDLESS_ARGS.as_slice()].concat());
    let mut s = server.stream(
        "/v1/completions",
        &json!({"prompt": "Once", "max_tokens": ENDLESS, "temperature": 0, "stream": true}),
    );
    assert!(s.next_data().is_some());
    let long_prompt = "word ".repeat(2000);
    std::thread::scope(|scope| {
        let server = &server;
        let long = scope.spawn(move || {
            server.post_ok(
                "/v1/completions",
                &json!({"prompt": long_prompt, "max_tokens": 1}),
            )
        });
        // The long prompt (2000+ tokens in chunks of 3 rows next to the stream's one)
        // takes 600+ steps, and the stream gets a token in each. Counted here are the
        // tokens read before the long request's answer: a slow reader only lowers the
        // count, hence the wide margin.
        let mut during = 0;
        while !long.is_finished() {
            if s.next_data().is_none() {
                break;
            }
            during += 1;
        }
        let v = long.join().unwrap();
        assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 2000);
        assert!(
            during >= 50,
            "the stream got {during} tokens while the prompt ran"
        );
    });
    assert!(server.metric("rgemma_mixed_steps_total") > 0.0);
    assert_eq!(server.metric("rgemma_prompt_bursts_total"), 0.0);
}

/// The default policy: a long prompt that arrives while a stream generates runs in a burst
/// of prompt-only steps once the stream has made its run, so no step carries both; the
/// stream is still running afterwards, and the prompt's answer is the one it gets alone.
#[test]
fn prompts_run_in_bursts_between_the_runs_of_streams() {
    let args = [
        "-np",
        "2",
        "-b",
        "8",
        "--cache-ram",
        "0",
        "--burst-interval",
        "16",
    ];
    let server = Server::start(&[&args, ENDLESS_ARGS.as_slice()].concat());
    let long = json!({"prompt": "word ".repeat(300), "max_tokens": 8, "temperature": 0});
    let alone = answer_text(&server.post_ok("/v1/completions", &long), 0);
    let bursts_alone = server.metric("rgemma_prompt_bursts_total");
    assert_eq!(bursts_alone, 1.0, "no stream: the prompt ran at once");

    let mut s = server.stream(
        "/v1/completions",
        &json!({"prompt": "Once", "max_tokens": ENDLESS, "temperature": 0, "stream": true}),
    );
    assert!(s.next_data().is_some());
    // The stream is generating (it outlives the test): the long prompt waits for its
    // run of 16 tokens, then runs alone.
    let v = server.post_ok("/v1/completions", &long);
    assert_eq!(answer_text(&v, 0), alone);
    // The stream outlived the burst (it still holds its slot when the long request's is
    // free).
    server.wait_metric("rgemma_slots_busy", 1.0);
    assert_eq!(server.metric("rgemma_mixed_steps_total"), 0.0);
    assert_eq!(
        server.metric("rgemma_prompt_bursts_total"),
        bursts_alone + 2.0,
        "one burst for the stream's prompt, one for the long one"
    );
    assert!(s.next_data().is_some(), "the stream goes on");
    drop(s);
    server.wait_metric("rgemma_slots_busy", 0.0);
}

/// The choices of an `n` > 1 request leave their slots one by one; a new request can take a
/// freed slot while the other choices go on, and everything ends cleanly.
#[test]
fn a_slot_freed_by_one_choice_serves_a_new_request() {
    let server = Server::start(&["-np", "2"]);
    let body = |seed: u64| {
        json!({"prompt": "The", "max_tokens": 400, "n": 2, "seed": seed, "temperature": 1.0,
               "stop": ["%"], "logprobs": 0})
    };
    let n_tokens = |v: &Value, i: usize| {
        v["choices"][i]["logprobs"]["tokens"]
            .as_array()
            .unwrap()
            .len()
    };
    // A seed whose first choice ends well before the second.
    let seed = (0..40)
        .find(|&seed| {
            let v = server.post_ok("/v1/completions", &body(seed));
            n_tokens(&v, 1) >= n_tokens(&v, 0) + 150
        })
        .expect("a seed whose first choice ends 150 tokens before the second");
    let mut stream_body = body(seed);
    stream_body["stream"] = json!(true);
    let mut s = server.stream("/v1/completions", &stream_body);
    loop {
        let data = s.next_data().expect("the first choice finishes");
        let c: Value = serde_json::from_str(&data).unwrap();
        let ch = &c["choices"][0];
        if ch["index"] == 0 && !ch["finish_reason"].is_null() {
            break;
        }
    }
    // Choice 1 is still generating in the other slot.
    let v = server.post_ok("/v1/completions", &json!({"prompt": "A", "max_tokens": 5}));
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let rest = s.rest();
    assert_eq!(rest.last().map(String::as_str), Some("[DONE]"), "{rest:?}");
    let finished_second = rest.iter().any(|d| {
        serde_json::from_str::<Value>(d).is_ok_and(|c| {
            c["choices"][0]["index"] == 1 && !c["choices"][0]["finish_reason"].is_null()
        })
    });
    assert!(finished_second);
    server.wait_metric("rgemma_slots_busy", 0.0);
}

/// A client that disconnects mid-stream cancels its generation: the slot is free again
/// (with -np 1 the next request is served) and no more tokens are generated for it.
#[test]
fn disconnect_mid_stream_frees_the_slot() {
    let server = Server::start(&[&["-np", "1"], ENDLESS_ARGS.as_slice()].concat());
    let mut s = server.stream(
        "/v1/completions",
        &json!({"prompt": "The", "max_tokens": ENDLESS, "temperature": 0, "stream": true}),
    );
    for _ in 0..3 {
        assert!(s.next_data().is_some());
    }
    assert_eq!(server.metric("rgemma_slots_busy"), 1.0);
    drop(s);
    server.wait_metric("rgemma_slots_busy", 0.0);
    let generated = server.metric("rgemma_tokens_generated_total");
    assert!(
        generated < ENDLESS as f64,
        "generation went on: {generated} tokens"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(server.metric("rgemma_tokens_generated_total"), generated);
    let v = server.post_ok("/v1/completions", &json!({"prompt": "A", "max_tokens": 5}));
    assert_eq!(v["usage"]["completion_tokens"], 5);
    // The stream's log line is written when it ends.
    server.wait_log("POST /v1/completions 200 in=2 out=0");

    // The same for a request that is not streamed: the client sends it and goes away.
    let body = json!({"prompt": "The", "max_tokens": ENDLESS, "temperature": 0}).to_string();
    let mut c = server.connect().unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(body.as_bytes()).unwrap();
    server.wait_metric("rgemma_slots_busy", 1.0);
    drop(c);
    server.wait_metric("rgemma_slots_busy", 0.0);
    server.wait_log("POST /v1/completions 499");
    assert!(server.metric("rgemma_tokens_generated_total") < generated + ENDLESS as f64);
}

/// -np 1 and a queue of 1: with one request running and one waiting, the next gets 503 with
/// Retry-After; the waiting one is served when the slot frees.
#[test]
fn full_queue_answers_503_with_retry_after() {
    let server =
        Server::start(&[&["-np", "1", "--max-queue", "1"], ENDLESS_ARGS.as_slice()].concat());
    // Greedy: a sampled stream could end on its own (EOS) and free the slot too early.
    let mut running = server.stream(
        "/v1/completions",
        &json!({"prompt": "The", "max_tokens": ENDLESS, "temperature": 0, "stream": true}),
    );
    assert!(running.next_data().is_some());
    std::thread::scope(|scope| {
        let server = &server;
        let waiting = scope.spawn(move || {
            server.post_ok("/v1/completions", &json!({"prompt": "A", "max_tokens": 3}))
        });
        server.wait_metric("rgemma_queue_length", 1.0);
        let r = server.post("/v1/completions", &json!({"prompt": "B", "max_tokens": 3}));
        let m = r.expect_error(503, None);
        assert!(m.contains("waiting"), "{m}");
        assert_eq!(r.header("retry-after"), Some("1"));
        drop(running);
        let v = waiting.join().unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 3);
    });
    assert!(server.metric("rgemma_requests_total{status=\"503\"}") >= 1.0);
}

/// --timeout: a generating request ends with finish_reason "length" and the text so far.
/// A request queued behind it ends too: with 503 if its time runs out while it waits, or
/// with "length" if it got the slot first (timeouts are equal and the queue is first come,
/// first served, so which one depends on how fast the slot frees).
#[test]
fn timeout_bounds_a_request() {
    let server =
        Server::start(&[&["-np", "1", "--timeout", "1"], ENDLESS_ARGS.as_slice()].concat());
    std::thread::scope(|scope| {
        let server = &server;
        let long = scope.spawn(move || {
            server.post_ok(
                "/v1/completions",
                &json!({"prompt": "The", "max_tokens": ENDLESS, "temperature": 0}),
            )
        });
        server.wait_metric("rgemma_slots_busy", 1.0);
        let r = server.post(
            "/v1/completions",
            &json!({"prompt": "A", "max_tokens": ENDLESS}),
        );
        if r.status == 200 {
            assert_eq!(r.json()["choices"][0]["finish_reason"], "length");
        } else {
            let m = r.expect_error(503, None);
            assert!(m.contains("timed out"), "{m}");
        }
        let v = long.join().unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        let n = v["usage"]["completion_tokens"].as_u64().unwrap();
        assert!(n > 0 && n < ENDLESS, "{n} tokens");
        assert!(!answer_text(&v, 0).is_empty());
    });
}

fn cached_tokens(v: &Value) -> u64 {
    v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap()
}

/// The prompt cache: an identical request resumes from the prompt's snapshot (all its
/// tokens reused), a chat's next turn from the previous answer's, and every answer equals
/// the one of a server without the cache.
#[test]
fn cache_hits_give_the_answers_of_no_cache() {
    let cached = Server::start(&["-np", "2"]);
    let uncached = Server::start(&["-np", "2", "--cache-ram", "0"]);
    let sampling = json!({"max_tokens": 24, "temperature": 0.8, "seed": 11});
    let first = chat("Tell me a fortune.", sampling.clone());
    let a1 = cached.post_ok("/v1/chat/completions", &first);
    assert_eq!(cached_tokens(&a1), 0);
    let reused_before = cached.metric("rgemma_prompt_tokens_cached_total");
    let a2 = cached.post_ok("/v1/chat/completions", &first);
    let prompt_tokens = a2["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(cached_tokens(&a2), prompt_tokens, "the whole prompt reused");
    assert_eq!(
        cached.metric("rgemma_prompt_tokens_cached_total") - reused_before,
        prompt_tokens as f64
    );
    assert!(cached.metric("rgemma_cache_hits_total") >= 1.0);
    assert!(cached.metric("rgemma_cache_bytes") > 0.0);
    let u = uncached.post_ok("/v1/chat/completions", &first);
    assert_eq!(cached_tokens(&u), 0);
    assert_eq!(answer_text(&a1, 0), answer_text(&u, 0));
    assert_eq!(answer_text(&a2, 0), answer_text(&u, 0));

    // A conversation: each turn resumes after the previous answer and runs only the new
    // turn; its answers are those computed from scratch.
    let mut messages = vec![json!({"role": "system", "content": "You tell fortunes."})];
    let mut previous_prompt = 0;
    for (turn, question) in ["Tell me a fortune.", "Another one?", "And a last one."]
        .iter()
        .enumerate()
    {
        messages.push(json!({"role": "user", "content": question}));
        let mut body = json!({"messages": messages});
        server_common::merge(
            &mut body,
            json!({"max_tokens": 16, "temperature": 0.8, "seed": turn}),
        );
        let c = cached.post_ok("/v1/chat/completions", &body);
        let u = uncached.post_ok("/v1/chat/completions", &body);
        let text = answer_text(&c, 0);
        assert_eq!(text, answer_text(&u, 0), "turn {turn}");
        let prompt = c["usage"]["prompt_tokens"].as_u64().unwrap();
        if turn > 0 {
            // Everything up to the end of the previous answer came from the cache: what ran
            // is the new user turn (and the opening of the model's).
            let new_turn = cached.post_ok(
                "/tokenize",
                &json!({"content": format!("<start_of_turn>user\n{question}<end_of_turn>\n<start_of_turn>model\n")}),
            );
            let new_tokens = new_turn["tokens"].as_array().unwrap().len() as u64;
            assert_eq!(cached_tokens(&c), prompt - new_tokens, "turn {turn}");
            assert!(cached_tokens(&c) > previous_prompt);
        }
        previous_prompt = prompt;
        messages.push(json!({"role": "assistant", "content": text}));
    }
}

/// An answer whose tokens are not how the next prompt writes it (here: cut by a stop
/// string, so its last token holds text the answer does not) is run again from the prompt's
/// snapshot in its written form, so the next turn still resumes after it; answers equal
/// those of a server without the cache.
#[test]
fn cache_reruns_answers_the_next_prompt_writes_differently() {
    let cached = Server::start(&["-np", "2"]);
    let uncached = Server::start(&["-np", "2", "--cache-ram", "0"]);
    let first = chat(
        "Tell me a fortune.",
        json!({"max_tokens": 40, "temperature": 0, "stop": ["e"]}),
    );
    let closing_before = cached.metric("rgemma_closing_tokens_total");
    let a = cached.post_ok("/v1/chat/completions", &first);
    assert_eq!(a["choices"][0]["finish_reason"], "stop");
    let text = answer_text(&a, 0);
    assert_eq!(
        text,
        answer_text(&uncached.post_ok("/v1/chat/completions", &first), 0)
    );
    let next = json!({
        "messages": [
            {"role": "user", "content": "Tell me a fortune."},
            {"role": "assistant", "content": text},
            {"role": "user", "content": "More."},
        ],
        "max_tokens": 20,
        "temperature": 0,
    });
    let b = cached.post_ok("/v1/chat/completions", &next);
    let rerun = cached.metric("rgemma_closing_tokens_total") - closing_before;
    let answer_tokens = cached.post_ok("/tokenize", &json!({"content": text.trim()}))["tokens"]
        .as_array()
        .unwrap()
        .len() as f64;
    // The answer's text and "<end_of_turn>\n" ran after the first request's response.
    assert!(rerun >= answer_tokens + 2.0, "{rerun} closing tokens");
    let new_turn = cached.post_ok(
        "/tokenize",
        &json!({"content": "<start_of_turn>user\nMore.<end_of_turn>\n<start_of_turn>model\n"}),
    );
    let new_tokens = new_turn["tokens"].as_array().unwrap().len() as u64;
    let prompt = b["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(cached_tokens(&b), prompt - new_tokens);
    assert_eq!(
        answer_text(&b, 0),
        answer_text(&uncached.post_ok("/v1/chat/completions", &next), 0)
    );
}

/// SIGTERM: requests in flight finish, new connections are refused, exit status 0.
#[test]
fn sigterm_finishes_requests_in_flight_and_exits_0() {
    let mut server = Server::start(&["-np", "2"]);
    let mut s = server.stream(
        "/v1/completions",
        &json!({"prompt": "The", "max_tokens": 3000, "temperature": 0, "stream": true,
                "stream_options": {"include_usage": true}}),
    );
    assert!(s.next_data().is_some());
    server.terminate();
    server.wait_log("shutting down");
    let rest = s.rest();
    assert_eq!(
        rest.last().map(String::as_str),
        Some("[DONE]"),
        "the stream finished"
    );
    let usage: Value = serde_json::from_str(&rest[rest.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 3000);
    let status = server.wait_exit();
    assert!(status.success(), "{status:?}");
    assert!(server.connect().is_err(), "still accepting connections");
    server.wait_log("rg-server: stopped");
}
