//! `twigvlm serve` over real HTTP on loopback: completions, streaming, the extension fields,
//! concurrency, cancellation, the queue, shutdown and bad input. Each test starts the binary on a
//! free port with the tiny fixture model ([`support`]).

mod support;

use std::io::Read;
use std::path::PathBuf;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

#[test]
fn completions_equal_the_command_line_and_stream_in_openai_chunks() {
    let server = Server::start(&[]);
    let prompt = "What is shown in this image?";
    let image = twigvlm_testkit::image("shapes-80x60.png");
    let (status, completion) =
        server.post("/v1/chat/completions", &chat(prompt, Some(&image_url("shapes-80x60.png")), 20));
    assert_eq!(status, 200, "{completion}");
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], MODEL);
    assert_eq!(completion["choices"][0]["finish_reason"], "length");
    assert_eq!(completion["usage"]["completion_tokens"], 20);
    assert_eq!(completion["usage"]["prompt_tokens"], 34);
    let cli = twigvlm()
        .args(["generate", "--json", "--max-new-tokens", "20", "--prompt", prompt, "--model"])
        .arg(model_dir())
        .arg("--image")
        .arg(&image)
        .output()
        .unwrap();
    let cli: Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(text_of(&completion), cli["text"].as_str().unwrap());

    let body = with(
        chat(prompt, Some(&image_url("shapes-80x60.png")), 20),
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let events: Vec<String> = server.stream(&body).collect();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, text_of(&completion));
    let last = &chunks[chunks.len() - 2];
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert!(last["twigvlm"]["tokens_per_s"].as_f64().unwrap() > 0.0);
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["total_tokens"], 54);
}

#[test]
fn models_health_metrics_and_page() {
    let server = Server::start(&[]);
    let (status, models) = server.get("/v1/models");
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["id"], MODEL);
    let (status, health) = server.get("/health");
    assert_eq!((status, serde_json::from_str::<Value>(&health).unwrap()["status"].clone()), (200, json!("ok")));
    let (status, page) = server.get("/");
    assert_eq!(status, 200);
    assert!(page.contains("<form") && page.contains("/v1/chat/completions"));
    server.post("/v1/chat/completions", &chat("Hello", None, 4));
    // Counted once the engine has finished, just after the answer leaves.
    eventually("the request counted", || server.metric("twigvlm_requests_total{outcome=\"completed\"}") == 1.0);
    assert_eq!(server.metric("twigvlm_generated_tokens_total"), 4.0);
    assert_eq!(server.metric("twigvlm_queue_depth"), 0.0);
    let (status, _) = server.get("/v1/nothing");
    assert_eq!(status, 404);
}

#[test]
fn speculative_and_pruned_requests_through_the_extension_fields() {
    let server = Server::start(&[]);
    let image = image_url("shapes-80x60.png");
    let base = server.post("/v1/chat/completions", &chat("Describe the picture.", Some(&image), 24)).1;
    let (status, ssd) = server.post(
        "/v1/chat/completions",
        &with(chat("Describe the picture.", Some(&image), 24), json!({"decoder": "ssd"})),
    );
    assert_eq!(status, 200, "{ssd}");
    assert_eq!(text_of(&ssd), text_of(&base), "greedy SSD is lossless");
    assert_eq!(ssd["twigvlm"]["decoder"], "ssd");
    assert!(ssd["twigvlm"]["speculative"]["rounds"].as_u64().unwrap() >= 1);
    let adaptive =
        with(chat("Describe the picture.", Some(&image), 24), json!({"decoder": "ssd", "draft_length": "adaptive"}));
    assert_eq!(text_of(&server.post("/v1/chat/completions", &adaptive).1), text_of(&base));
    let tree = with(chat("Describe the picture.", Some(&image), 24), json!({"decoder": "ssd", "draft_tree": "3:3:6"}));
    assert_eq!(text_of(&server.post("/v1/chat/completions", &tree).1), text_of(&base), "tree drafting is lossless");
    let (status, pruned) = server.post(
        "/v1/chat/completions",
        &with(chat("Describe the picture.", Some(&image), 8), json!({"policy": "twig", "visual_budget": "50%"})),
    );
    assert_eq!(status, 200, "{pruned}");
    assert_eq!(pruned["twigvlm"]["policy"], "twig");
    assert!(!pruned["twigvlm"]["kept_visual_indices"].as_array().unwrap().is_empty());
    let explain = ureq::post(&server.url("/v1/explain"))
        .send_json(json!({"image_url": image, "prompt": "Where is the square?", "visual_budget": "25%"}))
        .unwrap();
    assert_eq!(explain.header("content-type"), Some("image/png"));
    let mut png = Vec::new();
    explain.into_reader().read_to_end(&mut png).unwrap();
    assert!(image::load_from_memory(&png).is_ok());
}

