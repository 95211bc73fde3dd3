//! Argument parsing and dispatch of the `twigvlm` subcommands.

mod dump;
mod generate;
mod import;
mod train;

use clap::{Parser, Subcommand};
use tracing_subscriber::filter::LevelFilter;

/// Fast vision-language inference with twig-guided token pruning and self-speculative decoding.
#[derive(Debug, Parser)]
#[command(name = "twigvlm", version, about)]
pub struct Cli {
    /// Log verbosity on stderr.
    #[arg(long, global = true, default_value = "warn")]
    pub log_level: LevelFilter,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Answer a prompt about an image (or a text-only prompt).
    Generate(generate::GenerateArgs),
    /// Convert checkpoints from other formats into model directories.
    #[command(subcommand)]
    Import(import::ImportCommand),
    /// Train the parts of a model this project trains (the demo model's stages).
    #[command(subcommand)]
    Train(train::TrainCommand),
}

pub fn init_logging(level: LevelFilter) {
    tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).with_target(false).init();
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Import(command) => import::run(command),
        Command::Train(command) => train::run(command),
    }
}
