//! A load generator for a running server (`twigvlm bench-serve`): N concurrent clients in a
//! closed loop (each sends its next request when its last one has ended) send a fixed number of
//! streamed chat completions; the report has throughput, latency percentiles and time to first
//! token. [`run_load_curve`] repeats that for several client counts and decoders.

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The server's base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub model: String,
    pub clients: usize,
    pub requests: usize,
    pub max_tokens: usize,
    pub prompt: String,
    /// A `data:` URL sent with every request.
    pub image_url: Option<String>,
    /// The decoder requests ask for (`base`, `twig-only`, `ssd`); `None`: the server's default.
    pub decoder: Option<String>,
}

/// One request as a client saw it.
#[derive(Debug, Clone, Copy)]
struct Sample {
    latency: Duration,
    first_token: Option<Duration>,
    completion_tokens: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
}

impl Percentiles {
    fn of(mut values: Vec<f64>) -> Self {
        if values.is_empty() {
            return Self { p50: 0.0, p90: 0.0, p99: 0.0, mean: 0.0 };
        }
        values.sort_by(f64::total_cmp);
        // Nearest rank: the smallest value with at least q of the samples at or below it.
        let at = |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Self { p50: at(0.5), p90: at(0.9), p99: at(0.99), mean: values.iter().sum::<f64>() / values.len() as f64 }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// The decoder the requests asked for (`None`: the server's default).
    pub decoder: Option<String>,
    pub clients: usize,
    pub requests: usize,
    pub succeeded: usize,
    /// Failures by HTTP status (0: no response).
    pub failed: Vec<(u16, usize)>,
    pub seconds: f64,
    pub requests_per_s: f64,
    /// Completion tokens per second over the whole run, all clients together.
    pub tokens_per_s: f64,
    pub latency_ms: Percentiles,
    pub time_to_first_token_ms: Percentiles,
}

/// Sends one streamed request and reads it to `[DONE]`.
fn one_request(agent: &ureq::Agent, options: &LoadOptions) -> Result<Sample, u16> {
    let mut content = vec![json!({"type": "text", "text": options.prompt})];
    if let Some(url) = &options.image_url {
        content.insert(0, json!({"type": "image_url", "image_url": {"url": url}}));
    }
    let mut body = json!({
        "model": options.model, "messages": [{"role": "user", "content": content}],
        "max_tokens": options.max_tokens, "stream": true, "stream_options": {"include_usage": true},
    });
    if let Some(decoder) = &options.decoder {
        body["decoder"] = json!(decoder);
    }
    let started = Instant::now();
    let response = agent
        .post(&format!("{}/v1/chat/completions", options.url))
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
        .map_err(|e| match e {
            ureq::Error::Status(status, _) => status,
            ureq::Error::Transport(_) => 0,
        })?;
    let (mut first_token, mut completion_tokens) = (None, 0);
    for line in BufReader::new(response.into_reader()).lines() {
        let line = line.map_err(|_| 0u16)?;
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            return Ok(Sample { latency: started.elapsed(), first_token, completion_tokens });
        }
        let chunk: Value = serde_json::from_str(data).map_err(|_| 0u16)?;
        if chunk.get("error").is_some() {
            return Err(500);
        }
        let has_text = chunk["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty());
        if has_text && first_token.is_none() {
            first_token = Some(started.elapsed());
        }
        if let Some(tokens) = chunk["usage"]["completion_tokens"].as_u64() {
            completion_tokens = tokens as usize;
        }
    }
    Err(0)
}

/// Runs the load and reports it.
pub fn run_load(options: &LoadOptions) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(options.clients > 0 && options.requests > 0, "the load needs at least one client and one request");
    let agent = ureq::AgentBuilder::new().build();
    agent
        .get(&format!("{}/health", options.url))
        .call()
        .with_context(|| format!("the server at {} does not answer /health", options.url))?;
    let next = AtomicUsize::new(0);
    let samples = Mutex::new(Vec::with_capacity(options.requests));
    let failures = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..options.clients {
            scope.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < options.requests {
                    match one_request(&agent, options) {
                        Ok(sample) => samples.lock().expect("no panics while held").push(sample),
                        Err(status) => failures.lock().expect("no panics while held").push(status),
                    }
                }
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let samples = samples.into_inner().expect("threads joined");
    let mut failed: Vec<(u16, usize)> = Vec::new();
    for status in failures.into_inner().expect("threads joined") {
        match failed.iter_mut().find(|(s, _)| *s == status) {
            Some((_, count)) => *count += 1,
            None => failed.push((status, 1)),
        }
    }
    let millis = |d: Duration| d.as_secs_f64() * 1e3;
    let tokens: usize = samples.iter().map(|s| s.completion_tokens).sum();
    Ok(LoadReport {
        decoder: options.decoder.clone(),
        clients: options.clients,
        requests: options.requests,
        succeeded: samples.len(),
        failed,
        seconds,
        requests_per_s: samples.len() as f64 / seconds,
        tokens_per_s: tokens as f64 / seconds,
        latency_ms: Percentiles::of(samples.iter().map(|s| millis(s.latency)).collect()),
        time_to_first_token_ms: Percentiles::of(samples.iter().filter_map(|s| s.first_token.map(millis)).collect()),
    })
}

/// [`run_load`] for every decoder and client count, `requests_per_client` requests per client,
/// after one unmeasured request per decoder (the server's first request of a kind compiles and
/// allocates what later ones reuse).
pub fn run_load_curve(
    options: &LoadOptions,
    decoders: &[Option<String>],
    clients: &[usize],
    requests_per_client: usize,
    mut progress: impl FnMut(&LoadReport),
) -> anyhow::Result<Vec<LoadReport>> {
    let mut reports = Vec::new();
    for decoder in decoders {
        let warm_up = LoadOptions { decoder: decoder.clone(), clients: 1, requests: 1, ..options.clone() };
        run_load(&warm_up)?;
        for &clients in clients {
            let run = LoadOptions { clients, requests: clients * requests_per_client, ..warm_up.clone() };
            let report = run_load(&run)?;
            progress(&report);
            reports.push(report);
        }
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::Percentiles;

    #[test]
    fn nearest_rank_percentiles() {
        let p = Percentiles::of((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p90, p.p99), (50.0, 90.0, 99.0));
        assert_eq!(p.mean, 50.5);
        assert_eq!(Percentiles::of(vec![7.0]).p99, 7.0);
    }
}
