//! Property tests of admission: random request bodies (JSON of random shapes, damaged bytes,
//! random budgets, draft trees and stop lists, images of random sizes including 1×N and N×1)
//! through the server's request checker, and random image sizes through both LLaVA
//! preprocessings. Every body is answered (accepted, or refused with a 4xx), nothing panics, and
//! a counting allocator bounds the memory each one takes. Seeded, so a failure reproduces.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use base64::Engine as _;
use burn::backend::Flex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use twigvlm_backbone::preprocess::{ImagePreprocessor, MAX_ASPECT_RATIO};
use twigvlm_backbone::LoadOptions;
use twigvlm_engine::{DecoderKind, DraftConfig, Engine, PruningSpec};
use twigvlm_serve::{ImageLimits, RequestChecker, RequestDefaults, RequestLimits};

/// Counts the bytes allocated now and the most allocated at once since the last reset.
struct CountingAllocator;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        moved
    }
}

fn grew(size: usize) {
    let now = CURRENT.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// One measurement at a time: the tests of this file share the counters.
static MEASURING: Mutex<()> = Mutex::new(());

/// Runs `work` and returns its result with the most bytes it held at once beyond what was
/// allocated before it started.
fn peak_of<T>(work: impl FnOnce() -> T) -> (T, usize) {
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let result = work();
    (result, PEAK.load(Ordering::Relaxed).saturating_sub(before))
}

const MODEL: &str = "tiny";
const MIB: usize = 1 << 20;
/// The server's image limits in these tests: 2 MiB encoded, 4 Mpixel decoded.
const IMAGES: ImageLimits = ImageLimits { max_bytes: 2 * MIB, max_pixels: 4 << 20, allow_remote: false };
/// Most memory one request's admission may take: the body, its decoded image (4 bytes a pixel
/// at the pixel limit, with a copy while it is converted) and the prompt's tokens.
const ADMISSION_BOUND: usize = 64 * MIB;
const BODIES: usize = 600;

fn checker() -> RequestChecker {
    let engine = Engine::<Flex>::load(&twigvlm_testkit::tiny_llava(), &LoadOptions::default(), Default::default())
        .expect("the tiny fixture loads");
    RequestChecker {
        model_name: MODEL.into(),
        facts: engine.facts().clone(),
        defaults: RequestDefaults {
            pruning: PruningSpec::none(),
            decoder: DecoderKind::Base,
            draft: DraftConfig::default(),
            max_tokens: 16,
        },
        limits: RequestLimits::default(),
        images: IMAGES,
    }
}

fn png_url(width: u32, height: u32) -> String {
    let mut png = Vec::new();
    image::DynamicImage::new_rgb8(width, height)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png))
}

/// Image sizes worth trying (an ordinary one first), the aspect-ratio limit on both sides of it, lines
/// one pixel thin, and ones over the pixel limit.
fn image_sizes(rng: &mut StdRng) -> Vec<(u32, u32)> {
    let mut sizes = vec![(80, 60), (1, 1), (1, 100_000), (100_000, 1), (1_000_000, 1), (1, 20), (1, 21)];
    sizes.extend([(MAX_ASPECT_RATIO * 50, 50), (MAX_ASPECT_RATIO * 50 + 1, 50), (3000, 3000)]);
    for _ in 0..12 {
        let short = rng.random_range(1..=200);
        let long = short * rng.random_range(1..=40);
        sizes.push(if rng.random_bool(0.5) { (short, long) } else { (long, short) });
    }
    sizes
}

fn pick<T: Clone>(rng: &mut StdRng, choices: &[T]) -> T {
    choices[rng.random_range(0..choices.len())].clone()
}

fn random_text(rng: &mut StdRng) -> String {
    let pieces = ["Hi", "What is shown?", "<image>", "<|im_end|>", "</s>", "USER:", "é漢🙂", "\u{0}", "\n", " "];
    match rng.random_range(0..10) {
        0 => "word ".repeat(rng.random_range(1..20_000)),
        1 => String::new(),
        _ => (0..rng.random_range(1..8)).map(|_| pick(rng, &pieces)).collect(),
    }
}

/// A JSON value of a random type and shape.
fn random_value(rng: &mut StdRng, depth: usize) -> Value {
    match rng.random_range(0..if depth == 0 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.random_bool(0.5)),
        2 => json!(pick(rng, &[0i64, 1, -1, 3, 64, 100_000, i64::MAX, i64::MIN])),
        3 => json!(pick(rng, &[0.0, 0.5, -1.0, 1.5, 1e308, -1e-300])),
        4 => json!(random_text(rng)),
        5 => json!(pick(rng, &["50%", "150%", "-3", "3:3:6", "64:64:100000", "nan", "inf", "none", "twig"])),
        6 => Value::Array((0..rng.random_range(0..6)).map(|_| random_value(rng, depth - 1)).collect()),
        _ => {
            let keys = ["type", "text", "url", "image_url", "include_usage", "role", "content", "x"];
            Value::Object(
                (0..rng.random_range(0..4)).map(|_| (pick(rng, &keys).into(), random_value(rng, depth - 1))).collect(),
            )
        }
    }
}

