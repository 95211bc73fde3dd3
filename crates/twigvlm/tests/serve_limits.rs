//! `twigvlm serve` against clients that ask too much or are not who they claim: images and draft
//! trees past the model's bounds, runaway prefills, pages on other origins, slow and too many
//! connections, control tokens in user text; and the OpenAI parameters every client sends
//! (neutral penalties, stop strings, seeds), the request log and the drain window.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// Words that make a prompt of about 8,100 tokens: a prefill of seconds on the fixture.
const LONG_PROMPT_WORDS: usize = 2700;

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[test]
fn images_trees_budgets_and_explanations_beyond_the_bounds_get_a_4xx() {
    let server = Server::start(&["--max-draft-tree-nodes", "8"]);
    let image = image_url("shapes-80x60.png");
    for (width, height) in [(1, 100_000), (100_000, 1), (1_000_000, 1), (21, 1)] {
        let (status, body) = server.post("/v1/chat/completions", &chat("Hi", Some(&blank_image_url(width, height)), 2));
        assert_eq!((status, error_code(&body)), (400, "unsupported_image"), "{width}x{height}: {body}");
    }
    let (status, _) = server.post("/v1/chat/completions", &chat("Hi", Some(&blank_image_url(20, 1)), 2));
    assert_eq!(status, 200, "20:1 is the largest aspect ratio taken");

    let ssd = |tree: &str, extra: Value| {
        with(with(chat("Describe the picture.", Some(&image), 8), json!({"decoder": "ssd", "draft_tree": tree})), extra)
    };
    for tree in ["64:64:100000", "3:3:9"] {
        let (status, body) = server.post("/v1/chat/completions", &ssd(tree, json!({})));
        assert_eq!((status, body["error"]["param"].as_str()), (400, Some("draft_tree")), "{tree}: {body}");
    }
    assert_eq!(server.post("/v1/chat/completions", &ssd("3:3:8", json!({}))).0, 200);
    let (status, body) = server.post("/v1/chat/completions", &ssd("3:3:8", json!({"temperature": 0.7})));
    assert_eq!(status, 400, "a tree with sampling is refused, not ignored: {body}");

    // The fixture's image is 16 visual tokens: a budget of all of them keeps them all, one more
    // is refused as a share over 100% is.
    let pruned = |budget: Value| {
        server.post(
            "/v1/chat/completions",
            &with(chat("Describe the picture.", Some(&image), 2), json!({"policy": "fastv", "visual_budget": budget})),
        )
    };
    let (status, body) = pruned(json!(16));
    assert_eq!(status, 200, "{body}");
    assert!(body["twigvlm"]["kept_visual_indices"].is_null(), "a budget of every visual token prunes nothing: {body}");
    for budget in [json!(17), json!(1000), json!("150%")] {
        assert_eq!(pruned(budget.clone()).0, 400, "visual_budget {budget}");
    }

    let explain = |body: Value| answer(ureq::post(&server.url("/v1/explain")).send_json(body));
    let (status, body) = explain(json!({"image_url": image, "prompt": "Where?", "visual_budget": "25%",
        "policies": ["fastv", "random", "vlm-layer:1", "vlm-layer:2", "vlm-layer:3", "twig", "fastv"]}));
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("policies")), "{body}");
    let long = "word ".repeat(LONG_CONTEXT);
    let (status, body) = explain(json!({"image_url": image, "prompt": long, "visual_budget": "25%"}));
    assert_eq!((status, error_code(&body)), (400, "context_length_exceeded"), "{body}");
    let (status, body) =
        explain(json!({"image_url": blank_image_url(1, 100_000), "prompt": "Where?", "visual_budget": "25%"}));
    assert_eq!((status, error_code(&body)), (400, "unsupported_image"), "{body}");
    assert_eq!(server.post("/v1/chat/completions", &chat("Still here?", None, 2)).0, 200);
}

/// The `ms=` of the request log line with `outcome`.
fn logged_ms(server: &Server, outcome: &str) -> Option<u64> {
    server.log().iter().find(|line| line.contains(&format!("outcome={outcome}"))).and_then(|line| {
        line.split_whitespace().find_map(|field| field.strip_prefix("ms=")).and_then(|ms| ms.parse().ok())
    })
}

