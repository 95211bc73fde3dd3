//! The engine's batch and the bounded queue in front of it. The model is loaded once; queued
//! requests join the running batch between its steps ([`twigvlm_engine::batch`]), each on its
//! own thread with its state (prompt, image, sampling), and take their events back over their
//! own channels. Long work asks, between prefill layers and before each
//! token, whether to go on: a request whose client has gone (its channel closed) stops, as does
//! one past its deadline (504) and every request once the server is told to stop a second time.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use image::DynamicImage;
use tokio::sync::mpsc::UnboundedSender;
use twigvlm_backbone::ops::DecodeOps;
use twigvlm_backbone::{Interrupt, StackRunner};
use twigvlm_engine::explain::explain;
use twigvlm_engine::{
    run_batched, BatchLimits, Engine, EngineError, GenerateRequest, GenerateStats, JobSource, Next, PruningSpec,
    StopReason,
};
use twigvlm_eval::explain::draw;

use crate::error::ApiError;
use crate::metrics::{GenerationFigures, Metrics, Outcome};
use crate::stop::StopMatcher;

/// How often the idle engine looks whether the server is stopping.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// The answer to an engine error: 400 for a request the model cannot run, else 500.
fn engine_failure(error: &EngineError, what: &str) -> ApiError {
    if error.is_bad_request() {
        ApiError::invalid_request(error.to_string(), None)
    } else {
        tracing::error!("{what} failed: {error}");
        ApiError::internal(format!("{what} failed: {error}"))
    }
}

/// A finished generation.
#[derive(Debug)]
pub struct Finished {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// OpenAI's `finish_reason`: `stop` (end of sequence or a stop string) or `length`.
    pub finish_reason: &'static str,
    pub stats: GenerateStats,
    /// The sampler's seed (drawn by the server when the request gave none).
    pub seed: u64,
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

/// A chat completion: the engine's request and the strings that end its answer.
pub struct GenerateJob {
    pub request: GenerateRequest,
    pub stop: Vec<String>,
}

/// What the engine is asked to do.
pub enum Work {
    Generate(GenerateJob),
    Explain(ExplainJob),
}

pub struct Job {
    /// The completion id, for the request log.
    pub id: String,
    pub work: Work,
    pub events: UnboundedSender<Event>,
    /// When the request arrived.
    pub received: Instant,
    /// When the request must be answered by; work still running then is stopped (504).
    pub deadline: Instant,
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
    /// A queue holding at most `capacity` waiting requests (the running ones not counted), and
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

/// What the engine thread watches besides its queue.
pub struct EngineSignals<'a> {
    pub metrics: &'a Metrics,
    /// Set at the first shutdown signal: queued requests are refused, the running ones finish.
    pub stopping: &'a AtomicBool,
    /// Set at the second: the running request stops too.
    pub aborting: &'a AtomicBool,
}

/// Why a request's work stopped before it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    ClientGone,
    Deadline,
    Aborted,
}

impl Stopped {
    fn of(job: &Job, aborting: &AtomicBool) -> Option<Self> {
        if job.events.is_closed() {
            Some(Stopped::ClientGone)
        } else if aborting.load(Ordering::SeqCst) {
            Some(Stopped::Aborted)
        } else if Instant::now() >= job.deadline {
            Some(Stopped::Deadline)
        } else {
            None
        }
    }

    /// The answer to the client, if it is still there.
    fn error(self, job: &Job) -> Option<ApiError> {
        match self {
            Stopped::ClientGone => None,
            Stopped::Aborted => Some(ApiError::shutting_down()),
            Stopped::Deadline => Some(ApiError::timed_out(job.deadline.duration_since(job.received))),
        }
    }
}

/// How one job ended, for the metrics and the request log.
struct Ended {
    outcome: Outcome,
    status: StatusCode,
    prompt_tokens: usize,
    new_tokens: usize,
}

