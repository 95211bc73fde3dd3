//! Running `twigvlm serve` in tests: the binary on a free loopback port with the tiny fixture
//! model (its context raised so that long generations last long enough to be cancelled or
//! interrupted; the weights do not depend on it) and a twig trained for one step.

// Each test binary uses part of this.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// The id the test servers serve their model under.
pub const MODEL: &str = "tiny-serve";
/// Context of the served copy of the fixture: room for generations of a few seconds.
pub const LONG_CONTEXT: usize = 8192;
pub const LONG_GENERATION: usize = 8000;

pub fn twigvlm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_twigvlm"))
}

/// The fixture model with a longer context, and a twig for it (made once per test binary, in a
/// directory of its own).
pub fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{MODEL}-{}", env!("CARGO_CRATE_NAME")));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let source = twigvlm_testkit::tiny_llava();
        for entry in std::fs::read_dir(&source).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        config["text_config"]["max_position_embeddings"] = json!(LONG_CONTEXT);
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        train_twig(&dir, &dir.join("twig"), &[]);
        dir
    })
}

/// Trains a twig for `model` for one step (K=1, T=2) into `out`.
pub fn train_twig(model: &Path, out: &Path, extra: &[&str]) {
    let out = twigvlm()
        .args(["train-twig", "--model"])
        .arg(model)
        .args(["--data", "shapes:seed=1,n=2", "--k", "1", "--t", "2", "--steps", "1", "--quiet", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

pub struct Server {
    pub child: Child,
    pub url: String,
    /// What the server has written to stderr (its log) so far.
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// The server with the test model and its twig.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with_twig(&model_dir().join("twig"), extra)
    }

    pub fn start_with_twig(twig: &Path, extra: &[&str]) -> Self {
        let mut child = twigvlm()
            .args(["serve", "--port", "0", "--served-model-name", MODEL, "--model"])
            .arg(model_dir())
            .arg("--twig")
            .arg(twig)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Self { child, url, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// `host:port` of the server.
    pub fn address(&self) -> &str {
        self.url.strip_prefix("http://").unwrap()
    }

    /// The lines the server has logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// POSTs JSON and returns the status and the JSON body (errors included).
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, &body.to_string())
    }

    pub fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        answer(ureq::post(&self.url(path)).set("Content-Type", "application/json").send_string(body))
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        match ureq::get(&self.url(path)).call() {
            Ok(response) => (response.status(), response.into_string().unwrap()),
            Err(ureq::Error::Status(status, response)) => (status, response.into_string().unwrap()),
            Err(e) => panic!("{e}"),
        }
    }

    /// A counter or gauge from /metrics.
    pub fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }

    pub fn stream(&self, body: &Value) -> impl Iterator<Item = String> {
        let response = ureq::post(&self.url("/v1/chat/completions")).send_json(body.clone()).unwrap();
        BufReader::new(response.into_reader())
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| line.strip_prefix("data: ").map(str::to_string))
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status and JSON body of a response, errors included.
pub fn answer(response: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    match response {
        Ok(response) => (response.status(), response.into_json().unwrap()),
        Err(ureq::Error::Status(status, response)) => (status, response.into_json().unwrap()),
        Err(e) => panic!("{e}"),
    }
}

pub fn image_url(name: &str) -> String {
    let bytes = std::fs::read(twigvlm_testkit::image(name)).unwrap();
    png_data_url(&bytes)
}

pub fn png_data_url(png: &[u8]) -> String {
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png))
}

/// A black PNG of the given size, as a data URL.
pub fn blank_image_url(width: u32, height: u32) -> String {
    let mut png = Vec::new();
    image::DynamicImage::new_rgb8(width, height)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png_data_url(&png)
}

pub fn chat(prompt: &str, image: Option<&str>, max_tokens: usize) -> Value {
    let mut content = vec![json!({"type": "text", "text": prompt})];
    if let Some(url) = image {
        content.insert(0, json!({"type": "image_url", "image_url": {"url": url}}));
    }
    json!({"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens})
}

pub fn with(mut body: Value, extra: Value) -> Value {
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    body
}

pub fn text_of(completion: &Value) -> String {
    completion["choices"][0]["message"]["content"].as_str().unwrap().to_string()
}

/// Polls `condition` for a few seconds.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn twigvlm_kill(pid: &str) -> bool {
    Command::new("kill").args(["-TERM", pid]).status().map(|s| s.success()).unwrap_or(false)
}