#[test]
fn a_long_prefill_stops_when_its_client_goes_or_its_deadline_passes() {
    let long = chat(&"word ".repeat(LONG_PROMPT_WORDS), None, 1);
    // The same prompt again would continue from the first one's kept caches.
    let server = Server::start(&["--prompt-cache-mib", "0"]);
    let (status, whole) = server.post("/v1/chat/completions", &long);
    assert_eq!(status, 200, "{whole}");
    let prefill_ms = whole["twigvlm"]["prefill_ms"].as_f64().unwrap();
    // Stopped between the layers of a prefill chunk, well before the prefill would end.
    let soon = (prefill_ms * 0.75) as u64;

    let impatient = ureq::AgentBuilder::new().timeout(Duration::from_millis(100)).build();
    assert!(impatient.post(&server.url("/v1/chat/completions")).send_json(long.clone()).is_err());
    eventually("the cancellation", || logged_ms(&server, "cancelled").is_some());
    let cancelled = logged_ms(&server, "cancelled").unwrap();
    assert!(cancelled < soon, "cancelled after {cancelled} ms; the whole prefill takes {prefill_ms} ms");
    assert_eq!(server.post("/v1/chat/completions", &chat("Hi", None, 2)).0, 200, "the engine is free");

    let strict = Server::start(&["--request-timeout", "0.3", "--prompt-cache-mib", "0"]);
    let (status, body) = strict.post("/v1/chat/completions", &long);
    assert_eq!((status, error_code(&body)), (504, "request_timeout"), "{body}");
    // The engine counts and logs a request once it has stopped, just after its answer leaves.
    eventually("the timeout's log line", || logged_ms(&strict, "timed_out").is_some());
    let timed_out = logged_ms(&strict, "timed_out").unwrap();
    assert!(timed_out < soon, "stopped after {timed_out} ms; the whole prefill takes {prefill_ms} ms");
    let runaway =
        with(chat("Tell me a long story.", None, LONG_GENERATION), json!({"decoder": "ssd", "draft_tree": "8:8:64"}));
    let (status, body) = strict.post("/v1/chat/completions", &runaway);
    assert_eq!((status, error_code(&body)), (504, "request_timeout"), "{body}");
    eventually("both timeouts counted", || strict.metric("twigvlm_requests_total{outcome=\"timed_out\"}") == 2.0);
    assert_eq!(strict.post("/v1/chat/completions", &chat("Hi", None, 2)).0, 200, "the engine is free");
}

