//! Server counters, written in Prometheus' text format at `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// How a request ended, one counter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    /// Answered with a 4xx.
    Rejected,
    /// Refused because the queue was full or the server was stopping.
    Refused,
    /// The client went away before the answer was complete.
    Cancelled,
    /// Stopped at the server's request timeout (504).
    TimedOut,
    Failed,
}

const OUTCOMES: [(Outcome, &str); 6] = [
    (Outcome::Completed, "completed"),
    (Outcome::Rejected, "rejected"),
    (Outcome::Refused, "refused"),
    (Outcome::Cancelled, "cancelled"),
    (Outcome::TimedOut, "timed_out"),
    (Outcome::Failed, "failed"),
];

impl Outcome {
    /// The name in `/metrics` and the request log.
    pub fn label(self) -> &'static str {
        OUTCOMES.iter().find(|(o, _)| *o == self).map(|(_, label)| *label).expect("every outcome is listed")
    }
}

#[derive(Debug, Default)]
struct Totals {
    generated_tokens: u64,
    decode_seconds: f64,
    prefill_seconds: f64,
    /// Speculative rounds and the drafted tokens the base accepted in them.
    speculative_rounds: u64,
    accepted_drafts: u64,
    /// Requests that left the queue to run, and their time in it.
    started: u64,
    queue_seconds: f64,
    /// Batched forwards of the language model's layers, and their rows and requests.
    batch_forwards: u64,
    batch_rows: u64,
    batch_requests: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    outcomes: [AtomicU64; OUTCOMES.len()],
    queue_depth: AtomicUsize,
    running: AtomicUsize,
    totals: Mutex<Totals>,
}

/// What one finished generation adds.
#[derive(Debug, Clone, Copy, Default)]
pub struct GenerationFigures {
    pub new_tokens: usize,
    pub prefill_s: f64,
    pub decode_s: f64,
    /// (rounds, accepted drafted tokens) for the speculative decoder.
    pub speculative: Option<(usize, usize)>,
}

impl Metrics {
    pub fn count(&self, outcome: Outcome) {
        let index = OUTCOMES.iter().position(|(o, _)| *o == outcome).expect("every outcome is listed");
        self.outcomes[index].fetch_add(1, Ordering::Relaxed);
    }

    pub fn queued(&self) {
        self.queue_depth.fetch_add(1, Ordering::Relaxed);
    }

    /// A queued request leaves the queue (to run, or cancelled before it ran).
    pub fn dequeued(&self) {
        self.queue_depth.fetch_sub(1, Ordering::Relaxed);
    }

    /// A request leaves the queue for the batch after `waited` in the queue.
    pub fn started_running(&self, waited: std::time::Duration) {
        self.running.fetch_add(1, Ordering::Relaxed);
        let mut totals = self.totals();
        totals.started += 1;
        totals.queue_seconds += waited.as_secs_f64();
    }

    /// A running request has ended.
    pub fn finished_running(&self) {
        self.running.fetch_sub(1, Ordering::Relaxed);
    }

    /// The batch ran one forward of `rows` rows of `requests` requests.
    pub fn batch_forward(&self, rows: usize, requests: usize) {
        let mut totals = self.totals();
        totals.batch_forwards += 1;
        totals.batch_rows += rows as u64;
        totals.batch_requests += requests as u64;
    }

    fn totals(&self) -> std::sync::MutexGuard<'_, Totals> {
        self.totals.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn queue_depth(&self) -> usize {
        self.queue_depth.load(Ordering::Relaxed)
    }

    pub fn record(&self, figures: GenerationFigures) {
        let mut totals = self.totals();
        totals.generated_tokens += figures.new_tokens as u64;
        totals.prefill_seconds += figures.prefill_s;
        totals.decode_seconds += figures.decode_s;
        if let Some((rounds, accepted)) = figures.speculative {
            totals.speculative_rounds += rounds as u64;
            totals.accepted_drafts += accepted as u64;
        }
    }