impl Ended {
    fn failed(error: &ApiError) -> Self {
        let outcome = match error.status {
            StatusCode::SERVICE_UNAVAILABLE => Outcome::Refused,
            StatusCode::GATEWAY_TIMEOUT => Outcome::TimedOut,
            _ => Outcome::Failed,
        };
        Self { outcome, status: error.status, prompt_tokens: 0, new_tokens: 0 }
    }

    fn stopped(stopped: Stopped, job: &Job) -> Self {
        match stopped.error(job) {
            Some(error) => Self::failed(&error),
            None => Self { outcome: Outcome::Cancelled, status: StatusCode::OK, prompt_tokens: 0, new_tokens: 0 },
        }
    }
}

/// Runs queued jobs on the calling thread's batch ([`run_batched`]): up to
/// `limits.max_requests` at once, their forwards side by side. Once `stopping` is set, jobs still
/// waiting are answered "shutting down" instead of run, and the loop returns when the queue is
/// empty (or every sender is gone) and the running jobs have ended.
pub fn run_engine<B: DecodeOps>(engine: &Engine<B>, jobs: Receiver<Job>, signals: &EngineSignals, limits: BatchLimits) {
    let metrics = signals.metrics;
    let mut queued = QueuedJobs { jobs, signals };
    run_batched(
        limits,
        &mut queued,
        |job: Job, runner: &dyn StackRunner<'_, B>| {
            let ended = match &job.work {
                Work::Generate(generate) => run_generate(engine, &job, generate, signals, runner),
                Work::Explain(explanation) => run_explain(engine, &job, explanation, signals.aborting),
            };
            metrics.finished_running();
            log_end(&job, &ended, metrics);
        },
        |forward| metrics.batch_forward(forward.rows, forward.requests),
    );
}

/// Counts and logs how a job ended.
fn log_end(job: &Job, ended: &Ended, metrics: &Metrics) {
    metrics.count(ended.outcome);
    tracing::info!(
        id = %job.id,
        status = ended.status.as_u16(),
        prompt_tokens = ended.prompt_tokens,
        new_tokens = ended.new_tokens,
        ms = job.received.elapsed().as_millis() as u64,
        outcome = %ended.outcome.label(),
        "request"
    );
}

/// The queue as the batch's source of jobs: jobs that should no longer run are answered here.
struct QueuedJobs<'a> {
    jobs: Receiver<Job>,
    signals: &'a EngineSignals<'a>,
}

impl JobSource<Job> for QueuedJobs<'_> {
    fn next_job(&mut self, idle: bool) -> Next<Job> {
        let signals = self.signals;
        loop {
            let job = if idle {
                match self.jobs.recv_timeout(IDLE_POLL) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) if signals.stopping.load(Ordering::SeqCst) => return Next::Closed,
                    Err(RecvTimeoutError::Timeout) => return Next::Wait,
                    Err(RecvTimeoutError::Disconnected) => return Next::Closed,
                }
            } else {
                match self.jobs.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty) => return Next::Wait,
                    Err(TryRecvError::Disconnected) => return Next::Closed,
                }
            };
            signals.metrics.dequeued();
            let ended = if signals.stopping.load(Ordering::SeqCst) {
                let refused = ApiError::shutting_down();
                let ended = Ended::failed(&refused);
                let _ = job.events.send(Event::Finished(Err(refused)));
                ended
            } else if let Some(stopped) = Stopped::of(&job, signals.aborting) {
                let ended = Ended::stopped(stopped, &job);
                if let Some(error) = stopped.error(&job) {
                    let _ = job.events.send(Event::Finished(Err(error)));
                }
                ended
            } else {
                signals.metrics.started_running(job.received.elapsed());
                return Next::Job(job);
            };
            log_end(&job, &ended, signals.metrics);
        }
    }
}

