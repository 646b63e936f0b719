//! The endpoints. The completion endpoints parse and tokenize the request here, hand a
//! [`Job`] to the engine, and turn its events into one JSON answer or a stream.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::engine::{Event, Job, Loaded, PromptKind, Usage};
use super::error::ApiError;
use super::http::{App, RequestLog};
use super::request::{self, CompletionRequest, Fields, Input};
use super::response::{Api, Responder};

const CHAT_PAGE: &str = include_str!("chat.html");

/// `GET /`: the chat page.
pub async fn index() -> Html<&'static str> {
    Html(CHAT_PAGE)
}

/// `GET /health`: 200 once the model is loaded, 503 before.
pub async fn health(State(app): State<Arc<App>>) -> Response {
    if app.shared.loaded.get().is_none() {
        return ApiError::loading().into_response();
    }
    let m = &app.shared.metrics;
    let busy = m.slots_busy.load(Relaxed);
    let total = m.slots_total.load(Relaxed);
    json_response(json!({
        "status": "ok",
        "slots_idle": total.saturating_sub(busy),
        "slots_processing": busy,
    }))
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.shared.metrics.render(),
    )
        .into_response()
}

/// `GET /v1/models`: the one model.
pub async fn models(State(app): State<Arc<App>>) -> Response {
    let mut model = json!({
        "id": app.model_id,
        "object": "model",
        "created": 0,
        "owned_by": "rgemma",
    });
    if let Some(loaded) = app.shared.loaded.get() {
        let hp = loaded.model.hparams();
        model["meta"] = json!({
            "n_vocab": hp.n_vocab,
            "n_embd": hp.hidden,
            "n_layer": hp.n_layers,
            "n_parallel": app.config.n_parallel,
        });
    }
    json_response(json!({"object": "list", "data": [model]}))
}

fn loaded(app: &App) -> Result<&Loaded, ApiError> {
    app.shared.loaded.get().ok_or_else(ApiError::loading)
}

/// The body, at most `--max-body` bytes.
async fn read_body(app: &App, body: Body) -> Result<Bytes, ApiError> {
    let limit = app.config.limits.max_body_bytes;
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.to_string().contains("length limit"))
            || e.to_string().contains("length limit");
        if too_large {
            ApiError::body_too_large(limit)
        } else {
            ApiError::invalid_request(format!("cannot read the request body: {e}"))
        }
    })
}

/// `POST /tokenize`: `{"content", "add_special"?, "parse_special"?, "with_pieces"?}` ->
/// `{"tokens": [...]}` (with pieces: `[{"id", "piece"}]`).
pub async fn tokenize(
    State(app): State<Arc<App>>,
    Extension(log): Extension<Arc<RequestLog>>,
    body: Body,
) -> Result<Response, ApiError> {
    let loaded = loaded(&app)?;
    let map = request::parse_object(&read_body(&app, body).await?)?;
    let f = Fields::new(&map);
    let content = f
        .string("content")?
        .ok_or_else(|| ApiError::invalid_field("content", "'content' is required"))?;
    let add_special = f.bool("add_special")?.unwrap_or(false);
    let parse_special = f.bool("parse_special")?.unwrap_or(true);
    let with_pieces = f.bool("with_pieces")?.unwrap_or(false);
    let tok = loaded
        .model
        .tokenizer()
        .ok_or_else(|| ApiError::invalid_request("this model file has no tokenizer"))?;
    let ids = tok
        .encode(
            content,
            add_special && tok.add_bos_by_default(),
            parse_special,
        )
        .map_err(|e| ApiError::invalid_field("content", e.to_string()))?;
    log.tokens_in.store(ids.len(), Relaxed);
    let tokens: Vec<Value> = if with_pieces {
        ids.iter()
            .map(|&id| {
                let piece = tok
                    .token_bytes(id)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                json!({"id": id, "piece": piece})
            })
            .collect()
    } else {
        ids.iter().map(|&id| json!(id)).collect()
    };
    Ok(json_response(json!({"tokens": tokens})))
}

