//! `moe-offload run`: a synthetic serving workload with experts offloaded under a budget.

use std::path::PathBuf;

use anyhow::Context;
use moe_offload::cache::PolicyKind;
use moe_offload::engine::{EngineOptions, PrefetchMode};
use moe_offload::workload::{self, Workload};

/// Arguments of `run`.
#[derive(clap::Args)]
pub struct Args {
    /// Model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Compute device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CUDA host→device path for misses: auto, registered, pinned[:N], pageable.
    #[arg(long, default_value = "auto")]
    pub transfer: String,
    /// Expert cache budget: bytes (`2GiB`) or a share of all expert bytes (`20%`). Without it
    /// the model runs fully resident.
    #[arg(long)]
    pub budget: Option<String>,
    /// Eviction policy: lru, lfu, static, belady.
    #[arg(long, default_value = "lru")]
    pub policy: String,
    /// Prefetch: none, gate (learned routers), exact (RRE).
    #[arg(long, default_value = "none")]
    pub prefetch: String,
    /// The naive baseline: fetch each needed expert synchronously, then compute; no cache.
    #[arg(long)]
    pub naive: bool,
    /// Decode steps.
    #[arg(long, default_value_t = 16)]
    pub steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens per sequence per step (a prefill chunk) instead of 1.
    #[arg(long)]
    pub prefill: Option<usize>,
    /// Seed of the workload.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Probability that a sequence repeats its previous token.
    #[arg(long, default_value_t = 0.5)]
    pub locality: f64,
    /// Compute threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Copy worker threads.
    #[arg(long, default_value_t = 1)]
    pub copy_threads: usize,
    /// Emulate a host→device link of this many GB/s (CPU copies are memcpys otherwise).
    #[arg(long)]
    pub link_gbps: Option<f64>,
    /// A routing trace of this workload (`run --trace-out`): Belady's future and Static's
    /// pinned set come from it instead of from a recorded first pass / warm-up.
    #[arg(long)]
    pub trace_in: Option<PathBuf>,
    /// Write the stats as JSON here.
    #[arg(long)]
    pub stats_json: Option<PathBuf>,
    /// Write the access trace (JSON Lines, docs/TRACE.md) here.
    #[arg(long)]
    pub trace_out: Option<PathBuf>,
    /// Write the final hidden states (safetensors, tensor `hidden`) here.
    #[arg(long)]
    pub save_output: Option<PathBuf>,
}

impl Args {
    /// Engine options and workload from the arguments.
    pub fn to_options(&self) -> anyhow::Result<(EngineOptions, Workload)> {
        let opts = EngineOptions {
            device: self.device.clone(),
            transfer: self.transfer.clone(),
            budget: self.budget.clone(),
            policy: self.policy.parse::<PolicyKind>()?,
            prefetch: self.prefetch.parse::<PrefetchMode>()?,
            threads: self.threads,
            copy_threads: self.copy_threads,
            naive: self.naive,
            link_bytes_per_second: self.link_gbps.map(|g| g * 1e9),
            ..EngineOptions::default()
        };
        let w = Workload {
            steps: self.steps,
            batch: self.batch,
            tokens_per_step: self.prefill.unwrap_or(1),
            seed: self.seed,
            locality: self.locality,
        };
        Ok((opts, w))
    }
}

/// Runs `run`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let (mut opts, w) = args.to_options()?;
    let spec = if args.trace_in.is_some() || args.trace_out.is_some() {
        let ckpt = moe_offload::Checkpoint::open(&args.model)?;
        Some(moe_offload::ModelSpec::from_checkpoint(&ckpt)?)
    } else {
        None
    };
    if let (Some(t), Some(spec)) = (&args.trace_in, &spec) {
        let keys = workload::accesses_from_trace(t, spec)?;
        match opts.policy {
            PolicyKind::Belady => opts.future = Some(keys),
            PolicyKind::Static => opts.pinned = Some(workload::most_used(&keys)),
            _ => {}
        }
    }
    let mut trace = match (&args.trace_out, &spec) {
        (Some(p), Some(spec)) => Some(workload::TraceObserver::create(p, &args.model, spec, &w)?),
        _ => None,
    };
    let out = workload::run_model(
        &args.model,
        opts.clone(),
        &w,
        trace.as_mut().map(|t| t as &mut dyn workload::RunObserver),
    )?;
    if let Some(t) = trace {
        t.finish()?;
    }
    print!("{}", workload::summary_table(&args.model, &opts, &w, &out.stats));
    if let Some(p) = &args.stats_json {
        let json = serde_json::to_string_pretty(&out.stats)?;
        std::fs::write(p, json + "\n").with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.save_output {
        let hidden = moe_offload::io::OwnedTensor::f32(out.shape.to_vec(), &out.hidden)?;
        moe_offload::io::write_tensors(p, vec![("hidden".to_string(), hidden)])?;
    }
    Ok(())
}