fn run_generate<'m, B: DecodeOps>(
    engine: &'m Engine<B>,
    job: &Job,
    generate: &GenerateJob,
    signals: &EngineSignals,
    runner: &dyn StackRunner<'m, B>,
) -> Ended {
    let stop_requested = || Stopped::of(job, signals.aborting).is_some();
    let mut matcher = StopMatcher::new(generate.stop.clone());
    let mut client_gone = false;
    let interrupt = Interrupt::new(&stop_requested);
    let result = engine.generate_with(&generate.request, &interrupt, runner, |piece| {
        let released = matcher.push(piece);
        if !released.is_empty() && job.events.send(Event::Text(released)).is_err() {
            client_gone = true;
            return ControlFlow::Break(());
        }
        if matcher.stopped() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    let result = match result {
        Ok(_) if client_gone => return Ended::stopped(Stopped::ClientGone, job),
        Ok(result) => result,
        Err(EngineError::Interrupted(_)) => {
            let stopped = Stopped::of(job, signals.aborting).unwrap_or(Stopped::ClientGone);
            if let Some(error) = stopped.error(job) {
                let _ = job.events.send(Event::Finished(Err(error)));
            }
            return Ended::stopped(stopped, job);
        }
        Err(error) => {
            let error = engine_failure(&error, "generation");
            let ended = Ended::failed(&error);
            let _ = job.events.send(Event::Finished(Err(error)));
            return ended;
        }
    };
    let rest = matcher.finish();
    if !rest.is_empty() {
        let _ = job.events.send(Event::Text(rest));
    }
    let stats = result.stats;
    signals.metrics.record(GenerationFigures {
        new_tokens: stats.new_tokens,
        prefill_s: stats.prefill_ms / 1e3,
        decode_s: stats.decode_ms / 1e3,
        speculative: stats.speculative.as_ref().map(|s| (s.rounds, s.accepted)),
    });
    let finish_reason = match stats.stop_reason {
        _ if matcher.stopped() => "stop",
        StopReason::Eos | StopReason::Cancelled => "stop",
        StopReason::MaxNewTokens | StopReason::ContextFull => "length",
    };
    let ended = Ended {
        outcome: Outcome::Completed,
        status: StatusCode::OK,
        prompt_tokens: result.prompt.len(),
        new_tokens: result.generated_ids.len(),
    };
    let finished = Finished {
        prompt_tokens: result.prompt.len(),
        completion_tokens: result.generated_ids.len(),
        finish_reason,
        stats,
        seed: generate.request.seed,
    };
    let _ = job.events.send(Event::Finished(Ok(finished)));
    ended
}

fn run_explain<B: DecodeOps>(engine: &Engine<B>, job: &Job, explanation: &ExplainJob, aborting: &AtomicBool) -> Ended {
    let stop_requested = || Stopped::of(job, aborting).is_some();
    let png = match explain(
        engine,
        &explanation.prompt,
        &explanation.image,
        &explanation.policies,
        &Interrupt::new(&stop_requested),
    ) {
        Ok(drawn) => encode_png(&draw(&drawn)),
        Err(EngineError::Interrupted(_)) => {
            let stopped = Stopped::of(job, aborting).unwrap_or(Stopped::ClientGone);
            if let Some(error) = stopped.error(job) {
                let _ = job.events.send(Event::Explained(Err(error)));
            }
            return Ended::stopped(stopped, job);
        }
        Err(error) => Err(engine_failure(&error, "explanation")),
    };
    let ended = match &png {
        Ok(_) => Ended { outcome: Outcome::Completed, status: StatusCode::OK, prompt_tokens: 0, new_tokens: 0 },
        Err(error) => Ended::failed(error),
    };
    let _ = job.events.send(Event::Explained(png));
    ended
}

fn encode_png(image: &image::RgbImage) -> Result<Vec<u8>, ApiError> {
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| ApiError::internal(format!("cannot encode the explanation: {e}")))?;
    Ok(png)
}