/// `POST /detokenize`: `{"tokens": [...]}` -> `{"content": "..."}`.
pub async fn detokenize(
    State(app): State<Arc<App>>,
    Extension(log): Extension<Arc<RequestLog>>,
    body: Body,
) -> Result<Response, ApiError> {
    let loaded = loaded(&app)?;
    let map = request::parse_object(&read_body(&app, body).await?)?;
    let ids = match Fields::new(&map).get("tokens") {
        Some(v) => request::token_ids("tokens", v)?,
        None => return Err(ApiError::invalid_field("tokens", "'tokens' is required")),
    };
    check_vocab("tokens", &ids, loaded.model.n_vocab())?;
    log.tokens_in.store(ids.len(), Relaxed);
    let content = match loaded.model.tokenizer() {
        Some(tok) => tok
            .decode(&ids, false)
            .map_err(|e| ApiError::invalid_field("tokens", e.to_string()))?,
        None => {
            return Err(ApiError::invalid_request(
                "this model file has no tokenizer",
            ))
        }
    };
    Ok(json_response(json!({"content": content})))
}

fn check_vocab(field: &str, ids: &[u32], n_vocab: usize) -> Result<(), ApiError> {
    match ids
        .iter()
        .enumerate()
        .find(|(_, &id)| id as usize >= n_vocab)
    {
        Some((i, id)) => Err(ApiError::invalid_field(
            field,
            format!("'{field}[{i}]': token id {id} is outside the vocabulary ({n_vocab} tokens)"),
        )),
        None => Ok(()),
    }
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(app): State<Arc<App>>,
    Extension(log): Extension<Arc<RequestLog>>,
    body: Body,
) -> Result<Response, ApiError> {
    complete(app, log, Api::Chat, body).await
}

/// `POST /v1/completions`.
pub async fn completions(
    State(app): State<Arc<App>>,
    Extension(log): Extension<Arc<RequestLog>>,
    body: Body,
) -> Result<Response, ApiError> {
    complete(app, log, Api::Completion, body).await
}

/// Both completion endpoints: parse, tokenize, queue, answer.
async fn complete(
    app: Arc<App>,
    log: Arc<RequestLog>,
    api: Api,
    body: Body,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let model = Arc::clone(&loaded(&app)?.model);
    let map = request::parse_object(&read_body(&app, body).await?)?;
    let n_slots = app.config.n_parallel;
    let req = match api {
        Api::Chat => request::parse_chat(&map, &app.config.limits, n_slots)?,
        Api::Completion => request::parse_completion(&map, &app.config.limits, n_slots)?,
    };
    let CompletionRequest {
        input,
        params,
        stream,
        include_usage,
    } = req;

    // Tokenizing a long prompt takes a while: off the async workers.
    let app2 = Arc::clone(&app);
    let (prompt, kind) = tokio::task::spawn_blocking(move || prompt_tokens(&app2, input))
        .await
        .map_err(|e| ApiError::internal(format!("tokenizing failed: {e}")))??;
    let field = if api == Api::Chat {
        "messages"
    } else {
        "prompt"
    };
    let max_prompt = app.config.limits.max_prompt_tokens;
    if prompt.len() > max_prompt {
        return Err(ApiError::invalid_field(
            field,
            format!(
                "the prompt has {} tokens, more than the server's limit of {max_prompt} (--max-prompt-tokens)",
                prompt.len()
            ),
        ));
    }
    if prompt.is_empty() {
        return Err(ApiError::invalid_field(
            field,
            "the prompt encodes to no tokens",
        ));
    }
    log.tokens_in.store(prompt.len(), Relaxed);

    let (tx, mut rx) = mpsc::unbounded_channel();
    let n = params.n;
    let logprobs = params.logprobs.is_some();
    app.engine.submit(Job {
        prompt,
        params,
        kind,
        events: tx,
        deadline: app.config.timeout.map(|t| received + t),
    })?;
    let serial = app.next_id.fetch_add(1, Relaxed);
    let id = match api {
        Api::Chat => format!("chatcmpl-{serial:x}{:x}", received.elapsed().subsec_nanos()),
        Api::Completion => format!("cmpl-{serial:x}{:x}", received.elapsed().subsec_nanos()),
    };
    let mut responder = Responder::new(
        api,
        id,
        app.model_id.clone(),
        model,
        n,
        include_usage,
        logprobs,
    );

    if stream {
        // Wait for the first event, so that an error before any output (queue timeout,
        // engine failure) is still an HTTP error status.
        let first = rx
            .recv()
            .await
            .ok_or_else(|| ApiError::internal("the engine dropped the request"))?;
        if let Event::Error(e) = first {
            return Err(e);
        }
        let mut opening = responder.stream_start();
        let (chunk, ended) = responder.stream_event(&first);
        opening.push_str(&chunk);
        if let Event::Done(usage) = &first {
            log.tokens_out.store(usage.completion_tokens, Relaxed);
        }
        log.defer();
        let events = EventStream {
            rx,
            responder,
            opening: Some(Bytes::from(opening)),
            ended,
            log,
        };
        return Ok((
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            Body::from_stream(events),
        )
            .into_response());
    }

    loop {
        match rx.recv().await {
            Some(Event::Done(usage)) => {
                log.tokens_out.store(usage.completion_tokens, Relaxed);
                return Ok(json_response(responder.complete(&usage)));
            }
            Some(Event::Error(e)) => return Err(e),
            Some(event) => responder.absorb(&event),
            None => return Err(ApiError::internal("the engine dropped the request")),
        }
    }
}

