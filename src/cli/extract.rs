//! `moe-offload extract`: one domain of a PanGu-Σ (RRE) model as a smaller model.

use std::path::PathBuf;

/// Arguments of `extract`.
#[derive(clap::Args)]
pub struct Args {
    /// The pangu_sigma model folder.
    #[arg(long)]
    model: PathBuf,
    /// The domain to keep (its original id).
    #[arg(long, allow_negative_numbers = true)]
    domain: i64,
    /// Output folder for the sub-model.
    #[arg(long)]
    out: PathBuf,
}

/// Runs `extract`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let r = moe_offload::extract::extract_domain(&args.model, args.domain, &args.out)?;
    println!(
        "domain {}: {} experts per block, {} tensors, {} bytes written to {}",
        r.domain,
        r.experts_per_domain,
        r.tensors,
        r.bytes,
        r.out.display()
    );
    Ok(())
}
