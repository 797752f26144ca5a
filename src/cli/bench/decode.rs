//! `moe-offload bench decode`: offloaded decode tokens/s at several budgets and policies,
//! against the resident run and the naive method.

use std::path::PathBuf;

use moe_offload::workload::Workload;

/// Arguments of `bench decode`.
#[derive(clap::Args)]
pub struct Args {
    /// Model folder.
    #[arg(long)]
    model: PathBuf,
    /// Compute device: cpu, cuda or cuda:N (cuda needs a build with the feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// CUDA host→device path: auto, registered, pinned[:N], pageable.
    #[arg(long, default_value = "auto")]
    transfer: String,
    /// Host→device ceiling in GB/s for the transfer bound (e.g. the pinned ceiling printed by
    /// `bench transfer`); default: the host copy rate measured here.
    #[arg(long)]
    ceiling_gbps: Option<f64>,
    /// Skip the LFU rows.
    #[arg(long)]
    no_lfu: bool,
    /// Budgets to compare, comma-separated.
    #[arg(long, default_value = "100%,50%,20%", value_delimiter = ',')]
    budgets: Vec<String>,
    /// Decode steps per configuration.
    #[arg(long, default_value_t = 32)]
    steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Seed of the workload.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Probability that a sequence repeats its previous token.
    #[arg(long, default_value_t = 0.5)]
    locality: f64,
    /// Compute threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Emulate a host→device link of this many GB/s (CPU copies are memcpys otherwise).
    #[arg(long)]
    link_gbps: Option<f64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `bench decode`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let w = Workload {
        steps: args.steps,
        batch: args.batch,
        tokens_per_step: 1,
        seed: args.seed,
        locality: args.locality,
    };
    let opts = moe_offload::bench::DecodeOptions {
        device: args.device,
        transfer: args.transfer,
        threads: args.threads,
        link_bytes_per_second: args.link_gbps.map(|g| g * 1e9),
        ceiling_bytes_per_second: args.ceiling_gbps.map(|g| g * 1e9),
        lfu: !args.no_lfu,
    };
    let report = moe_offload::bench::decode(&args.model, &args.budgets, &w, &opts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}
