//! `moe-offload gen`: writes a synthetic native model from a preset, with overrides.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use moe_offload::DType;
use moe_offload::ffn::FfnKind;
use moe_offload::generate::{self, GenOptions};
use moe_offload::inspect::human_bytes;
use moe_offload::routing::Capacity;

/// Arguments of `gen`.
#[derive(clap::Args)]
pub struct Args {
    /// Preset: demo-glam, demo-pangu, mixtral-8x7b-shape, glam-64e-shape.
    #[arg(long)]
    preset: String,
    /// Output folder (created; a model already there is replaced).
    #[arg(long)]
    out: PathBuf,
    /// Seed of every value in the model.
    #[arg(long)]
    seed: Option<u64>,
    /// Number of MoE blocks.
    #[arg(long)]
    layers: Option<usize>,
    /// Experts per block (glam) or per domain (pangu_sigma).
    #[arg(long)]
    experts: Option<usize>,
    /// Domains (pangu_sigma).
    #[arg(long)]
    domains: Option<usize>,
    /// Hidden size.
    #[arg(long)]
    hidden: Option<usize>,
    /// Expert intermediate size.
    #[arg(long)]
    ffn: Option<usize>,
    /// Weight dtype: f32, bf16, f16.
    #[arg(long)]
    dtype: Option<String>,
    /// Vocabulary size (the RRE map's length).
    #[arg(long)]
    vocab: Option<usize>,
    /// Expert FFN form: swiglu, geglu, relu, gelu.
    #[arg(long)]
    expert_ffn: Option<String>,
    /// Give experts up/down biases (true/false).
    #[arg(long)]
    expert_bias: Option<bool>,
    /// Fixed expert capacity (glam).
    #[arg(long, conflicts_with = "capacity_fraction")]
    capacity: Option<usize>,
    /// Expert capacity as a fraction of the tokens in a call (glam).
    #[arg(long)]
    capacity_fraction: Option<f64>,
    /// Router skew (glam): 0 = uniform popularity, larger = a few experts take most tokens.
    #[arg(long)]
    skew: Option<f64>,
    /// Seed of the RRE maps (default: derived from --seed).
    #[arg(long)]
    map_seed: Option<u64>,
    /// Shard the safetensors files above this size (e.g. 4GiB, 500MB).
    #[arg(long, default_value = "4GiB")]
    shard_size: String,
}

impl Args {
    /// The preset's options with this command line's overrides.
    fn options(&self) -> anyhow::Result<GenOptions> {
        let mut o = GenOptions::preset(&self.preset)?;
        macro_rules! set {
            ($($arg:ident => $field:ident),*) => { $(if let Some(v) = self.$arg { o.$field = v; })* };
        }
        set!(seed => seed, layers => layers, experts => experts, domains => domains,
             hidden => hidden, ffn => ffn, vocab => vocab, expert_bias => expert_bias,
             skew => router_skew);
        if let Some(d) = &self.dtype {
            o.dtype = DType::parse_weight(d)
                .ok_or_else(|| anyhow::anyhow!("--dtype {d:?}: expected f32, bf16 or f16"))?;
        }
        if let Some(f) = &self.expert_ffn {
            o.expert_ffn = FfnKind::parse(f)?;
        }
        if let Some(c) = self.capacity {
            o.capacity = Some(Capacity::Fixed(c));
        }
        if let Some(f) = self.capacity_fraction {
            o.capacity = Some(Capacity::Fraction(f));
        }
        if self.map_seed.is_some() {
            o.map_seed = self.map_seed;
        }
        o.shard_size = generate::parse_size(&self.shard_size)?;
        o.validate()?;
        Ok(o)
    }
}

/// Runs `gen`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let opts = args.options()?;
    let bar = ProgressBar::new(opts.total_bytes());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, eta {eta})",
        )?,
    );
    let start = std::time::Instant::now();
    let summary = generate::generate(&opts, &args.out, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "wrote {} ({} tensors, {} in {} file{}) in {secs:.1} s: {} × {} experts of {}",
        summary.out.display(),
        summary.tensors,
        human_bytes(summary.data_bytes),
        summary.files.len(),
        if summary.files.len() == 1 { "" } else { "s" },
        opts.layers,
        opts.experts_per_block(),
        human_bytes(summary.expert_bytes),
    );
    Ok(())
}