    /// The Prometheus exposition text.
    pub fn render(&self) -> String {
        let totals = self.totals();
        let mut text = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(text, "# HELP twigvlm_{name} {help}\n# TYPE twigvlm_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(text, "twigvlm_{name}{labels} {value}");
            }
        };
        let requests: Vec<(String, f64)> = OUTCOMES
            .iter()
            .zip(&self.outcomes)
            .map(|((_, label), n)| (format!("{{outcome=\"{label}\"}}"), n.load(Ordering::Relaxed) as f64))
            .collect();
        metric("requests_total", "counter", "Chat completion requests by outcome.", &requests);
        let plain = |value: f64| vec![(String::new(), value)];
        metric("generated_tokens_total", "counter", "Tokens generated.", &plain(totals.generated_tokens as f64));
        metric(
            "prefill_seconds_total",
            "counter",
            "Time spent encoding images and prefilling prompts.",
            &plain(totals.prefill_seconds),
        );
        metric("decode_seconds_total", "counter", "Time spent decoding.", &plain(totals.decode_seconds));
        let tokens_per_s =
            if totals.decode_seconds > 0.0 { totals.generated_tokens as f64 / totals.decode_seconds } else { 0.0 };
        metric(
            "decode_tokens_per_second",
            "gauge",
            "Generated tokens per second of decoding, over the server's life.",
            &plain(tokens_per_s),
        );
        let accepted = if totals.speculative_rounds > 0 {
            totals.accepted_drafts as f64 / totals.speculative_rounds as f64
        } else {
            0.0
        };
        metric(
            "mean_accepted_draft_tokens",
            "gauge",
            "Drafted tokens accepted per speculative round (each round also yields one base token).",
            &plain(accepted),
        );
        metric("queue_depth", "gauge", "Requests waiting for the engine.", &plain(self.queue_depth() as f64));
        metric(
            "running_requests",
            "gauge",
            "Requests the engine is generating.",
            &plain(self.running.load(Ordering::Relaxed) as f64),
        );
        // A summary without quantiles: its sum and count lines follow the name.
        metric(
            "queue_wait_seconds",
            "summary",
            "Time requests waited in the queue before they ran.",
            &[("_sum".into(), totals.queue_seconds), ("_count".into(), totals.started as f64)],
        );
        metric(
            "batch_forwards_total",
            "counter",
            "Forwards of the language model's layers the batch ran (each holds rows of one or more requests).",
            &plain(totals.batch_forwards as f64),
        );
        let per_forward = |total: u64| {
            if totals.batch_forwards > 0 {
                total as f64 / totals.batch_forwards as f64
            } else {
                0.0
            }
        };
        metric(
            "batch_rows_per_forward",
            "gauge",
            "Mean rows (tokens) per batched forward, over the server's life.",
            &plain(per_forward(totals.batch_rows)),
        );
        metric(
            "batch_requests_per_forward",
            "gauge",
            "Mean requests per batched forward, over the server's life.",
            &plain(per_forward(totals.batch_requests)),
        );
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let metrics = Metrics::default();
        metrics.count(Outcome::Completed);
        metrics.count(Outcome::Completed);
        metrics.count(Outcome::Refused);
        metrics.record(GenerationFigures { new_tokens: 10, prefill_s: 0.5, decode_s: 2.0, speculative: Some((4, 10)) });
        let text = metrics.render();
        assert!(text.contains("twigvlm_requests_total{outcome=\"completed\"} 2"), "{text}");
        assert!(text.contains("twigvlm_requests_total{outcome=\"refused\"} 1"));
        assert!(text.contains("twigvlm_decode_tokens_per_second 5"));
        assert!(text.contains("twigvlm_mean_accepted_draft_tokens 2.5"));
        assert!(text.contains("# TYPE twigvlm_queue_depth gauge"));
        metrics.started_running(std::time::Duration::from_millis(500));
        metrics.batch_forward(3, 3);
        metrics.batch_forward(1, 1);
        let text = metrics.render();
        assert!(text.contains("twigvlm_queue_wait_seconds_sum 0.5\ntwigvlm_queue_wait_seconds_count 1"), "{text}");
        assert!(text.contains("twigvlm_running_requests 1"), "{text}");
        assert!(text.contains("twigvlm_batch_rows_per_forward 2\n"), "{text}");
        assert!(text.contains("twigvlm_batch_requests_per_forward 2\n"), "{text}");
    }
}
