//! Bad requests get OpenAI's error JSON with the right status and the field at fault, and
//! never hurt the server; the API key guards every endpoint but `/health` and `/`; bad flags
//! and a model that does not load end the process with an error.

mod server_common;

use std::process::Command;

use serde_json::{json, Value};
use server_common::{chat, Server};

/// POSTs `body` (raw bytes) and expects a 400 naming `param`.
fn expect_400(server: &Server, path: &str, body: &str, param: Option<&str>) -> String {
    let r = server.request("POST", path, &[], Some(body.as_bytes()));
    let message = r.expect_error(400, param);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    message
}

#[test]
fn bad_requests_name_the_field() {
    let server = Server::start(&["-np", "2", "--max-tokens", "100"]);
    let c = "/v1/chat/completions";
    let msg = |extra: Value| chat("hi", extra).to_string();

    let m = expect_400(&server, c, "{\"messages\": [", None);
    assert!(m.contains("not valid JSON"), "{m}");
    let m = expect_400(&server, c, "[1, 2]", None);
    assert!(m.contains("JSON object"), "{m}");
    expect_400(&server, c, "{}", Some("messages"));
    expect_400(&server, c, "{\"messages\": []}", Some("messages"));
    expect_400(&server, c, "{\"messages\": \"hi\"}", Some("messages"));
    expect_400(&server, c, "{\"messages\": [\"hi\"]}", Some("messages[0]"));
    expect_400(
        &server,
        c,
        "{\"messages\": [{\"content\": \"hi\"}]}",
        Some("messages[0].role"),
    );
    expect_400(
        &server,
        c,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"tool\", \"content\": \"x\"}]}",
        Some("messages[1].role"),
    );
    expect_400(
        &server,
        c,
        "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}",
        Some("messages[0].content"),
    );
    expect_400(
        &server,
        c,
        "{\"messages\": [{\"role\": \"user\"}]}",
        Some("messages[0].content"),
    );
    expect_400(
        &server,
        c,
        "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\", \"image_url\": {}}]}]}",
        Some("messages[0].content"),
    );
    let m = expect_400(
        &server,
        c,
        &msg(json!({"temperature": "hot"})),
        Some("temperature"),
    );
    assert!(m.contains("number"), "{m}");
    expect_400(
        &server,
        c,
        &msg(json!({"temperature": -1})),
        Some("temperature"),
    );
    expect_400(&server, c, &msg(json!({"top_p": 1.5})), Some("top_p"));
    expect_400(&server, c, &msg(json!({"top_k": 2.5})), Some("top_k"));
    expect_400(
        &server,
        c,
        &msg(json!({"max_tokens": 0})),
        Some("max_tokens"),
    );
    let m = expect_400(
        &server,
        c,
        &msg(json!({"max_tokens": 101})),
        Some("max_tokens"),
    );
    assert!(m.contains("100"), "{m}");
    expect_400(
        &server,
        c,
        &msg(json!({"max_completion_tokens": "5"})),
        Some("max_completion_tokens"),
    );
    let m = expect_400(&server, c, &msg(json!({"n": 3})), Some("n"));
    assert!(m.contains("at most 2"), "{m}");
    expect_400(&server, c, &msg(json!({"n": 0})), Some("n"));
    expect_400(&server, c, &msg(json!({"seed": "x"})), Some("seed"));
    // An integer beyond 64 bits is out of range (said so), not "a number".
    let body = msg(json!({})).replace(
        "\"messages\"",
        "\"seed\": 18446744073709551616, \"messages\"",
    );
    let m = expect_400(&server, c, &body, Some("seed"));
    assert!(m.contains("between"), "{m}");
    expect_400(&server, c, &msg(json!({"stop": 5})), Some("stop"));
    expect_400(&server, c, &msg(json!({"stop": ["a", 1]})), Some("stop"));
    expect_400(
        &server,
        c,
        &msg(json!({"presence_penalty": 3})),
        Some("presence_penalty"),
    );
    expect_400(
        &server,
        c,
        &msg(json!({"frequency_penalty": "x"})),
        Some("frequency_penalty"),
    );
    expect_400(
        &server,
        c,
        &msg(json!({"repeat_penalty": 0})),
        Some("repeat_penalty"),
    );
    expect_400(&server, c, &msg(json!({"stream": "yes"})), Some("stream"));
    expect_400(
        &server,
        c,
        &msg(json!({"stream_options": 1})),
        Some("stream_options"),
    );
    expect_400(&server, c, &msg(json!({"logprobs": 1})), Some("logprobs"));
    expect_400(
        &server,
        c,
        &msg(json!({"top_logprobs": 2})),
        Some("top_logprobs"),
    );
    expect_400(
        &server,
        c,
        &msg(json!({"logprobs": true, "top_logprobs": 21})),
        Some("top_logprobs"),
    );
    // Fields that would change the answer and are not implemented.
    expect_400(
        &server,
        c,
        &msg(json!({"tools": [{"type": "function", "function": {"name": "f"}}]})),
        Some("tools"),
    );
    expect_400(
        &server,
        c,
        &msg(json!({"tool_choice": "auto"})),
        Some("tool_choice"),
    );
    expect_400(
        &server,
        c,
        &msg(json!({"response_format": {"type": "json_object"}})),
        Some("response_format"),
    );
    expect_400(
        &server,
        c,
        &msg(json!({"logit_bias": {"5": 10}})),
        Some("logit_bias"),
    );
    // Harmless ones are accepted.
    let ok = chat(
        "hi",
        json!({"max_tokens": 2, "user": "me", "response_format": {"type": "text"}, "tools": [], "logit_bias": {}, "stream": false}),
    );
    server.post_ok(c, &ok);

    let p = "/v1/completions";
    expect_400(&server, p, "{}", Some("prompt"));
    expect_400(&server, p, "{\"prompt\": \"\"}", Some("prompt"));
    expect_400(&server, p, "{\"prompt\": []}", Some("prompt"));
    expect_400(&server, p, "{\"prompt\": 7}", Some("prompt"));
    let m = expect_400(&server, p, "{\"prompt\": [2, 5, 2048]}", Some("prompt"));
    assert!(m.contains("2048") && m.contains("vocabulary"), "{m}");
    expect_400(&server, p, "{\"prompt\": [2, -1]}", Some("prompt"));
    expect_400(&server, p, "{\"prompt\": [\"a\", \"b\"]}", Some("prompt"));
    expect_400(
        &server,
        p,
        "{\"prompt\": \"a\", \"echo\": true}",
        Some("echo"),
    );
    expect_400(
        &server,
        p,
        "{\"prompt\": \"a\", \"best_of\": 3}",
        Some("best_of"),
    );
    expect_400(
        &server,
        p,
        "{\"prompt\": \"a\", \"logprobs\": true}",
        Some("logprobs"),
    );
    // One prompt in a list is fine, as text or ids.
    server.post_ok(p, &json!({"prompt": ["a"], "max_tokens": 1}));
    server.post_ok(p, &json!({"prompt": [[2, 5]], "max_tokens": 1}));

    expect_400(&server, "/tokenize", "{}", Some("content"));
    expect_400(&server, "/tokenize", "{\"content\": 1}", Some("content"));
    expect_400(
        &server,
        "/detokenize",
        "{\"tokens\": \"1\"}",
        Some("tokens"),
    );
    let m = expect_400(
        &server,
        "/detokenize",
        "{\"tokens\": [1, 99999]}",
        Some("tokens"),
    );
    assert!(m.contains("99999"), "{m}");

    server.get("/nowhere").expect_error(404, None);
    server
        .request("GET", "/v1/chat/completions", &[], None)
        .expect_error(405, None);

    // The server is fine after all that, and counted the 400s.
    let v = server.post_ok(c, &chat("hi", json!({"max_tokens": 3})));
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert!(server.metric("rgemma_requests_total{status=\"400\"}") >= 40.0);
    assert_eq!(server.metric("rgemma_engine_errors_total"), 0.0);
}