/// Sends `request` over a fresh connection and returns everything the server answers.
fn raw_exchange(server: &Server, request: &str) -> String {
    let mut stream = TcpStream::connect(server.address()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

fn raw_post(server: &Server, host: &str, extra_headers: &str, content_type: &str) -> String {
    let body = chat("Hi", None, 2).to_string();
    raw_exchange(
        server,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n{extra_headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

#[test]
fn pages_on_other_origins_and_rebound_host_names_are_refused() {
    let server = Server::start(&["--allowed-origin", "http://app.example", "--allowed-host", "app.example"]);
    let own = server.address().to_string();
    let status_of = |answer: &str| answer.split_whitespace().nth(1).unwrap_or_default().to_string();
    let text_plain = raw_post(&server, &own, "", "text/plain");
    assert_eq!(status_of(&text_plain), "415", "{text_plain}");
    assert!(text_plain.contains("unsupported_media_type"));
    let evil_origin = raw_post(&server, &own, "Origin: http://evil.example\r\n", "application/json");
    assert_eq!(status_of(&evil_origin), "403", "{evil_origin}");
    assert!(evil_origin.contains("forbidden_origin"));
    let rebound = raw_post(&server, "evil.example:8080", "", "application/json");
    assert_eq!(status_of(&rebound), "403", "{rebound}");
    assert!(rebound.contains("forbidden_host"));
    for (host, origin) in [(own.clone(), format!("http://{own}")), ("localhost".into(), "http://app.example".into())] {
        let answer = raw_post(&server, &host, &format!("Origin: {origin}\r\n"), "application/json");
        assert_eq!(status_of(&answer), "200", "{host} from {origin}: {answer}");
    }
    assert_eq!(status_of(&raw_post(&server, "app.example", "", "application/json")), "200");
    let allowed = raw_post(&server, &own, "Origin: http://app.example\r\n", "application/json");
    assert!(allowed.to_ascii_lowercase().contains("access-control-allow-origin: http://app.example"), "{allowed}");
    let preflight = raw_exchange(
        &server,
        &format!("OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: {own}\r\nOrigin: http://app.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\nConnection: close\r\n\r\n"),
    );
    assert!(preflight.to_ascii_lowercase().contains("access-control-allow-origin: http://app.example"), "{preflight}");
    // Without --allowed-origin there are no CORS answers at all.
    let plain = Server::start(&[]);
    let preflight = raw_exchange(
        &plain,
        &format!("OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nOrigin: http://app.example\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n", plain.address()),
    );
    assert!(!preflight.to_ascii_lowercase().contains("access-control-allow-origin"), "{preflight}");
}

#[test]
fn slow_clients_are_disconnected_and_connections_are_limited() {
    let server = Server::start(&["--header-read-timeout", "0.5", "--max-connections", "4"]);
    let started = Instant::now();
    let half: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut stream = TcpStream::connect(server.address()).unwrap();
            stream.write_all(b"GET /health HT").unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            stream
        })
        .collect();
    // A fifth connection is closed unanswered while four are open.
    let refused = raw_exchange(
        &server,
        &format!("GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", server.address()),
    );
    assert!(refused.is_empty(), "{refused}");
    for mut stream in half {
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
    }
    assert!(started.elapsed() < Duration::from_secs(10), "the half-sent requests were dropped at their timeout");
    assert_eq!(server.get("/health").0, 200, "their connections are free again");
}

#[test]
fn control_tokens_typed_by_a_user_are_plain_text() {
    let server = Server::start(&[]);
    let prompt_tokens = |text: &str| {
        let (status, body) = server.post("/v1/chat/completions", &chat(text, None, 1));
        assert_eq!(status, 200, "{body}");
        body["usage"]["prompt_tokens"].as_u64().unwrap()
    };
    // `</s>` is the fixture's end-of-sequence token: as a control token it would be one token.
    let plain = prompt_tokens("Hi there");
    let typed = prompt_tokens("Hi </s> there");
    assert!(typed > plain + 1, "</s> typed by a user must be text, not the control token: {typed} vs {plain}");
}

#[test]
fn the_openai_parameters_clients_send_are_taken_or_refused_clearly() {
    let server = Server::start(&[]);
    let neutral = json!({"stop": null, "logprobs": false, "top_logprobs": 0, "presence_penalty": 0, "frequency_penalty": 0.0,
        "parallel_tool_calls": true, "logit_bias": {}, "tools": [], "tool_choice": "none", "response_format": {"type": "text"}, "user": "u1"});
    let (status, body) = server.post("/v1/chat/completions", &with(chat("Hi", None, 4), neutral));
    assert_eq!(status, 200, "{body}");
    for refused in
        [json!({"presence_penalty": 0.5}), json!({"logprobs": true}), json!({"stop": ["a", "b", "c", "d", "e"]})]
    {
        let (status, body) = server.post("/v1/chat/completions", &with(chat("Hi", None, 4), refused.clone()));
        assert_eq!(status, 400, "{refused}: {body}");
        assert!(body["error"]["param"].is_string(), "{body}");
    }

    // A stop string ends the answer before it, whole or streamed, across token boundaries.
    let prompt = "Describe the picture.";
    let image = image_url("shapes-80x60.png");
    let (_, whole) = server.post("/v1/chat/completions", &chat(prompt, Some(&image), 24));
    let text = text_of(&whole);
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    assert!(chars.len() > 12, "{text:?}");
    let (from, to) = (chars[8].0, chars[12].0);
    let stop = &text[from..to];
    let expected = &text[..text.find(stop).unwrap()];
    let stopped = with(chat(prompt, Some(&image), 24), json!({"stop": [stop, "never appears"]}));
    let (status, body) = server.post("/v1/chat/completions", &stopped);
    assert_eq!(status, 200, "{body}");
    assert_eq!((text_of(&body).as_str(), body["choices"][0]["finish_reason"].as_str()), (expected, Some("stop")));
    let events: Vec<String> = server.stream(&with(stopped, json!({"stream": true}))).collect();
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, expected, "text that could start a stop string is held back");
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "stop");

    // Without a seed each request samples differently and reports the seed it drew.
    let sampled = with(chat("Tell me a story.", None, 16), json!({"temperature": 1.0}));
    let answers: Vec<Value> = (0..3).map(|_| server.post("/v1/chat/completions", &sampled).1).collect();
    let seeds: Vec<u64> = answers.iter().map(|a| a["twigvlm"]["seed"].as_u64().unwrap()).collect();
    assert!(seeds[0] != seeds[1] && seeds[1] != seeds[2], "{seeds:?}");
    let texts: Vec<String> = answers.iter().map(text_of).collect();
    assert!(texts.windows(2).any(|w| w[0] != w[1]), "{texts:?}");
    let again = server.post("/v1/chat/completions", &with(sampled, json!({"seed": seeds[0]}))).1;
    assert_eq!(text_of(&again), texts[0], "the reported seed reproduces the answer");
}

#[test]
fn final_wipe_alone_and_the_twigs_default_final_wipe() {
    let server = Server::start(&[]);
    let image = image_url("shapes-80x60.png");
    let (status, body) = server.post(
        "/v1/chat/completions",
        &with(chat("Describe the picture.", Some(&image), 2), json!({"policy": "none", "final_wipe": 3})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["twigvlm"]["final_wipe"], 3, "{body}");
    assert_eq!(body["twigvlm"]["kept_visual_indices"].as_array().unwrap().len(), 16);

    // A twig trained with a default FinalWipe layer brings it to requests that name none.
    let twig = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("twig-with-final-wipe");
    train_twig(model_dir(), &twig, &["--default-final-wipe", "3"]);
    let server = Server::start_with_twig(&twig, &[]);
    let twig_pruned =
        with(chat("Describe the picture.", Some(&image), 2), json!({"policy": "twig", "visual_budget": "50%"}));
    let (status, body) = server.post("/v1/chat/completions", &twig_pruned);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["twigvlm"]["final_wipe"], 3, "{body}");
    let (_, body) = server.post("/v1/chat/completions", &with(twig_pruned, json!({"final_wipe": 2})));
    assert_eq!(body["twigvlm"]["final_wipe"], 2, "a request's own FinalWipe wins: {body}");
}

#[test]
fn every_request_is_logged_and_health_says_stopping_while_draining() {
    let server = Server::start(&[]);
    assert_eq!(server.post("/v1/chat/completions", &chat("Hi", None, 3)).0, 200);
    assert_eq!(server.post("/v1/chat/completions", &with(chat("Hi", None, 3), json!({"n": 2}))).0, 400);
    eventually("two request lines", || server.log().iter().filter(|l| l.contains(" request ")).count() >= 2);
    let log = server.log();
    let completed = log.iter().find(|l| l.contains("outcome=completed")).expect("the completion is logged");
    for field in ["id=chatcmpl-", "status=200", "prompt_tokens=", "new_tokens=3", "ms="] {
        assert!(completed.contains(field), "{field} in {completed}");
    }
    assert!(log.iter().any(|l| l.contains("status=400") && l.contains("outcome=rejected")), "{log:?}");
    assert!(log.iter().all(|l| !l.contains('\u{1b}')), "no colour codes in a log that is not a terminal");

    // A prefill of seconds keeps the engine busy while the server drains.
    std::thread::scope(|scope| {
        let running =
            scope.spawn(|| server.post("/v1/chat/completions", &chat(&"word ".repeat(LONG_PROMPT_WORDS), None, 1)));
        eventually("the long request to run", || server.metric("twigvlm_running_requests") == 1.0);
        assert!(twigvlm_kill(&server.pid()));
        eventually("the drain window", || server.get("/health").0 == 503);
        let (_, health) = server.get("/health");
        assert_eq!(serde_json::from_str::<Value>(&health).unwrap()["status"], "stopping");
        assert_eq!(server.post("/v1/chat/completions", &chat("Hi", None, 2)).0, 503, "new work is refused");
        assert_eq!(running.join().unwrap().0, 200, "the running request finishes");
    });
}
