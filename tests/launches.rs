//! Kernel launches per decoding step on a GPU backend, counted from cubecl's own record of the
//! kernels it executes (its profiling logger at the "minimal" level, forwarded to the `log`
//! crate): not calls of our trait methods, but what reaches the device. Prints the count per
//! step and per layer for one-row steps and for a six-row verification, and holds it to a bound.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use burn::prelude::*;
use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
use twigvlm_backbone::{load_llava, AttentionProbe, KvCache, LlamaDecoder, LoadOptions};
use twigvlm_integration::*;

type B = TestBackend;

/// Kernel executions cubecl has reported so far.
static LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// The names of the kernels executed, in order.
static KERNELS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct LaunchCounter;

impl log::Log for LaunchCounter {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        if let Some(kernel) = record.args().to_string().strip_prefix("Executing ") {
            KERNELS.lock().expect("kernel names").push(kernel.to_owned());
            LAUNCHES.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn flush(&self) {}
}

static COUNTER: LaunchCounter = LaunchCounter;

/// How long the count must stay still after a step's results are read back: cubecl's logger
/// runs on its own task, a little behind the device.
const SETTLE: Duration = Duration::from_millis(300);

/// The most launches a decoding step may take per layer (the embedding, the final norm and the
/// output layer included): per layer two RMSNorms, the query, key and value projections, two
/// rotary embeddings, two cache writes, the attention, the output projection with its residual,
/// the gate and up projections with the SwiGLU product, the down projection with its residual.
const MAX_LAUNCHES_PER_LAYER: usize = 15;

/// Turns cubecl's execution log on, into [`COUNTER`]; before any GPU client exists.
fn count_launches() {
    log::set_logger(&COUNTER).expect("the only logger");
    log::set_max_level(log::LevelFilter::Info);
    let config: CubeClRuntimeConfig =
        serde_json::from_value(serde_json::json!({ "profiling": { "logger": { "level": "minimal", "log": "info" } } }))
            .expect("a cubecl configuration");
    CubeClRuntimeConfig::set(config);
}

fn settled() -> usize {
    let mut last = LAUNCHES.load(Ordering::SeqCst);
    let mut since = Instant::now();
    while since.elapsed() < SETTLE {
        std::thread::sleep(Duration::from_millis(20));
        let now = LAUNCHES.load(Ordering::SeqCst);
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    last
}

/// Feeds `tokens` after the cache's entries; returns the launches the step took.
fn step(lm: &LlamaDecoder<B>, cache: &mut KvCache<B>, tokens: &[i32]) -> usize {
    let device = Default::default();
    let start = cache.lengths()[0];
    let positions: Vec<usize> = (start..start + tokens.len()).collect();
    let before = settled();
    let rope = lm.rope(&positions, &device);
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(tokens.to_vec(), [1, tokens.len()]), &device);
    let out = lm.forward_layers(lm.embed(ids), &rope, 0..lm.num_layers(), cache, &AttentionProbe::default());
    let _ = lm.logits(out.hidden).into_data();
    settled() - before
}

#[test]
fn launches_per_decoding_step() {
    count_launches();
    let lm = load_llava::<B>(&model_dir("tiny-llava-hf5"), &LoadOptions::default(), &Default::default())
        .unwrap()
        .model
        .language_model;
    let layers = lm.num_layers();
    let mut cache = KvCache::new(layers);
    step(&lm, &mut cache, &[1, 40, 77, 123, 9]);
    // The first steps compile kernels and may grow the cache; count the later ones.
    let one_row: Vec<usize> = [300, 5, 88, 17, 60, 61].iter().map(|&token| step(&lm, &mut cache, &[token])).collect();
    let names = KERNELS.lock().expect("kernel names").clone();
    let mut kinds = BTreeMap::<&str, usize>::new();
    for name in &names[names.len() - one_row[one_row.len() - 1]..] {
        *kinds.entry(name.split('<').next().unwrap_or(name)).or_default() += 1;
    }
    println!("the last one-row step's kernels: {kinds:#?}");
    let six_rows = step(&lm, &mut cache, &[7, 8, 9, 10, 11, 12]);
    let steady = *one_row[2..].iter().min().expect("steps");
    println!(
        "kernel launches per one-row step: {one_row:?} ({layers} layers; steady {steady}, {:.1} per layer)",
        steady as f64 / layers as f64
    );
    println!("kernel launches for a six-row verification: {six_rows}");
    assert!(steady > 0, "no launches counted: cubecl's execution log did not reach the counter");
    assert!(
        steady <= MAX_LAUNCHES_PER_LAYER * layers,
        "{steady} launches for a one-row step of {layers} layers (at most {MAX_LAUNCHES_PER_LAYER} per layer)"
    );
}
