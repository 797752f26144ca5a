//! Subcommands of the `moe-offload` binary, one file each; each parses its own arguments and
//! calls the library.

mod bench;
mod block;
mod demo;
mod extract;
mod generate;
mod inspect;
mod run;
mod sim;

use clap::{Parser, Subcommand};

/// Serve Mixture-of-Experts models whose experts do not fit in GPU memory.
#[derive(Parser)]
#[command(name = "moe-offload", version, about)]
pub struct Cli {
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Command {
    /// Generate the demo model and run it offloaded under a 20% budget.
    Demo(demo::Args),
    /// Describe a model's MoE blocks.
    Inspect(inspect::Args),
    /// Write a synthetic native model from a preset.
    Gen(generate::Args),
    /// Compute MoE blocks on inputs from a safetensors file.
    Block(block::Args),
    /// Extract one domain of a PanGu-Σ (RRE) model as a smaller model.
    Extract(extract::Args),
    /// Run a synthetic serving workload with experts offloaded under a budget.
    Run(run::Args),
    /// Benchmarks: one block, decode, transfer.
    Bench(bench::Args),
    /// Simulate offload policies on a routing trace.
    Sim(sim::Args),
}

/// Sets up `tracing` output on stderr; `RUST_LOG` overrides the level.
pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Runs a subcommand.
pub fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo(a) => demo::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Gen(a) => generate::run(a),
        Command::Block(a) => block::run(a),
        Command::Extract(a) => extract::run(a),
        Command::Run(a) => run::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Sim(a) => sim::run(a),
    }
}
