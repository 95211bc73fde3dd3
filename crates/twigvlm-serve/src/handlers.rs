//! The HTTP endpoints.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tower_http::cors::{AllowOrigin, CorsLayer};
use twigvlm_engine::DecoderKind;

use crate::api::{CompletionId, Delta, ModelCard, ModelList, Usage};
use crate::error::ApiError;
use crate::guard::guard;
use crate::metrics::Outcome;
use crate::request::{self, Checked};
use crate::worker::{Event, ExplainJob, Finished, GenerateJob, Job, Work};
use crate::AppState;

/// The page served at `/`: plain HTML and JavaScript, no build step.
const PAGE: &str = include_str!("page.html");

pub(super) fn router(state: Arc<AppState>) -> Router {
    let cors = (!state.access.allowed_origins.is_empty()).then(|| {
        let origins = state.access.allowed_origins.iter().filter_map(|origin| origin.parse().ok());
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
    });
    let router = Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/explain", post(explain))
        .fallback(not_found)
        // Bodies are read with the server's own limit, so that the error is an OpenAI-style one.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state);
    // CORS answers wrap the guard, so that allowed origins get their preflights answered.
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let stopping = state.stopping.load(Ordering::SeqCst);
    let status = if stopping { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let body = json!({"status": if stopping { "stopping" } else { "ok" }, "model": state.checker.model_name, "queue_depth": state.metrics.queue_depth()});
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: state.checker.model_name.clone(),
            object: "model",
            created: state.created,
            owned_by: "twigvlm",
        }],
    })
}

async fn read_body(state: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let limit = state.body_limit();
    axum::body::to_bytes(body, limit).await.map_err(|_| request::body_too_large(limit))
}

/// Counts and logs a refusal or rejection and turns it into its response.
fn refuse(state: &AppState, id: &CompletionId, error: ApiError) -> Response {
    let outcome = match error.status {
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => Outcome::Refused,
        status if status.is_client_error() => Outcome::Rejected,
        _ => Outcome::Failed,
    };
    state.metrics.count(outcome);
    tracing::info!(
        id = %id.id,
        status = error.status.as_u16(),
        outcome = %outcome.label(),
        error = %error.message,
        "request"
    );
    error.into_response()
}

/// A job for the engine, due within the server's request timeout.
fn job(state: &AppState, id: &CompletionId, work: Work, events: UnboundedSender<Event>) -> Job {
    let received = Instant::now();
    Job { id: id.id.clone(), work, events, received, deadline: received + state.request_timeout }
}

/// Runs blocking work (JSON, tokenizer, image decoding) off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| ApiError::internal(format!("request task failed: {e}")))?
}

async fn chat_completions(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let id = state.completion_id();
    let checked = match read_and_check(&state, body).await {
        Ok(checked) => checked,
        Err(error) => return refuse(&state, &id, error),
    };
    let Checked { request, stream, include_usage, stop, .. } = checked;
    let decoder = request.decoder;
    let (events, receiver) = unbounded_channel();
    if let Err(error) = state.queue.submit(job(&state, &id, Work::Generate(GenerateJob { request, stop }), events)) {
        return refuse(&state, &id, error);
    }
    if stream {
        let stream = ChunkStream::new(id, receiver, decoder, include_usage);
        Sse::new(futures_util::stream::unfold(stream, ChunkStream::next)).into_response()
    } else {
        whole_completion(id, receiver, decoder).await
    }
}

async fn read_and_check(state: &Arc<AppState>, body: Body) -> Result<Checked, ApiError> {
    let bytes = read_body(state, body).await?;
    let state = state.clone();
    blocking(move || state.checker.chat(&bytes)).await
}

/// This server's statistics of a completion (timings, pruning, speculative decoding).
fn engine_stats(finished: &Finished, decoder: DecoderKind) -> Value {
    let mut stats = serde_json::to_value(&finished.stats).unwrap_or_default();
    stats["decoder"] = json!(decoder);
    stats["seed"] = json!(finished.seed);
    if let Some(speculative) = &finished.stats.speculative {
        stats["mean_accepted"] = json!(speculative.mean_accepted());
        stats["acceptance_rate"] = json!(speculative.acceptance_rate());
    }
    stats
}

