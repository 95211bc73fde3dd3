//! The engine's own thread and the bounded queue in front of it. The model is loaded once and
//! used by this thread only; each request brings its state (prompt, image, sampling) and takes
//! its events back over its own channel. A request whose client has gone (its channel closed)
//! is skipped if still queued and stopped at the next token if running.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use image::DynamicImage;
use tokio::sync::mpsc::UnboundedSender;
use twigvlm_engine::explain::explain;
use twigvlm_engine::{Engine, EngineError, GenerateRequest, GenerateStats, PruningSpec, StopReason};
use twigvlm_eval::explain::draw;

use crate::error::ApiError;
use crate::metrics::{GenerationFigures, Metrics, Outcome};
use twigvlm_backbone::ops::DecodeOps;

/// The answer to an engine error: 400 for a request the model cannot run, else 500.
fn engine_failure(error: &EngineError, what: &str) -> ApiError {
    if error.is_bad_request() {
        ApiError::invalid_request(error.to_string(), None)
    } else {
        tracing::error!("{what} failed: {error}");
        ApiError::internal(format!("{what} failed: {error}"))
    }
}

fn explain_png<B: DecodeOps>(engine: &Engine<B>, job: &ExplainJob) -> Result<Vec<u8>, ApiError> {
    let explanation =
        explain(engine, &job.prompt, &job.image, &job.policies).map_err(|e| engine_failure(&e, "explanation"))?;
    let mut png = Vec::new();
    DynamicImage::ImageRgb8(draw(&explanation))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| ApiError::internal(format!("cannot encode the explanation: {e}")))?;
    Ok(png)
}

/// A finished generation.
#[derive(Debug)]
pub struct Finished {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub stop: StopReason,
    pub stats: GenerateStats,
}

/// What the engine thread reports about one request.
#[derive(Debug)]
pub enum Event {
    /// Decoded text, as tokens arrive.
    Text(String),
    Finished(Result<Finished, ApiError>),
    /// The PNG of an explain job.
    Explained(Result<Vec<u8>, ApiError>),
}

/// An explain request: the policies' selections drawn over the image.
pub struct ExplainJob {
    pub prompt: String,
    pub image: DynamicImage,
    pub policies: Vec<(String, PruningSpec)>,
}

/// What the engine is asked to do.
pub enum Work {
    Generate(GenerateRequest),
    Explain(ExplainJob),
}

pub struct Job {
    pub work: Work,
    pub events: UnboundedSender<Event>,
}

/// The sending side of the queue, shared by the HTTP handlers.
#[derive(Clone)]
pub struct JobQueue {
    sender: SyncSender<Job>,
    capacity: usize,
    metrics: Arc<Metrics>,
    stopping: Arc<AtomicBool>,
}

impl JobQueue {
    /// A queue holding at most `capacity` waiting requests (the running one not counted), and
    /// its receiving end for [`run_engine`].
    pub fn new(capacity: usize, metrics: Arc<Metrics>, stopping: Arc<AtomicBool>) -> (Self, Receiver<Job>) {
        let (sender, receiver) = std::sync::mpsc::sync_channel(capacity);
        (Self { sender, capacity, metrics, stopping }, receiver)
    }

    /// Queues a job, or says why not (full: 429; stopping: 503).
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(ApiError::shutting_down());
        }
        // Counted before sending, so that the engine thread never sees a job not yet counted.
        self.metrics.queued();
        self.sender.try_send(job).map_err(|e| {
            self.metrics.dequeued();
            match e {
                TrySendError::Full(_) => ApiError::queue_full(self.capacity),
                TrySendError::Disconnected(_) => ApiError::shutting_down(),
            }
        })
    }
}

/// Runs queued jobs one after another on the calling thread until every sender is gone. Once
/// `stopping` is set, jobs still waiting are answered "shutting down" instead of run; the one
/// running when it was set finishes.
pub fn run_engine<B: DecodeOps>(engine: &Engine<B>, jobs: Receiver<Job>, metrics: &Metrics, stopping: &AtomicBool) {
    for Job { work, events } in jobs {
        metrics.dequeued();
        if events.is_closed() {
            metrics.count(Outcome::Cancelled);
            continue;
        }
        if stopping.load(Ordering::SeqCst) {
            metrics.count(Outcome::Refused);
            let _ = events.send(Event::Finished(Err(ApiError::shutting_down())));
            continue;
        }
        metrics.set_running(true);
        let request = match work {
            Work::Generate(request) => request,
            Work::Explain(job) => {
                let png = explain_png(engine, &job);
                metrics.set_running(false);
                metrics.count(if png.is_ok() { Outcome::Completed } else { Outcome::Failed });
                let _ = events.send(Event::Explained(png));
                continue;
            }
        };
        let result = engine.generate(&request, |piece| match events.send(Event::Text(piece.to_string())) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        });
        metrics.set_running(false);
        let finished = match result {
            Ok(result) if result.stats.stop_reason == StopReason::Cancelled => {
                metrics.count(Outcome::Cancelled);
                continue;
            }
            Ok(result) => {
                let stats = result.stats;
                metrics.count(Outcome::Completed);
                metrics.record(GenerationFigures {
                    new_tokens: stats.new_tokens,
                    prefill_s: stats.prefill_ms / 1e3,
                    decode_s: stats.decode_ms / 1e3,
                    speculative: stats.speculative.as_ref().map(|s| (s.rounds, s.accepted)),
                });
                Ok(Finished {
                    prompt_tokens: result.prompt.len(),
                    completion_tokens: result.generated_ids.len(),
                    stop: stats.stop_reason,
                    stats,
                })
            }
            Err(error) => {
                metrics.count(Outcome::Failed);
                Err(engine_failure(&error, "generation"))
            }
        };
        let _ = events.send(Event::Finished(finished));
    }
}
