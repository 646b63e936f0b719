//! The HTTP surface: routes, the API key check, the per-request log line and status
//! counters.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use super::config::ServerConfig;
use super::engine::{EngineHandle, Shared};
use super::error::ApiError;
use super::handlers;

/// What every handler reaches.
pub struct App {
    pub config: ServerConfig,
    pub model_id: String,
    pub shared: Arc<Shared>,
    pub engine: EngineHandle,
    /// For response ids.
    pub next_id: AtomicU64,
}

/// One request's log line: filled by its handler, written when the response is complete
/// (for a stream, when the stream ends or the client leaves).
pub struct RequestLog {
    method: String,
    path: String,
    start: Instant,
    pub tokens_in: AtomicUsize,
    pub tokens_out: AtomicUsize,
    /// A streamed body writes the line itself when it ends.
    deferred: AtomicBool,
    written: Mutex<bool>,
}

impl RequestLog {
    /// The line will be written by the body stream (call [`RequestLog::write`] there).
    pub fn defer(&self) {
        self.deferred.store(true, Relaxed);
    }

    /// `rg-server: POST /v1/chat/completions 200 in=25 out=64 0.412s`, once.
    pub fn write(&self, status: u16) {
        self.write_status(&status.to_string());
    }

    fn write_status(&self, status: &str) {
        let Ok(mut written) = self.written.lock() else {
            return;
        };
        if *written {
            return;
        }
        *written = true;
        eprintln!(
            "rg-server: {} {} {status} in={} out={} {:.3}s",
            self.method,
            self.path,
            self.tokens_in.load(Relaxed),
            self.tokens_out.load(Relaxed),
            self.start.elapsed().as_secs_f64()
        );
    }
}

impl Drop for RequestLog {
    /// A request whose client left before the answer was ready (its handler was dropped)
    /// still gets its line, with nginx's status for it.
    fn drop(&mut self) {
        self.write_status("499");
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(handlers::index))
        .route("/health", get(handlers::health))
        .route("/metrics", get(handlers::metrics))
        .route("/v1/models", get(handlers::models))
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/completions", post(handlers::completions))
        .route("/tokenize", post(handlers::tokenize))
        .route("/detokenize", post(handlers::detokenize))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(Arc::clone(&app), frame))
        .with_state(app)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(request.uri().path())
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// Around every request: the API key, the status counter, the log line.
async fn frame(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let log = Arc::new(RequestLog {
        method: request.method().to_string(),
        path: request.uri().path().to_string(),
        start: Instant::now(),
        tokens_in: AtomicUsize::new(0),
        tokens_out: AtomicUsize::new(0),
        deferred: AtomicBool::new(false),
        written: Mutex::new(false),
    });
    request.extensions_mut().insert(Arc::clone(&log));
    let response = if needs_key(&app.config, request.uri().path())
        && !has_key(&app.config, request.headers())
    {
        ApiError::unauthorized().into_response()
    } else {
        next.run(request).await
    };
    let status = response.status().as_u16();
    app.shared.metrics.count_request(status);
    if !log.deferred.load(Relaxed) {
        log.write(status);
    }
    response
}

/// Everything but `/health` and the chat page needs the key when there is one; `/metrics`
/// too unless `--metrics-no-auth`.
fn needs_key(config: &ServerConfig, path: &str) -> bool {
    config.api_key.is_some()
        && path != "/health"
        && path != "/"
        && !(path == "/metrics" && config.metrics_no_auth)
}

fn has_key(config: &ServerConfig, headers: &HeaderMap) -> bool {
    let Some(key) = &config.api_key else {
        return true;
    };
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    constant_time_eq(given.trim().as_bytes(), key.as_bytes())
}

/// Compares without an early exit, so the time taken does not tell how much of a guessed
/// key was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).unwrap_or(&0) ^ b.get(i).unwrap_or(&0);
    }
    diff == 0
}