#[test]
fn limits_on_body_and_prompt() {
    let server = Server::start(&["--max-body", "2000", "--max-prompt-tokens", "16"]);
    let big = chat(&"x".repeat(3000), json!({}));
    let r = server.post("/v1/chat/completions", &big);
    r.expect_error(413, None);
    let long = chat(
        "one two three four five six seven eight nine ten eleven twelve",
        json!({}),
    );
    let m = server
        .post("/v1/chat/completions", &long)
        .expect_error(400, Some("messages"));
    assert!(m.contains("16"), "{m}");
    let r = server.post("/v1/completions", &json!({"prompt": vec![5; 17]}));
    r.expect_error(400, Some("prompt"));
    server.post_ok(
        "/v1/completions",
        &json!({"prompt": vec![5; 16], "max_tokens": 1}),
    );
}

#[test]
fn api_key_guards_all_but_health_and_the_page() {
    let server = Server::start(&["--api-key", "s3cret"]);
    let auth = [("Authorization", "Bearer s3cret")];
    let wrong = [("Authorization", "Bearer s3cre")];
    let body = chat("hi", json!({"max_tokens": 2})).to_string();
    for (method, path, body) in [
        ("GET", "/v1/models", None),
        ("GET", "/metrics", None),
        ("POST", "/v1/chat/completions", Some(body.as_bytes())),
        (
            "POST",
            "/v1/completions",
            Some(b"{\"prompt\": \"a\", \"max_tokens\": 1}".as_slice()),
        ),
        (
            "POST",
            "/tokenize",
            Some(b"{\"content\": \"a\"}".as_slice()),
        ),
        ("POST", "/detokenize", Some(b"{\"tokens\": [5]}".as_slice())),
    ] {
        let r = server.request(method, path, &[], body);
        r.expect_error(401, None);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert_eq!(r.json()["error"]["type"], "authentication_error");
        server
            .request(method, path, &wrong, body)
            .expect_error(401, None);
        let ok = server.request(method, path, &auth, body);
        assert_eq!(ok.status, 200, "{path}: {}", ok.text());
    }
    assert_eq!(server.get("/health").status, 200);
    assert_eq!(server.get("/").status, 200);

    let open_metrics = Server::start(&["--api-key", "k", "--metrics-no-auth"]);
    assert_eq!(open_metrics.get("/metrics").status, 200);
    open_metrics.get("/v1/models").expect_error(401, None);
}

