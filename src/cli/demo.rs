//! `moe-offload demo` (first version): makes sure the demo model exists (generates it when
//! absent or different), prints its summary and how a sample batch routes through its blocks —
//! the skew that makes an expert cache worth having. The offload-engine issue replaces this
//! with a budgeted run.

use std::path::PathBuf;

use indicatif::ProgressBar;
use moe_offload::generate::{self, GenOptions, popularity};
use moe_offload::inspect::{InspectReport, human_bytes};
use moe_offload::{Checkpoint, ModelSpec};

/// Arguments of `demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Where the demo model lives (generated there if absent).
    #[arg(long, default_value = "target/moe-offload-demo/demo-glam")]
    dir: PathBuf,
    /// Tokens in the sample batch.
    #[arg(long, default_value_t = 256)]
    tokens: usize,
    /// Seed of the sample batch.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Runs `demo`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let opts = GenOptions::preset("demo-glam")?;
    let bar = ProgressBar::new(opts.total_bytes());
    let start = std::time::Instant::now();
    let made = generate::ensure_model(&opts, &args.dir, &|done, _| bar.set_position(done))?;
    bar.finish_and_clear();
    if made {
        println!("generated {} in {:.1} s", args.dir.display(), start.elapsed().as_secs_f64());
    } else {
        println!("using {} (already generated)", args.dir.display());
    }
    let ckpt = Checkpoint::open(&args.dir)?;
    let spec = ModelSpec::from_checkpoint(&ckpt)?;
    println!("{}\n", InspectReport::new(&spec));

    let pops = popularity::sample_popularity(&ckpt, &spec, args.tokens, args.seed)?;
    let experts = spec.blocks.first().map(|b| b.num_experts()).unwrap_or(0);
    let budget_experts = experts / 5;
    println!(
        "routing of a sample batch of {} tokens (unit-variance hidden states, softmax top-2):",
        args.tokens
    );
    if let Some(first) = pops.first() {
        for (t, c) in first.choices.iter().take(4).enumerate() {
            let desc: Vec<String> = c.iter().map(|(e, w)| format!("expert {e} ({w:.2})")).collect();
            println!("  {} token {t}: {}", first.prefix, desc.join(", "));
        }
    }
    println!(
        "{:<16} {:>7} {:>24} {:>9}  most chosen experts",
        "block",
        "unused",
        format!("top {budget_experts} experts' share"),
        "top-1"
    );
    for p in &pops {
        let mut order: Vec<usize> = (0..p.counts.len()).collect();
        order.sort_by(|&a, &b| p.counts[b].cmp(&p.counts[a]).then(a.cmp(&b)));
        let top: Vec<String> =
            order.iter().take(4).map(|&e| format!("{e}×{}", p.counts[e])).collect();
        println!(
            "{:<16} {:>7} {:>23.0}% {:>8.0}%  {}",
            p.prefix,
            p.unused(),
            100.0 * p.top_share(budget_experts),
            100.0 * p.top_share(1),
            top.join(" ")
        );
    }
    let total = spec.total_expert_bytes();
    println!(
        "\na 20% budget ({}) holds {budget_experts} of {experts} experts per block; with this skew \
         a cache of the most popular experts would serve the share above without a transfer.",
        human_bytes(total / 5)
    );
    Ok(())
}
