//! An OpenAI-compatible HTTP server (axum on tokio) in front of one loaded engine.
//!
//! The engine runs on the thread that calls [`serve`]; the HTTP side runs on a small tokio
//! runtime and hands requests to it through a bounded queue ([`worker`]). Every request is
//! checked against the model before it is queued ([`checker`], [`request`]), so bad input costs no engine
//! time and gets an OpenAI-style 4xx ([`error`]). Who may send requests is [`guard`]'s decision;
//! connections are accepted with a header-read timeout and a connection limit ([`listener`]).
//!
//! Shutting down: at the first SIGTERM or Ctrl-C the server refuses new work (503, `/health`
//! too) and lets the running request finish; at the second it stops that request as well. The
//! socket closes once the engine is idle, after the responses in flight have been written.
//!
//! Batching: requests run one at a time. Batching several in one forward needs a batch
//! dimension in the per-layer caches with per-row lengths (pruned prefills keep different
//! visual tokens per row and SSD accepts different draft lengths per row), i.e. padded,
//! masked attention over ragged caches; the queue is where a batcher would take its rows from.

pub mod api;
mod checker;
mod error;
mod guard;
mod handlers;
mod images;
mod listener;
mod metrics;
mod request;
mod stop;
mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use twigvlm_backbone::ops::DecodeOps;
use twigvlm_engine::{BatchLimits, Engine};

pub use checker::RequestChecker;
pub use error::ApiError;
pub use guard::AccessPolicy;
pub use images::ImageLimits;
pub use listener::ConnectionLimits;
pub use request::{RequestDefaults, RequestLimits, MAX_EXPLAIN_POLICIES};

use metrics::Metrics;
use worker::{run_engine, EngineSignals, JobQueue};

/// How the server is set up.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub address: SocketAddr,
    /// The id clients send as `model` (and `/v1/models` lists).
    pub model_name: String,
    /// Requests that may wait for the engine; more are answered 429.
    pub queue_capacity: usize,
    pub images: ImageLimits,
    pub defaults: RequestDefaults,
    pub limits: RequestLimits,
    /// Longest a request may take from arrival to its last token; it is stopped then (504).
    pub request_timeout: Duration,
    pub access: AccessPolicy,
    pub connections: ConnectionLimits,
    /// How many requests run at once, and the rows of one batched forward.
    pub batch: BatchLimits,
}

/// What every handler shares.
pub(crate) struct AppState {
    checker: RequestChecker,
    created: u64,
    request_timeout: Duration,
    access: AccessPolicy,
    /// Bound to a loopback address: only loopback hosts and the server's own origin are served.
    loopback_only: bool,
    queue: JobQueue,
    metrics: Arc<Metrics>,
    stopping: Arc<AtomicBool>,
    next_id: AtomicU64,
}

impl AppState {
    fn completion_id(&self) -> api::CompletionId {
        let serial = self.next_id.fetch_add(1, Ordering::Relaxed);
        api::CompletionId {
            id: format!("chatcmpl-{}-{serial}", self.created),
            created: unix_now(),
            model: self.checker.model_name.clone(),
        }
    }

    /// Largest request body: one image at the byte limit, base64-encoded, plus text.
    fn body_limit(&self) -> usize {
        const TEXT_ALLOWANCE: usize = 1 << 20;
        self.checker.images.max_bytes.div_ceil(3) * 4 + TEXT_ALLOWANCE
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Serves `engine` until SIGTERM or Ctrl-C. Prints `listening on http://ADDR` on stdout once the
/// socket is bound (port 0 picks a free port). On the signal the server answers new and queued
/// requests 503 (and `/health` 503), lets the running ones finish (a second signal stops them too),
/// then closes its socket once the responses in flight are written, and returns. Fails when the
/// address cannot be bound.
pub fn serve<B: DecodeOps>(engine: Engine<B>, options: ServeOptions) -> std::io::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let stopping = Arc::new(AtomicBool::new(false));
    let aborting = Arc::new(AtomicBool::new(false));
    let (queue, jobs) = JobQueue::new(options.queue_capacity, metrics.clone(), stopping.clone());
    let checker = RequestChecker {
        model_name: options.model_name,
        facts: engine.facts().clone(),
        defaults: options.defaults,
        limits: options.limits,
        images: options.images,
    };
    let state = Arc::new(AppState {
        checker,
        created: unix_now(),
        request_timeout: options.request_timeout,
        access: options.access,
        loopback_only: options.address.ip().is_loopback(),
        queue,
        metrics: metrics.clone(),
        stopping: stopping.clone(),
        next_id: AtomicU64::new(0),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind(options.address))?;
    println!("listening on http://{}", listener.local_addr()?);
    runtime.spawn(shutdown_signals(stopping.clone(), aborting.clone()));
    let (close, closed) = tokio::sync::oneshot::channel::<()>();
    let app = handlers::router(state);
    let server = runtime.spawn(listener::serve_connections(listener, app, options.connections, async {
        let _ = closed.await;
    }));
    let signals = EngineSignals { metrics: &metrics, stopping: &stopping, aborting: &aborting };
    run_engine(&engine, jobs, &signals, options.batch);
    let _ = close.send(());
    runtime.block_on(server).map_err(std::io::Error::other)?;
    tracing::info!("server stopped");
    Ok(())
}

#[cfg(unix)]
async fn terminate_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}");
            std::future::pending::<()>().await
        }
    }
}

#[cfg(not(unix))]
async fn terminate_signal() {
    std::future::pending::<()>().await
}

async fn shutdown_signal() {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate_signal() => {}
    }
}

/// The first signal sets `stopping`, the second `aborting`.
async fn shutdown_signals(stopping: Arc<AtomicBool>, aborting: Arc<AtomicBool>) {
    shutdown_signal().await;
    tracing::info!("shutting down: finishing the running request, refusing the rest (signal again to stop it)");
    stopping.store(true, Ordering::SeqCst);
    shutdown_signal().await;
    tracing::info!("stopping the running request");
    aborting.store(true, Ordering::SeqCst);
}
