//! `moe-offload block`: compute MoE blocks on inputs read from a safetensors file.

use std::path::PathBuf;

use anyhow::Context;
use moe_offload::block::io::{backend_for, run_file};
use moe_offload::{Checkpoint, ModelSpec};

/// Arguments of `block`.
#[derive(clap::Args)]
pub struct Args {
    /// Model folder (config.json + safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Safetensors file with `<prefix>.input` tensors ([batch, tokens, hidden] or
    /// [tokens, hidden]; f32/bf16/f16), plus `<prefix>.token_ids` and `<prefix>.domain` for RRE.
    #[arg(long)]
    input: PathBuf,
    /// Where to write `<prefix>.output`, `<prefix>.expert_ids`, `<prefix>.expert_weights`.
    #[arg(long)]
    output: PathBuf,
    /// Compute device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// Runs `block`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let backend = backend_for(&args.device, args.threads)?;
    let ckpt = Checkpoint::open(&args.model)?;
    let spec = ModelSpec::from_checkpoint(&ckpt)?;
    let results = run_file(&ckpt, &spec, backend.as_ref(), &args.input, &args.output)
        .with_context(|| format!("block on {}", args.input.display()))?;
    for r in &results {
        println!("{}: shape {:?}, {} assignment(s) dropped", r.prefix, r.shape, r.dropped);
    }
    println!("wrote {}", args.output.display());
    Ok(())
}
