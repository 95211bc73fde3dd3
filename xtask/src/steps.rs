//! `cargo xtask bench-steps`: the cost of one full decoding step against its row count
//! (`twigvlm bench-steps`), per storage type of the weights, on the demo model and on the ~1B
//! random preset, into `bench/results/decode-steps/`.

use crate::{run, twigvlm, workspace_root};

const PRESET: &str = "llava-1b-shape";
const DEMO: &str = "models/shapes-smol";
const RESULTS: &str = "bench/results/decode-steps";

pub fn run_steps() -> anyhow::Result<()> {
    let root = workspace_root();
    let preset = root.join("target/bench-models").join(PRESET);
    if !preset.join("model.safetensors").is_file() {
        run(twigvlm().args(["make-model", "--preset", PRESET, "--out"]).arg(&preset))?;
    }
    anyhow::ensure!(root.join(DEMO).join("language_model").is_dir(), "{DEMO} is not prepared: run `cargo xtask demo`");
    run(twigvlm().args(["bench-steps", "--model", DEMO, "--results-dir", RESULTS]))?;
    run(twigvlm().args(["bench-steps", "--repeats", "5", "--results-dir", RESULTS, "--model"]).arg(&preset))
}