fn lost_engine() -> ApiError {
    ApiError::internal("the engine dropped the request")
}

async fn whole_completion(id: CompletionId, mut receiver: UnboundedReceiver<Event>, decoder: DecoderKind) -> Response {
    let mut text = String::new();
    while let Some(event) = receiver.recv().await {
        match event {
            Event::Text(piece) => text.push_str(&piece),
            Event::Finished(Ok(finished)) => {
                let usage = Usage::new(finished.prompt_tokens, finished.completion_tokens);
                let stats = engine_stats(&finished, decoder);
                return Json(id.completion(text, finished.finish_reason, usage, stats)).into_response();
            }
            Event::Finished(Err(error)) => return error.into_response(),
            Event::Explained(_) => break,
        }
    }
    lost_engine().into_response()
}

/// The server-sent events of a streamed completion: a first chunk with the role, one chunk per
/// piece of text, a last chunk with the finish reason (and this server's statistics), the usage
/// chunk when asked for, then `[DONE]`. Dropping it (the client went away) closes the request's
/// channel, which stops the generation at its next token.
struct ChunkStream {
    id: CompletionId,
    receiver: UnboundedReceiver<Event>,
    decoder: DecoderKind,
    include_usage: bool,
    pending: VecDeque<SseEvent>,
    finished: bool,
}

const DONE: &str = "[DONE]";

impl ChunkStream {
    fn new(id: CompletionId, receiver: UnboundedReceiver<Event>, decoder: DecoderKind, include_usage: bool) -> Self {
        let first = id.delta(Delta { role: Some("assistant"), content: Some(String::new()) }, None);
        let pending = VecDeque::from([json_event(&first)]);
        Self { id, receiver, decoder, include_usage, pending, finished: false }
    }

    async fn next(mut self) -> Option<(Result<SseEvent, Infallible>, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.finished {
                return None;
            }
            match self.receiver.recv().await {
                Some(Event::Text(piece)) => {
                    let chunk = self.id.delta(Delta { role: None, content: Some(piece) }, None);
                    self.pending.push_back(json_event(&chunk));
                }
                Some(Event::Finished(Ok(finished))) => self.finish(&finished),
                Some(Event::Finished(Err(error))) => self.fail(&error),
                Some(Event::Explained(_)) | None => self.fail(&lost_engine()),
            }
        }
    }

    fn finish(&mut self, finished: &Finished) {
        let mut last = self.id.delta(Delta::default(), Some(finished.finish_reason));
        last.twigvlm = Some(engine_stats(finished, self.decoder));
        self.pending.push_back(json_event(&last));
        if self.include_usage {
            let mut usage = self.id.chunk(Vec::new());
            usage.usage = Some(Usage::new(finished.prompt_tokens, finished.completion_tokens));
            self.pending.push_back(json_event(&usage));
        }
        self.pending.push_back(SseEvent::default().data(DONE));
        self.finished = true;
    }

    /// A failure after the response has started: an error event, then `[DONE]`.
    fn fail(&mut self, error: &ApiError) {
        self.pending.push_back(SseEvent::default().data(error.body().to_string()));
        self.pending.push_back(SseEvent::default().data(DONE));
        self.finished = true;
    }
}

fn json_event(value: &impl serde::Serialize) -> SseEvent {
    SseEvent::default().data(serde_json::to_string(value).expect("chunks serialise"))
}

async fn explain(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let id = state.completion_id();
    let checked = match read_explain(&state, body).await {
        Ok(checked) => checked,
        Err(error) => return refuse(&state, &id, error),
    };
    let (events, mut receiver) = unbounded_channel();
    if let Err(error) = state.queue.submit(job(&state, &id, Work::Explain(checked), events)) {
        return refuse(&state, &id, error);
    }
    match receiver.recv().await {
        Some(Event::Explained(Ok(png))) => ([(header::CONTENT_TYPE, "image/png")], png).into_response(),
        Some(Event::Explained(Err(error)) | Event::Finished(Err(error))) => error.into_response(),
        _ => lost_engine().into_response(),
    }
}

async fn read_explain(state: &Arc<AppState>, body: Body) -> Result<ExplainJob, ApiError> {
    let bytes = read_body(state, body).await?;
    let state = state.clone();
    blocking(move || state.checker.explain(&bytes)).await
}
