//! `moe-offload sim`: simulate offload policies on a routing trace (a file, or generated) and
//! print, save (`--json`) and plot (`--plot`) hit rates and predicted tokens/s per budget.

use std::path::PathBuf;

use anyhow::Context;
use moe_offload::cache::PolicyKind;
use moe_offload::sim::{
    CostModel, GenConfig, Generator, ModelShape, Prefetch, RreGen, SimOptions, TraceReader,
    TraceWriter, plot::plot, simulate,
};

/// Arguments of `sim`.
#[derive(clap::Args)]
pub struct Args {
    /// A routing trace (JSON Lines, docs/TRACE.md) to replay.
    #[arg(long, conflicts_with = "generate")]
    pub trace: Option<PathBuf>,
    /// Generate a synthetic trace instead (see --shape, --zipf, --locality, --layer-corr, --rre-domains).
    #[arg(long = "gen")]
    pub generate: bool,
    /// Generator options (with --gen).
    #[command(flatten)]
    pub gen_opts: Box<GenArgs>,
    /// Policies, comma-separated: lru, lfu, static, belady.
    #[arg(long, default_value = "lru,lfu,static,belady", value_delimiter = ',')]
    pub policies: Vec<String>,
    /// Budgets, comma-separated: percentages of all expert bytes or sizes (2GiB, 512MiB, 1.5GB).
    #[arg(long, default_value = "10%,25%,50%", value_delimiter = ',')]
    pub budgets: Vec<String>,
    /// Host → device bandwidth in bytes/s.
    #[arg(long, default_value_t = 55e9)]
    pub bandwidth: f64,
    /// Expert compute: milliseconds per token, for an expert of --compute-ref-bytes (other sizes
    /// scale linearly). Default: a Mixtral expert on an H200 (DESIGN.md).
    #[arg(long, default_value_t = 3e-4)]
    pub compute_ms_per_token: f64,
    /// Expert compute: fixed milliseconds per expert call, for an expert of --compute-ref-bytes.
    #[arg(long, default_value_t = 0.1)]
    pub compute_ms_fixed: f64,
    /// The expert size (bytes) the compute times refer to.
    #[arg(long, default_value_t = moe_offload::sim::replay::MIXTRAL_EXPERT_BYTES)]
    pub compute_ref_bytes: f64,
    /// Prefetch: none, or next (the next block's experts, exact from the trace).
    #[arg(long, default_value = "none")]
    pub prefetch: String,
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Plot hit rate and tokens/s against budget (.svg or .png).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Options of generated traces.
#[derive(clap::Args)]
pub struct GenArgs {
    /// Model shape of a generated trace: cpm2-198b, deepseek-v3, mixtral-8x7b, glam-64e.
    #[arg(long)]
    pub shape: Option<String>,
    /// Explicit shape: MoE blocks.
    #[arg(long)]
    pub blocks: Option<usize>,
    /// Explicit shape: experts per block.
    #[arg(long)]
    pub experts: Option<usize>,
    /// Explicit shape: experts per token.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Explicit shape: bytes per expert.
    #[arg(long)]
    pub expert_bytes: Option<u64>,
    /// Explicit shape: hidden size (informational).
    #[arg(long, default_value_t = 4096)]
    pub hidden: usize,
    /// Generated decode steps.
    #[arg(long, default_value_t = 200)]
    pub steps: u64,
    /// Generated tokens per step.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Generator seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Zipf exponent of expert popularity (of token ids with RRE); 0 = uniform.
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Probability that a token's experts repeat from the previous step.
    #[arg(long, default_value_t = 0.5)]
    pub locality: f64,
    /// Probability that a token's expert follows from its expert in the previous block.
    #[arg(long, default_value_t = 0.0)]
    pub layer_corr: f64,
    /// RRE routing (PanGu-Σ) with this many domains.
    #[arg(long)]
    pub rre_domains: Option<usize>,
    /// RRE vocabulary size.
    #[arg(long, default_value_t = 32000)]
    pub vocab: usize,
    /// Also write the generated trace to this file.
    #[arg(long)]
    pub trace_out: Option<PathBuf>,
}

fn gen_config(a: &GenArgs) -> anyhow::Result<GenConfig> {
    let shape = match (&a.shape, a.blocks, a.experts) {
        (Some(s), None, None) => ModelShape::preset(s)?,
        (None, Some(b), Some(e)) => ModelShape::uniform(
            "custom",
            b,
            e,
            a.top_k.unwrap_or(2),
            a.expert_bytes.unwrap_or(1 << 20),
            a.hidden,
        )?,
        _ => anyhow::bail!(
            "--gen needs either --shape NAME or --blocks N --experts N [--top-k K --expert-bytes B]"
        ),
    };
    let rre = a.rre_domains.map(|domains| RreGen { domains, vocab: a.vocab });
    let cfg = GenConfig {
        shape,
        steps: a.steps,
        batch: a.batch,
        seed: a.seed,
        zipf: a.zipf,
        locality: a.locality,
        layer_corr: a.layer_corr,
        rre,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Runs `sim`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let policies =
        a.policies.iter().map(|p| p.parse::<PolicyKind>()).collect::<Result<Vec<_>, _>>()?;
    let prefetch = match a.prefetch.as_str() {
        "none" => Prefetch::None,
        "next" => Prefetch::Next,
        other => anyhow::bail!("unknown --prefetch {other:?} (valid: none, next)"),
    };
    let opts = SimOptions {
        cost: CostModel {
            bandwidth: a.bandwidth,
            compute_fixed_s: a.compute_ms_fixed * 1e-3,
            compute_per_token_s: a.compute_ms_per_token * 1e-3,
            reference_bytes: a.compute_ref_bytes,
        },
        prefetch,
    };
    let report = match (&a.trace, a.generate) {
        (Some(path), false) => simulate(|| TraceReader::open(path), &policies, &a.budgets, &opts)?,
        (None, true) => {
            let cfg = gen_config(&a.gen_opts)?;
            if let Some(out) = &a.gen_opts.trace_out {
                let mut g = Generator::new(cfg.clone())?;
                let mut w = TraceWriter::create(out, g.header())?;
                for rec in &mut g {
                    w.write_record(&rec)?;
                }
                w.finish()?;
            }
            simulate(|| Generator::new(cfg.clone()), &policies, &a.budgets, &opts)?
        }
        _ => {
            anyhow::bail!("give either --trace FILE or --gen (with --shape or --blocks/--experts)")
        }
    };
    print!("{}", report.table());
    if let Some(p) = &a.json {
        report.write_json(p).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &a.plot {
        plot(&report, p)?;
    }
    Ok(())
}