fn random_content(rng: &mut StdRng, images: &[String]) -> Value {
    if rng.random_bool(0.3) {
        return json!(random_text(rng));
    }
    let parts: Vec<Value> = (0..rng.random_range(0..4))
        .map(|_| match rng.random_range(0..10) {
            0..3 => json!({"type": "image_url", "image_url": {"url": pick(rng, images)}}),
            3 => random_value(rng, 2),
            _ => json!({"type": "text", "text": random_text(rng)}),
        })
        .collect();
    json!(parts)
}

/// Plausible and implausible values for each field a chat request may carry.
fn random_field(rng: &mut StdRng, name: &str) -> Value {
    let plausible = match name {
        "temperature" | "top_p" => vec![json!(0.0), json!(0.7), json!(1.0), json!(-1.0), json!(5.0)],
        "max_tokens" | "max_completion_tokens" => vec![json!(1), json!(16), json!(0), json!(100_000_000)],
        "seed" => vec![json!(0), json!(42), json!(u64::MAX), json!(-1)],
        "stop" => vec![json!(null), json!("\n"), json!(["a", "b"]), json!(["a", "b", "c", "d", "e"]), json!([""])],
        "decoder" => vec![json!("base"), json!("ssd"), json!("twig-only"), json!("fast")],
        "draft_tree" => vec![json!("3:3:6"), json!("64:64:100000"), json!("8:8:64"), json!("none"), json!("0:1:1")],
        "draft_length" => vec![json!("fixed"), json!("adaptive"), json!("long")],
        "policy" => vec![json!("none"), json!("fastv"), json!("twig"), json!("random:3"), json!("vlm-layer:2")],
        "visual_budget" => vec![json!("50%"), json!("150%"), json!(1000), json!(3), json!(0), json!("11.1%")],
        "final_wipe" => vec![json!(0), json!(1), json!(3), json!(100)],
        "logprobs" => vec![json!(false), json!(true)],
        "presence_penalty" | "frequency_penalty" => vec![json!(0), json!(0.5)],
        "n" => vec![json!(1), json!(3)],
        "stream" => vec![json!(true), json!(false)],
        "stream_options" => vec![json!({"include_usage": true}), json!({"other": 1})],
        "response_format" => vec![json!({"type": "text"}), json!({"type": "json_object"})],
        "tools" => vec![json!([]), json!([{"type": "function"}])],
        "tool_choice" => vec![json!("none"), json!("auto")],
        "logit_bias" => vec![json!({}), json!({"5": 1})],
        _ => vec![json!(null)],
    };
    if rng.random_bool(0.9) {
        pick(rng, &plausible)
    } else {
        random_value(rng, 2)
    }
}

const FIELDS: [&str; 22] = [
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "stop",
    "decoder",
    "draft_tree",
    "draft_length",
    "policy",
    "visual_budget",
    "final_wipe",
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "stream",
    "stream_options",
    "response_format",
    "tools",
    "logit_bias",
];

/// A request as clients usually send it (one user turn, perhaps an ordinary image) with a few
/// fields of random values, or a conversation of random turns and parts.
fn random_chat(rng: &mut StdRng, images: &[String]) -> Value {
    if rng.random_bool(0.5) {
        let mut content = vec![json!({"type": "text", "text": pick(rng, &["Hi", "What is shown?", "<|im_end|>x"])})];
        if rng.random_bool(0.5) {
            content.insert(0, json!({"type": "image_url", "image_url": {"url": images[0]}}));
        }
        let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": content}]});
        for _ in 0..rng.random_range(0..4) {
            let field = pick(rng, &FIELDS);
            body[field] = random_field(rng, field);
        }
        return body;
    }
    let roles = ["user", "user", "system", "assistant", "developer", "tool"];
    let mut messages: Vec<Value> = (0..rng.random_range(0..4))
        .map(|_| json!({"role": pick(rng, &roles), "content": random_content(rng, images)}))
        .collect();
    messages.push(json!({"role": "user", "content": random_content(rng, images)}));
    let mut body = json!({"model": if rng.random_bool(0.95) { MODEL } else { "gpt-4o" }, "messages": messages});
    for field in FIELDS {
        if rng.random_bool(0.15) {
            body[field] = random_field(rng, field);
        }
    }
    if rng.random_bool(0.05) {
        body[pick(rng, &["messages", "model"])] = random_value(rng, 1);
    }
    body
}

