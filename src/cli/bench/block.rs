//! `moe-offload bench block`: steady-state time of one forward of an MoE block.

use std::path::PathBuf;

use moe_offload::block::bench::bench_block;
use moe_offload::block::io::backend_for;
use moe_offload::{Checkpoint, ModelSpec};

/// Arguments of `bench block`.
#[derive(clap::Args)]
pub struct Args {
    /// Model folder.
    #[arg(long)]
    model: PathBuf,
    /// Block prefix (default: the first MoE block).
    #[arg(long)]
    prefix: Option<String>,
    /// Tokens per forward.
    #[arg(long)]
    tokens: usize,
    /// Timed iterations (the median is reported).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Untimed warm-up iterations.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Compute device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Print `{"tokens", "median_ms", "gflops", "weight_gbps"}` as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `bench block`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let backend = backend_for(&args.device, args.threads)?;
    let ckpt = Checkpoint::open(&args.model)?;
    let spec = ModelSpec::from_checkpoint(&ckpt)?;
    let block = match &args.prefix {
        Some(p) => spec.block(p)?,
        None => spec
            .blocks
            .first()
            .ok_or_else(|| anyhow::anyhow!("{} has no MoE block", args.model.display()))?,
    };
    let r =
        bench_block(&ckpt, &spec, block, backend.as_ref(), args.tokens, args.warmup, args.iters)?;
    if args.json {
        let v = serde_json::json!({
            "tokens": r.tokens,
            "median_ms": r.median_ms,
            "gflops": r.gflops,
            "weight_gbps": r.weight_gbps,
        });
        println!("{v}");
    } else {
        println!(
            "{} on {}: {} tokens, median {:.3} ms over {} iters, {:.1} GFLOP/s, {:.2} GB/s of expert weights ({} bytes)",
            block.prefix,
            backend.name(),
            r.tokens,
            r.median_ms,
            r.iters,
            r.gflops,
            r.weight_gbps,
            r.weight_bytes
        );
    }
    Ok(())
}
