//! `cargo xtask gpu-check`: prepares or runs `xtask/gpu/gpu-check.sh` (the parity tests on the
//! GPU backend, then `twigvlm bench` on a random LLaVA-1.5-7B-shaped model).
//!
//! `--pack` builds the CUDA `twigvlm` binary and the CUDA integration tests it runs here (cudarc loads
//! the driver at run time, so no CUDA toolkit is needed to build), without kernel autotuning (a
//! time-limited run on a GPU machine cannot pay cubecl's seconds-per-shape benchmarks), strips
//! and compresses them into `.gpu/check/`, the folder a run on a GPU machine without network
//! access takes along. `--local` runs the same script on this machine with the CPU build and
//! the ~1B preset.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use crate::{run, workspace_root};

/// What a run on a remote GPU machine takes along at most (working tree included).
const CARRY_LIMIT_BYTES: u64 = 64 << 20;
const PACK_DIR: &str = ".gpu/check";

#[derive(clap::Args)]
pub struct Args {
    /// Build and pack the CUDA binaries for a run on a GPU machine.
    #[arg(long, conflicts_with = "local")]
    pack: bool,
    /// Run the check here on flex with the ~1B preset and 32 new tokens.
    #[arg(long)]
    local: bool,
}

/// Cargo arguments of the packed GPU build: CUDA, no kernel autotuning.
const GPU_BUILD: [&str; 3] = ["--no-default-features", "--features", "cuda"];

/// The integration tests a GPU run takes along: the HF parity tests, the GPU kernels against
/// their default bodies, and the kernel launches per decoding step.
const PACKED_TESTS: [&str; 3] = ["parity", "gpu_kernels", "launches"];

/// Builds the integration test `name` with `build_args` and returns its path.
fn test_binary(name: &str, build_args: &[&str]) -> anyhow::Result<PathBuf> {
    let mut cmd = Command::new("cargo");
    cmd.args(["test", "--release", "-p", "twigvlm-integration", "--test", name, "--no-run", "--message-format=json"]);
    cmd.args(build_args);
    let output = cmd.current_dir(workspace_root()).output().context("cannot run cargo test --no-run")?;
    anyhow::ensure!(
        output.status.success(),
        "building the {name} tests failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["target"]["name"] == name)
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo named no {name} test executable"))
}

fn compress(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    let stripped = to.with_extension("stripped");
    run(Command::new("strip").arg("-o").arg(&stripped).arg(from))?;
    let xz = std::fs::File::create(to)?;
    let status =
        Command::new("xz").args(["-T0", "-6", "-c"]).arg(&stripped).stdout(xz).status().context("cannot run xz")?;
    anyhow::ensure!(status.success(), "xz failed");
    std::fs::remove_file(stripped)?;
    Ok(())
}

pub fn run_check(args: Args) -> anyhow::Result<()> {
    let root = workspace_root();
    if args.local {
        run(Command::new("cargo").args(["build", "--release", "-p", "twigvlm"]))?;
        let parity = test_binary("parity", &[])?;
        return run(Command::new("bash")
            .arg("xtask/gpu/gpu-check.sh")
            .args(["flex", "llava-1b-shape", "32"])
            .arg(parity));
    }
    anyhow::ensure!(args.pack, "say --pack (prepare a run on a GPU machine) or --local (run here)");
    run(Command::new("cargo").args(["build", "--release", "-p", "twigvlm"]).args(GPU_BUILD))?;
    let dir = root.join(PACK_DIR);
    std::fs::create_dir_all(&dir)?;
    compress(&root.join("target/release/twigvlm"), &dir.join("twigvlm.xz"))?;
    for name in PACKED_TESTS {
        compress(&test_binary(name, &GPU_BUILD)?, &dir.join(format!("{name}.xz")))?;
    }
    std::fs::write(dir.join("built-in"), root.display().to_string())?;
    let packed: u64 = std::fs::read_dir(&dir)?.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum();
    anyhow::ensure!(packed < CARRY_LIMIT_BYTES, "{PACK_DIR} holds {packed} bytes, over what a GPU run takes along");
    eprintln!(
        "packed {packed} bytes into {PACK_DIR}; on the GPU machine, with {PACK_DIR}: bash xtask/gpu/gpu-check.sh"
    );
    Ok(())
}
