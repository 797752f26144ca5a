//! `moe-offload demo`: the README's main job. Makes sure the demo model exists (generates it
//! when absent or different), then runs the same decode workload fully resident, with a 20%
//! expert budget (LRU, LFU, LRU + gate prefetch) and with the naive method, and prints the
//! comparison, including whether every offloaded output equals the resident one bit for bit.

use std::path::PathBuf;

use indicatif::ProgressBar;
use moe_offload::generate::{self, GenOptions};
use moe_offload::inspect::{InspectReport, human_bytes};
use moe_offload::workload::Workload;
use moe_offload::{Checkpoint, ModelSpec};

/// Arguments of `demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Where the demo model lives (generated there if absent).
    #[arg(long, default_value = "target/moe-offload-demo/demo-glam")]
    dir: PathBuf,
    /// Expert budget of the offloaded runs.
    #[arg(long, default_value = "20%")]
    budget: String,
    /// Decode steps.
    #[arg(long, default_value_t = 32)]
    steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Rate of the emulated host→device link of the second comparison, GB/s. A CPU "transfer"
    /// is a memcpy from the page cache, 10+ GB/s; a link this slow gives the copy/compute
    /// ratio of a GPU behind PCIe, where offloading decisions matter.
    #[arg(long, default_value_t = 1.0)]
    link_gbps: f64,
    /// Seed of the workload.
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
    let report = InspectReport::new(&spec);
    let total = spec.total_expert_bytes();
    println!(
        "{}: {} MoE blocks × {} experts ({} each), top-{}, {} of experts in all",
        report.family,
        report.blocks.len(),
        report.blocks.first().map_or(0, |b| b.num_experts),
        human_bytes(spec.max_expert_bytes()),
        report.blocks.first().map_or(0, |b| b.top_k),
        human_bytes(total)
    );
    let w = Workload {
        steps: args.steps,
        batch: args.batch,
        tokens_per_step: 1,
        seed: args.seed,
        locality: 0.5,
    };
    println!(
        "decode: {} steps × {} sequences, expert budget {} (the cache holds a fraction of the experts; misses are copied from the mapped checkpoint by a copy thread while resident experts compute)\n",
        w.steps, w.batch, args.budget
    );
    let budgets = [args.budget.clone()];
    for link in [None, Some(args.link_gbps * 1e9)] {
        let result = moe_offload::bench::decode(
            &args.dir,
            &budgets,
            &w,
            &moe_offload::bench::DecodeOptions {
                link_bytes_per_second: link,
                ..Default::default()
            },
        )?;
        print!("{result}");
        if result.rows.iter().any(|r| !r.matches_resident) {
            anyhow::bail!("an offloaded run differs from the resident run");
        }
        println!();
    }
    println!(
        "Every offloaded run produced the resident run's hidden states bit for bit. With memcpy \
         copies, offloading costs little on the CPU; behind a slow link the cache's hit rate and \
         prefetch decide speed, as on a GPU behind PCIe (see README, GPU)."
    );
    Ok(())
}
