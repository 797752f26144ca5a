//! `moe-offload inspect`: family, hidden size, dtype and every MoE block of a model.

use std::path::PathBuf;

use anyhow::Context;
use moe_offload::inspect::InspectReport;
use moe_offload::{Checkpoint, ModelSpec};

/// Arguments of `inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// Model folder (HF or native).
    #[arg(long)]
    model: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `inspect`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let ckpt = Checkpoint::open(&args.model)?;
    let spec = ModelSpec::from_checkpoint(&ckpt)?;
    let report = InspectReport::new(&spec);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).context("serialising the report")?);
    } else {
        println!("{report}");
    }
    Ok(())
}
