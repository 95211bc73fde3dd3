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

    pub fn set_running(&self, running: bool) {
        self.running.store(usize::from(running), Ordering::Relaxed);
    }

    pub fn queue_depth(&self) -> usize {
        self.queue_depth.load(Ordering::Relaxed)
    }

    pub fn record(&self, figures: GenerationFigures) {
        let mut totals = self.totals.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
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
        let totals = self.totals.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
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
    }
}