fn run_server(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rg-server"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_and_missing_models_fail_with_one_line() {
    let m = server_common::TINY_Q8;
    let (ok, err) = run_server(&[
        "-m",
        m,
        "--port",
        "0",
        "--cache-type-k",
        "f16",
        "--cache-type-v",
        "f32",
    ]);
    assert!(
        !ok && err.starts_with("error: ") && err.contains("--cache-type-v"),
        "{err}"
    );
    let (ok, err) = run_server(&["-m", m, "--port", "0", "-ctk", "q9"]);
    assert!(!ok && err.contains("--cache-type-k"), "{err}");
    let (ok, err) = run_server(&["-m", m, "--port", "0", "-np", "0"]);
    assert!(!ok && err.contains("--parallel"), "{err}");
    let (ok, err) = run_server(&["-m", m, "--port", "0", "--max-step-ms", "soon"]);
    assert!(!ok && err.contains("--max-step-ms"), "{err}");
    let (ok, err) = run_server(&["-m", m, "--port", "0", "--burst-interval", "many"]);
    assert!(!ok && err.contains("--burst-interval"), "{err}");
    // Two prompt policies at once.
    let (ok, err) = run_server(&[
        "-m",
        m,
        "--port",
        "0",
        "--max-step-ms",
        "500",
        "--burst-interval",
        "8",
    ]);
    assert!(
        !ok && err.contains("--max-step-ms") && err.contains("--burst-interval"),
        "{err}"
    );
    let (ok, err) = run_server(&["-m", "/nonexistent/model.gguf", "--port", "0"]);
    assert!(
        !ok && err.contains("error: cannot load /nonexistent/model.gguf"),
        "{err}"
    );
}

/// While the model loads, `/health` and the completion endpoints answer 503; a model that
/// fails to load ends the process with an error. (A FIFO stands for a slow disk: opening it
/// blocks until a writer comes, then memory-mapping it fails.)
#[test]
fn health_is_503_while_loading() {
    let dir = std::env::temp_dir().join(format!("rg-server-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("model.gguf");
    let _ = std::fs::remove_file(&fifo);
    if !Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("skipped: no mkfifo");
        return;
    }
    let mut server = Server::spawn(fifo.to_str().unwrap(), &[]);
    let r = server.get("/health");
    r.expect_error(503, None);
    assert!(r.header("retry-after").is_some());
    server
        .post("/v1/chat/completions", &chat("hi", json!({})))
        .expect_error(503, None);
    // Let the load go on: a writer opens the FIFO, writes a little and closes it (the write
    // itself may fail if the server has already given up on the file).
    let _ = std::fs::write(&fifo, b"GGUF");
    let status = server.wait_exit();
    assert!(!status.success());
    server.wait_log("error: cannot load");
    let _ = std::fs::remove_dir_all(&dir);
}
