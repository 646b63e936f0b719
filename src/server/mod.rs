//! `rg-server`: an OpenAI-compatible HTTP server with continuous batching.
//!
//! - `engine/`: one thread owns the [`crate::model::BatchContext`] and runs every request
//!   in it (continuous batching, chunked prompts, `n` forks, the prompt cache of state
//!   snapshots); requests and tokens travel over channels.
//! - `http.rs`, `handlers.rs`: axum routes, the API key, the per-request log line.
//! - `request.rs`, `response.rs`: OpenAI's request and response schemas.
//! - `metrics.rs`: the Prometheus counters of `GET /metrics`.
//! - `chat.html`: the chat page of `GET /`.
//!
//! [`run`] binds the socket first (printing `rg-server listening on http://HOST:PORT` to
//! stderr), then loads the model on the engine thread while `/health` answers 503; `/health`
//! answers 200 once the model is in. SIGINT / SIGTERM stop accepting connections, let the
//! requests in flight finish for up to `shutdown_grace`, and return.

mod config;
mod engine;
mod error;
mod handlers;
mod http;
mod metrics;
mod request;
mod response;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

pub use crate::chat::{ChatTemplate, Message, Role};
pub use config::{default_max_queue, Limits, PromptPolicy, ServerConfig, DEFAULT_BURST_INTERVAL};
pub use error::ApiError;

/// Runs the server until SIGINT / SIGTERM. Errors: the address cannot be bound, the model
/// cannot be loaded, the runtime cannot start.
pub fn run(config: ServerConfig) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // HTTP work is light (the engine thread does the decoding): two workers suffice.
        .worker_threads(2)
        .thread_name("rg-http")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let result = runtime.block_on(serve(config));
    // Streams still open after the grace period are cut here.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn serve(config: ServerConfig) -> Result<(), String> {
    let listener = TcpListener::bind((config.host.as_str(), config.port))
        .await
        .map_err(|e| format!("cannot listen on {}:{}: {e}", config.host, config.port))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;

    let shared = Arc::new(engine::Shared::new());
    let (ready_tx, ready_rx) = oneshot::channel();
    let engine = engine::spawn(&config, Arc::clone(&shared), ready_tx)
        .map_err(|e| format!("cannot start the engine thread: {e}"))?;
    let app = Arc::new(http::App {
        model_id: config.model_id(),
        config: config.clone(),
        shared,
        engine,
        next_id: AtomicU64::new(1),
    });
    let router = http::router(Arc::clone(&app));
    eprintln!("rg-server listening on http://{addr}");

    // A model that fails to load ends the server (exit status 1 from the binary).
    let (fail_tx, mut fail_rx) = watch::channel(None::<String>);
    let n_parallel = config.n_parallel;
    tokio::spawn(async move {
        match ready_rx.await {
            Ok(Ok(())) => eprintln!("rg-server: model loaded, ready (slots: {n_parallel})"),
            Ok(Err(e)) => {
                let _ = fail_tx.send(Some(e));
            }
            Err(_) => {
                let _ = fail_tx.send(Some("the engine thread stopped while loading".into()));
            }
        }
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        eprintln!("rg-server: shutting down (no new connections; finishing requests in flight)");
        let _ = stop_tx.send(true);
    });
    let graceful = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|&stop| stop).await;
        }
    };
    let grace_over = {
        let mut rx = stop_rx.clone();
        let grace = config.shutdown_grace;
        async move {
            let _ = rx.wait_for(|&stop| stop).await;
            tokio::time::sleep(grace).await;
        }
    };
    let server = axum::serve(listener, router).with_graceful_shutdown(graceful);
    tokio::select! {
        result = server => {
            result.map_err(|e| format!("server error: {e}"))?;
        }
        _ = grace_over => {
            eprintln!(
                "rg-server: requests still running after {:?}; cancelling them",
                config.shutdown_grace
            );
        }
        message = load_failure(&mut fail_rx) => return Err(message),
    }
    eprintln!("rg-server: stopped");
    Ok(())
}

/// Resolves with the error when the model failed to load; never when it loaded.
async fn load_failure(rx: &mut watch::Receiver<Option<String>>) -> String {
    match rx.wait_for(Option::is_some).await {
        Ok(message) => message.clone().unwrap_or_default(),
        // The sender is gone without an error: the model is loaded.
        Err(_) => std::future::pending().await,
    }
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