/// The prompt's token ids and what kind of text it is.
fn prompt_tokens(app: &App, input: Input) -> Result<(Vec<u32>, PromptKind), ApiError> {
    let loaded = loaded(app)?;
    let tok = loaded.model.tokenizer();
    match input {
        Input::Chat(messages) => {
            let (Some(tok), Some(template)) = (tok, loaded.template.as_ref()) else {
                return Err(ApiError::invalid_field(
                    "messages",
                    "this model has no Gemma chat vocabulary (<start_of_turn>); use /v1/completions",
                ));
            };
            let prompt = template
                .render(tok, &messages)
                .map_err(|e| ApiError::invalid_field("messages", e.to_string()))?;
            Ok((prompt, PromptKind::Chat))
        }
        Input::Text(text) => {
            let Some(tok) = tok else {
                return Err(ApiError::invalid_field(
                    "prompt",
                    "this model file has no tokenizer: give the prompt as token ids",
                ));
            };
            let prompt = tok
                .encode(&text, tok.add_bos_by_default(), true)
                .map_err(|e| ApiError::invalid_field("prompt", e.to_string()))?;
            Ok((prompt, PromptKind::Completion))
        }
        Input::Tokens(ids) => {
            check_vocab("prompt", &ids, loaded.model.n_vocab())?;
            Ok((ids, PromptKind::Completion))
        }
    }
}

/// The body of a streamed answer: the engine's events as server-sent events. Dropped when
/// the stream ends or the client goes away; dropping the receiver tells the engine.
struct EventStream {
    rx: mpsc::UnboundedReceiver<Event>,
    responder: Responder,
    opening: Option<Bytes>,
    ended: bool,
    log: Arc<RequestLog>,
}

impl futures_core::Stream for EventStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(first) = this.opening.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        let mut out = String::new();
        // Everything already waiting goes out in one write.
        while !this.ended && out.len() < 1 << 16 {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(event)) => {
                    if let Event::Done(Usage {
                        completion_tokens, ..
                    }) = &event
                    {
                        this.log.tokens_out.store(*completion_tokens, Relaxed);
                    }
                    let (text, ended) = this.responder.stream_event(&event);
                    out.push_str(&text);
                    this.ended = ended;
                }
                Poll::Ready(None) => {
                    let e = ApiError::internal("the engine dropped the request");
                    out.push_str(&format!("data: {}\n\n", e.body()));
                    this.ended = true;
                }
                Poll::Pending => break,
            }
        }
        if !out.is_empty() {
            Poll::Ready(Some(Ok(Bytes::from(out))))
        } else if this.ended {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.log.write(StatusCode::OK.as_u16());
    }
}

/// A JSON body with its content type.
fn json_response(value: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}