#[test]
fn concurrent_requests_equal_sequential_ones() {
    // Concurrent requests share the running batch: sampled and greedy, text and image, pruned,
    // speculative (chain and tree) and plain, streamed or not, long and short.
    let server = Server::start(&["--prefill-chunk", "7", "--prompt-cache-mib", "0"]);
    let image = image_url("shapes-80x60.png");
    let requests: Vec<Value> = vec![
        with(chat("Tell me story number 0.", None, 16), json!({"temperature": 0.9, "top_p": 0.95, "seed": 0})),
        with(chat("Tell me story number 1.", None, 9), json!({"temperature": 0.9, "top_p": 0.95, "seed": 1})),
        chat("What is in the image?", Some(&image), 12),
        with(chat("Where is it?", Some(&image), 14), json!({"decoder": "ssd", "policy": "twig", "visual_budget": 4})),
        with(chat("Which colour?", Some(&image), 10), json!({"decoder": "ssd", "draft_tree": "2:3:5", "stream": true})),
        with(
            chat("Describe it.", Some(&image), 11),
            json!({"policy": "fastv", "visual_budget": "25%", "stream": true}),
        ),
        with(chat("Say something.", None, 13), json!({"decoder": "twig-only"})),
        with(chat("Tell me a long story.", None, 40), json!({"stream": true, "seed": 3, "temperature": 0.7})),
    ];
    let ask = |request: &Value| match request["stream"].as_bool() {
        Some(true) => streamed_text(server.stream(request)),
        _ => text_of(&server.post("/v1/chat/completions", request).1),
    };
    let barrier = Barrier::new(requests.len());
    let concurrent: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = requests
            .iter()
            .map(|request| {
                let (ask, barrier) = (&ask, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    ask(request)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(server.metric("twigvlm_batch_requests_per_forward") > 1.0, "the concurrent requests shared forwards");
    let sequential: Vec<String> = requests.iter().map(ask).collect();
    assert_eq!(concurrent, sequential);
    assert!(sequential[..2].windows(2).any(|w| w[0] != w[1]), "different seeds sample differently");
}

/// The text of a streamed completion's chunks.
fn streamed_text(events: impl Iterator<Item = String>) -> String {
    events
        .filter(|event| event != "[DONE]")
        .filter_map(|event| {
            let chunk: Value = serde_json::from_str(&event).unwrap();
            chunk["choices"][0]["delta"]["content"].as_str().map(str::to_owned)
        })
        .collect()
}

#[test]
fn a_client_that_goes_away_cancels_its_generation() {
    let server = Server::start(&[]);
    let body = with(chat("Tell me a long story.", None, LONG_GENERATION), json!({"stream": true}));
    let mut events = server.stream(&body);
    for _ in 0..3 {
        events.next().unwrap();
    }
    drop(events);
    eventually("the cancellation", || server.metric("twigvlm_requests_total{outcome=\"cancelled\"}") == 1.0);
    assert_eq!(server.metric("twigvlm_running_requests"), 0.0);
    // A client waiting for a whole (unstreamed) answer that gives up cancels it too.
    let impatient = ureq::AgentBuilder::new().timeout(Duration::from_millis(50)).build();
    let request = chat("Tell me a long story.", None, LONG_GENERATION);
    assert!(impatient.post(&server.url("/v1/chat/completions")).send_json(request).is_err(), "the client gave up");
    eventually("the second cancellation", || server.metric("twigvlm_requests_total{outcome=\"cancelled\"}") == 2.0);
    assert_eq!(server.metric("twigvlm_requests_total{outcome=\"completed\"}"), 0.0);
    // The engine is free again.
    assert_eq!(server.post("/v1/chat/completions", &chat("Hi", None, 2)).0, 200);
}

#[test]
fn a_full_queue_answers_429() {
    let server = Server::start(&["--queue-size", "1", "--max-batch-requests", "1"]);
    let clients = 8;
    let barrier = Barrier::new(clients);
    let results: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let (server, barrier) = (&server, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    server.post("/v1/chat/completions", &chat("Tell me a long story.", None, 2000))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let refused: Vec<&Value> = results.iter().filter(|(status, _)| *status == 429).map(|(_, body)| body).collect();
    assert!(!refused.is_empty(), "at most one running and one waiting: the rest must be refused");
    assert!(refused
        .iter()
        .all(|body| body["error"]["code"] == "queue_full" && body["error"]["type"] == "rate_limit_error"));
    assert!(results.iter().all(|(status, _)| *status == 200 || *status == 429));
    // One runs and one waits, or (when all arrive before the engine takes the first) one waits.
    assert!(results.iter().any(|(status, _)| *status == 200));
}

#[test]
fn sigterm_lets_the_running_request_finish_then_exits() {
    let mut server = Server::start(&[]);
    // About a thousand tokens (a third of a second here) before end-of-sequence.
    let body = with(chat("Tell me a long story.", None, LONG_GENERATION), json!({"stream": true}));
    let mut events = server.stream(&body);
    events.next().unwrap();
    assert!(twigvlm_kill(&server.pid()));
    let rest: Vec<String> = events.collect();
    assert_eq!(rest.last().map(String::as_str), Some("[DONE]"));
    let last: Value = serde_json::from_str(&rest[rest.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop", "the running request finished: {last}");
    assert!(rest.len() > 100, "the whole answer came");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn bad_input_gets_a_4xx_with_an_openai_error_body() {
    let server = Server::start(&["--max-image-bytes", "4000", "--max-image-pixels", "4900"]);
    let image = image_url("shapes-80x60.png");
    let big = png_data_url(&[0u8; 5000]);
    let many_pixels = blank_image_url(100, 50);
    let two_images = json!({"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image}}, {"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "Compare."}]}]});
    let long_prompt = "word ".repeat(LONG_CONTEXT);
    // (name, body or raw text, expected status, expected error code)
    type Case<'a> = (&'a str, Result<Value, &'a str>, u16, Option<&'a str>);
    let cases: Vec<Case> = vec![
        ("malformed JSON", Err("{\"model\": "), 400, None),
        ("unknown model", Ok(with(chat("Hi", None, 4), json!({"model": "gpt-4o"}))), 404, Some("model_not_found")),
        ("non-image data", Ok(chat("Hi", Some(&image_url("not-an-image.png")), 4)), 400, Some("invalid_image")),
        ("corrupt image", Ok(chat("Hi", Some(&image_url("corrupt.png")), 4)), 400, Some("invalid_image")),
        ("too many bytes", Ok(chat("Hi", Some(&big), 4)), 413, Some("image_too_large")),
        ("too many pixels", Ok(chat("Hi", Some(&many_pixels), 4)), 413, Some("image_too_large")),
        ("remote image", Ok(chat("Hi", Some("https://example.com/cat.png"), 4)), 400, Some("remote_images_disabled")),
        ("two images", Ok(two_images), 400, Some("too_many_images")),
        ("prompt too long", Ok(chat(&long_prompt, None, 4)), 400, Some("context_length_exceeded")),
        ("unsupported parameter", Ok(with(chat("Hi", None, 4), json!({"logprobs": true}))), 400, None),
        ("several choices", Ok(with(chat("Hi", None, 4), json!({"n": 3}))), 400, None),
        ("negative temperature", Ok(with(chat("Hi", None, 4), json!({"temperature": -1.0}))), 400, None),
        ("unknown decoder", Ok(with(chat("Hi", None, 4), json!({"decoder": "fast"}))), 400, None),
        ("unknown draft length", Ok(with(chat("Hi", None, 4), json!({"draft_length": "long"}))), 400, None),
        ("bad draft tree", Ok(with(chat("Hi", None, 4), json!({"draft_tree": "4:0:16"}))), 400, None),
        ("pruning without a budget", Ok(with(chat("Hi", None, 4), json!({"policy": "fastv"}))), 400, None),
        ("zero max_tokens", Ok(chat("Hi", None, 0)), 400, None),
        ("no messages", Ok(json!({"model": MODEL, "messages": []})), 400, None),
        (
            "assistant last",
            Ok(json!({"model": MODEL, "messages": [{"role": "assistant", "content": "Hi"}]})),
            400,
            None,
        ),
    ];
    for (name, body, status, code) in cases {
        let (got, error) = match &body {
            Ok(json) => server.post("/v1/chat/completions", json),
            Err(raw) => server.post_raw("/v1/chat/completions", raw),
        };
        assert_eq!(got, status, "{name}: {error}");
        let error = &error["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()) && error["type"].is_string(),
            "{name}: {error}"
        );
        if let Some(code) = code {
            assert_eq!(error["code"], code, "{name}: {error}");
        }
    }
    assert_eq!(server.metric("twigvlm_requests_total{outcome=\"rejected\"}"), 19.0);
    assert_eq!(server.post("/v1/chat/completions", &chat("Still here?", None, 2)).0, 200);
}

#[test]
fn bounded_load_test() {
    let server = Server::start(&[]);
    let options = twigvlm_eval::load::LoadOptions {
        url: server.url.clone(),
        model: MODEL.into(),
        clients: 3,
        requests: 12,
        max_tokens: 16,
        prompt: "Describe the image.".into(),
        image_url: Some(image_url("shapes-80x60.png")),
        decoder: None,
    };
    let report = twigvlm_eval::load::run_load(&options).unwrap();
    assert_eq!(report.succeeded, 12, "{report:?}");
    assert!(report.failed.is_empty());
    assert!(report.latency_ms.p50 > 0.0 && report.latency_ms.p99 >= report.latency_ms.p50);
    assert!(report.time_to_first_token_ms.p50 <= report.latency_ms.p50);
    assert!(report.tokens_per_s > 0.0);
    std::fs::write(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve-load.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
}

#[test]
fn a_conversation_with_history_renders_through_the_chat_template() {
    let server = Server::start(&[]);
    let image = image_url("shapes-80x60.png");
    let first = json!([{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "What is shown?"}]);
    let conversation = json!({"model": MODEL, "max_tokens": 4, "messages": [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": first},
        {"role": "assistant", "content": "Shapes."},
        {"role": "user", "content": "Which colours?"}]});
    let (status, answer) = server.post("/v1/chat/completions", &conversation);
    assert_eq!(status, 200, "{answer}");
    let (_, alone) = server.post("/v1/chat/completions", &chat("Which colours?", Some(&image), 4));
    let tokens = |v: &Value| v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        tokens(&answer) > tokens(&alone),
        "the history is part of the prompt: {} vs {}",
        tokens(&answer),
        tokens(&alone)
    );
}
