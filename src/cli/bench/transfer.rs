//! `moe-offload bench transfer`: host→device GB/s of each transfer path copying whole experts
//! of a model into device slots, against the pinned-memory ceiling measured in the same run.

use std::path::PathBuf;

use moe_offload::backend::cuda::{self, TransferBenchOptions, parse_list};

/// Arguments of `bench transfer`.
#[derive(clap::Args)]
pub struct Args {
    /// Model folder (e.g. from `gen --preset mixtral-8x7b-shape`).
    #[arg(long)]
    model: PathBuf,
    /// Path(s) to measure: registered, pinned, pageable, all (or pinned:N, auto).
    #[arg(long, default_value = "all")]
    path: String,
    /// CPU threads of the pinned ring, comma-separated (one row each).
    #[arg(long, default_value = "1,4,8")]
    threads: String,
    /// Timed passes over all experts, after one warm-up pass.
    #[arg(long, default_value_t = 1)]
    iters: usize,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// Runs `bench transfer`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let threads = parse_list(&args.threads)?;
    let opts = TransferBenchOptions {
        paths: TransferBenchOptions::paths_for(&args.path, &threads)?,
        model: args.model,
        iters: args.iters,
        ordinal: args.device,
    };
    // No added context: without the feature the message must read
    // `error: this build has no CUDA support ...`.
    let report = cuda::bench_transfer(&opts)?;
    if args.json {
        println!("{}", report.to_json()?);
    } else {
        print!("{}", report.to_markdown());
    }
    Ok(())
}