fn random_explain(rng: &mut StdRng, images: &[String]) -> Value {
    let policies = ["none", "fastv", "twig", "random", "vlm-layer:1", "vlm-layer:9", "bogus"];
    let mut body = json!({
        "image_url": pick(rng, images),
        "prompt": random_text(rng),
        "visual_budget": random_field(rng, "visual_budget"),
    });
    if rng.random_bool(0.7) {
        body["policies"] = json!((0..rng.random_range(0..10)).map(|_| pick(rng, &policies)).collect::<Vec<_>>());
    }
    if rng.random_bool(0.3) {
        body["final_wipe"] = random_field(rng, "final_wipe");
    }
    body
}

/// A body's bytes, sometimes damaged: cut short or with bytes replaced.
fn random_bytes(rng: &mut StdRng, body: &Value) -> Vec<u8> {
    let mut bytes = body.to_string().into_bytes();
    match rng.random_range(0..16) {
        0 => bytes.truncate(rng.random_range(0..=bytes.len())),
        1 => {
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] = rng.random();
            }
        }
        _ => {}
    }
    bytes
}

#[test]
fn random_request_bodies_are_accepted_or_refused_with_a_4xx_in_bounded_memory() {
    let checker = checker();
    let _measuring = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = StdRng::seed_from_u64(0x7769_6776);
    let mut images: Vec<String> = image_sizes(&mut rng).into_iter().map(|(w, h)| png_url(w, h)).collect();
    images.extend([
        "data:image/png;base64,AAAA".into(),
        "https://example.com/a.png".into(),
        "file:///etc/passwd".into(),
    ]);
    let (mut accepted, mut refused) = (0, 0);
    let mut worst = 0;
    for case in 0..BODIES {
        let chat = case % 4 != 3;
        let body = if chat { random_chat(&mut rng, &images) } else { random_explain(&mut rng, &images) };
        let bytes = random_bytes(&mut rng, &body);
        let (outcome, peak) =
            peak_of(|| if chat { checker.chat(&bytes).map(drop) } else { checker.explain(&bytes).map(drop) });
        let shown = || String::from_utf8_lossy(&bytes[..bytes.len().min(400)]).into_owned();
        match outcome {
            Ok(()) => accepted += 1,
            Err(error) => {
                assert!(
                    error.status.is_client_error(),
                    "case {case}: {} {} for {}",
                    error.status,
                    error.message,
                    shown()
                );
                refused += 1;
            }
        }
        assert!(peak <= ADMISSION_BOUND + bytes.len(), "case {case}: {peak} bytes for {}", shown());
        worst = worst.max(peak);
    }
    assert!(accepted > BODIES / 20 && refused > BODIES / 4, "{accepted} accepted, {refused} refused");
    eprintln!("{accepted} accepted, {refused} refused; at most {:.1} MiB at once", worst as f64 / MIB as f64);
}

/// Most memory preprocessing may take beyond its input: the padded square at its pixel cap
/// (3 bytes a pixel, plus a resized copy) — far below what an unbounded aspect ratio would build.
const PREPROCESSING_BOUND: usize = 3 * 8192 * 8192 + 64 * MIB;

#[test]
fn random_image_sizes_preprocess_in_bounded_memory_or_are_refused_before_allocating() {
    let _measuring = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let pad = ImagePreprocessor::llava_default(336);
    let crop = ImagePreprocessor { pad_to_square: false, ..pad.clone() };
    let mut rng = StdRng::seed_from_u64(0x6372_6f70);
    let mut worst = 0;
    for (width, height) in image_sizes(&mut rng) {
        let image = image::DynamicImage::new_rgb8(width, height);
        for preprocessor in [&pad, &crop] {
            let (outcome, peak) = peak_of(|| preprocessor.preprocess(&image).map(|(values, _)| values.len()));
            match outcome {
                Ok(values) => assert_eq!(values, 3 * 336 * 336, "{width}x{height}"),
                Err(_) => {
                    assert!(preprocessor.check_input(width, height).is_err());
                    assert!(peak < MIB, "{width}x{height} was refused after {peak} bytes");
                }
            }
            assert!(peak <= PREPROCESSING_BOUND, "{width}x{height}: {peak} bytes");
            worst = worst.max(peak);
        }
    }
    eprintln!("preprocessing held at most {:.1} MiB at once", worst as f64 / MIB as f64);
}
