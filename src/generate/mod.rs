//! Model generation: writes synthetic native models (`glam`, `pangu_sigma`) from presets,
//! deterministically from a seed, streamed to disk tensor by tensor (never the whole model in
//! RAM), sharded above a size. The format is documented in `docs/FORMAT.md`.
//!
//! Every tensor's values come from its own SplitMix64 stream derived from (seed, tensor name,
//! chunk index), so neither the shard layout nor the writing order nor the thread count changes a
//! single value.

mod plan;
pub mod popularity;
mod writer;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

pub use plan::{TensorPlan, plan_tensors};
pub use writer::parse_size;

use crate::checkpoint::{CONFIG_FILE, Checkpoint};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ffn::FfnKind;
use crate::rng::SplitMix64;
use crate::routing::Capacity;
use crate::spec::{Family, ModelSpec};

/// The preset names `gen` knows, in the order `--help` lists them.
pub const PRESETS: [&str; 4] = ["demo-glam", "demo-pangu", "mixtral-8x7b-shape", "glam-64e-shape"];

/// Version of the value generation, recorded in `config.json` as `gen_version`: bump it whenever
/// a change makes the same options produce different values, so that [`ensure_model`] regenerates
/// models written by an older version.
pub const GEN_VERSION: u64 = 1;

/// Default shard size: 4 GiB, as `--shard-size` documents.
pub const DEFAULT_SHARD_SIZE: u64 = 4 << 30;

/// Everything that determines a generated model. Start from [`GenOptions::preset`] and override
/// fields; [`GenOptions::validate`] (called by [`generate`]) checks the combination.
#[derive(Debug, Clone, PartialEq)]
pub struct GenOptions {
    /// Preset name (recorded in `config.json`).
    pub preset: String,
    /// `Family::Glam` (GShard top-2) or `Family::PanguSigma` (RRE).
    pub family: Family,
    /// Seed of every value in the model.
    pub seed: u64,
    /// Number of MoE blocks.
    pub layers: usize,
    /// Hidden size (model width).
    pub hidden: usize,
    /// Expert intermediate size.
    pub ffn: usize,
    /// Experts per block (`glam`) or per domain (`pangu_sigma`).
    pub experts: usize,
    /// Domains (`pangu_sigma` only; ignored for `glam`).
    pub domains: usize,
    /// Vocabulary size (the RRE map's length; informational for `glam`).
    pub vocab: usize,
    /// Dtype of every float tensor.
    pub dtype: DType,
    /// Expert FFN form.
    pub expert_ffn: FfnKind,
    /// Whether experts have up/down biases.
    pub expert_bias: bool,
    /// Expert capacity of `glam` blocks (`Fixed` or `Fraction`), none by default.
    pub capacity: Option<Capacity>,
    /// Router skew of `glam` blocks: expert `e` of a block has its router row scaled by
    /// `exp(-skew · rank(e) / (E − 1))` for a seeded per-block ranking, so some experts are
    /// popular (0 = statistically uniform routing).
    pub router_skew: f64,
    /// Seed of the RRE maps (`pangu_sigma`); `None` derives it from `seed`.
    pub map_seed: Option<u64>,
    /// Shard files above this many bytes of tensor data.
    pub shard_size: u64,
}

impl GenOptions {
    /// The options of a preset (see [`PRESETS`] and `docs/FORMAT.md`).
    ///
    /// * `demo-glam`: 8 blocks × 32 experts, hidden 256, ffn 512, SwiGLU, f32 (1.5 MiB per
    ///   expert, 384 MiB in all): experts large enough that moving them dominates bookkeeping, as
    ///   in real offloading, yet the model writes in about a second and a 20% budget holds only
    ///   51 of its 256 experts. Routing is skewed (skew 1.5: in a
    ///   sample the 6 most chosen experts of a block take about half of its assignments).
    /// * `demo-pangu`: RRE, 8 domains × 4 experts, vocab 1024, 4 blocks, hidden 256, ffn 512,
    ///   GELU experts with biases (as PanGu-α's FFN), f32.
    /// * `mixtral-8x7b-shape`: Mixtral-8x7B expert dims (hidden 4096, ffn 14336, 8 experts,
    ///   top-2, SwiGLU, bf16: 352 MB per expert) in the native `glam` family, whose GShard top-2
    ///   with no capacity is exactly Mixtral's softmax top-2 with renormalised weights; 4 blocks.
    /// * `glam-64e-shape`: GLaM 64B/64E expert dims (d_model 8192, d_ff 32768, 64 experts,
    ///   GEGLU, bf16: 1.5 GiB per expert); 2 blocks.
    pub fn preset(name: &str) -> Result<GenOptions> {
        let glam =
            |preset: &str, layers, hidden, ffn, experts, dtype, ffn_kind, vocab| GenOptions {
                preset: preset.to_string(),
                family: Family::Glam,
                seed: 0,
                layers,
                hidden,
                ffn,
                experts,
                domains: 1,
                vocab,
                dtype,
                expert_ffn: ffn_kind,
                expert_bias: false,
                capacity: None,
                router_skew: 1.5,
                map_seed: None,
                shard_size: DEFAULT_SHARD_SIZE,
            };
        let swiglu = FfnKind::parse("swiglu")?;
        Ok(match name {
            "demo-glam" => glam(name, 8, 256, 512, 32, DType::F32, swiglu, 1024),
            "mixtral-8x7b-shape" => glam(name, 4, 4096, 14336, 8, DType::BF16, swiglu, 32000),
            "glam-64e-shape" => {
                glam(name, 2, 8192, 32768, 64, DType::BF16, FfnKind::parse("geglu")?, 256_000)
            }
            "demo-pangu" => GenOptions {
                family: Family::PanguSigma,
                domains: 8,
                expert_ffn: FfnKind::parse("gelu")?,
                expert_bias: true,
                router_skew: 0.0,
                ..glam(name, 4, 256, 512, 4, DType::F32, swiglu, 1024)
            },
            other => {
                return Err(Error::InvalidOption(format!(
                    "unknown preset {other:?} (known: {})",
                    PRESETS.join(", ")
                )));
            }
        })
    }

    /// Routed experts per block: `experts` (glam) or `domains × experts` (pangu_sigma).
    pub fn experts_per_block(&self) -> usize {
        match self.family {
            Family::PanguSigma => self.domains * self.experts,
            _ => self.experts,
        }
    }

    /// The RRE map seed: given, or derived from the model seed.
    pub fn resolved_map_seed(&self) -> u64 {
        self.map_seed.unwrap_or_else(|| SplitMix64::derive(self.seed, tag("rre_map_seed")))
    }

    /// Checks that the options describe a model the native format and the readers accept.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidOption(m));
        if !matches!(self.family, Family::Glam | Family::PanguSigma) {
            return bad(format!(
                "gen writes native glam or pangu_sigma models, not {:?}",
                self.family
            ));
        }
        for (what, v) in [("layers", self.layers), ("hidden", self.hidden), ("ffn", self.ffn)] {
            if v == 0 {
                return bad(format!("--{what} must be positive"));
            }
        }
        if !self.dtype.is_float_weight() {
            return bad(format!("--dtype {} is not a weight dtype (f32, bf16, f16)", self.dtype));
        }
        match self.family {
            Family::Glam => {
                if self.experts < 2 {
                    return bad(format!(
                        "--experts {} is too few: glam routes top-2 (GShard), so it needs at least 2",
                        self.experts
                    ));
                }
                if !(self.router_skew.is_finite() && self.router_skew >= 0.0) {
                    return bad(format!("--skew {} must be a finite number ≥ 0", self.router_skew));
                }
                match self.capacity {
                    None | Some(Capacity::Fixed(_)) => {}
                    Some(Capacity::Fraction(f)) if f > 0.0 && f.is_finite() => {}
                    Some(c) => return bad(format!("capacity {c:?} is not supported by glam")),
                }
            }
            _ => {
                if self.experts == 0 || self.domains == 0 {
                    return bad("--experts and --domains must be positive".into());
                }
                if self.vocab == 0 || self.vocab > i32::MAX as usize {
                    return bad(format!("--vocab {} must be in 1..=2^31-1", self.vocab));
                }
                if self.capacity.is_some() {
                    return bad("RRE (pangu_sigma) blocks have no capacity".into());
                }
            }
        }
        if self.shard_size == 0 {
            return bad("--shard-size must be positive".into());
        }
        // Tensor byte sizes must fit in u64 and usize on this machine.
        let elems = (self.ffn as u128) * (self.hidden as u128);
        if elems * 4 > usize::MAX as u128 / 2 {
            return bad(format!("--hidden {} × --ffn {} is too large", self.hidden, self.ffn));
        }
        Ok(())
    }

    /// The `config.json` this model is written with: exactly the fields `src/spec/native.rs`
    /// reads, plus `dtype`, `preset`, `gen_version`, `seed`, `vocab_size`, `router_skew` (glam) and
    /// `map_seed` (pangu_sigma), which readers ignore and which record how the model was made.
    pub fn config_json(&self) -> Value {
        let mut c = json!({
            "model_type": self.family.model_type(),
            "preset": self.preset,
            "gen_version": GEN_VERSION,
            "seed": self.seed,
            "dtype": self.dtype.name(),
            "hidden_size": self.hidden,
            "intermediate_size": self.ffn,
            "num_layers": self.layers,
            "expert_ffn": self.expert_ffn.name(),
            "expert_bias": self.expert_bias,
            "vocab_size": self.vocab,
        });
        let Some(obj) = c.as_object_mut() else { return c };
        match self.family {
            Family::PanguSigma => {
                obj.insert("num_domains".into(), json!(self.domains));
                obj.insert("experts_per_domain".into(), json!(self.experts));
                obj.insert("map_seed".into(), json!(self.resolved_map_seed()));
            }
            _ => {
                obj.insert("num_experts".into(), json!(self.experts));
                obj.insert("normalize_router_prob_before_dropping".into(), json!(false));
                obj.insert("batch_prioritized_routing".into(), json!(false));
                obj.insert("router_skew".into(), json!(self.router_skew));
                match self.capacity {
                    Some(Capacity::Fixed(n)) => {
                        obj.insert("expert_capacity".into(), json!(n));
                    }
                    Some(Capacity::Fraction(f)) => {
                        obj.insert("capacity_fraction".into(), json!(f));
                    }
                    _ => {}
                }
            }
        }
        c
    }

    /// Bytes of one routed expert.
    pub fn expert_bytes(&self) -> u64 {
        let d = self.dtype.size() as u64;
        let (h, f) = (self.hidden as u64, self.ffn as u64);
        let mats = if self.expert_ffn.is_glu() { 3 } else { 2 };
        mats * h * f * d + if self.expert_bias { (h + f) * d } else { 0 }
    }

    /// Bytes of tensor data the model will hold (all shards, headers excluded).
    pub fn total_bytes(&self) -> u64 {
        plan_tensors(self).iter().map(|t| t.byte_len()).sum()
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct GenSummary {
    /// The model folder.
    pub out: PathBuf,
    /// The safetensors files written, in shard order.
    pub files: Vec<PathBuf>,
    /// Number of tensors.
    pub tensors: usize,
    /// Bytes of tensor data written (headers excluded).
    pub data_bytes: u64,
    /// Bytes of one routed expert.
    pub expert_bytes: u64,
    /// Routed-expert bytes of the whole model.
    pub total_expert_bytes: u64,
}

/// A stable 64-bit tag of a string (FNV-1a), to derive per-tensor streams from names.
pub(crate) fn tag(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01B3))
}

/// Writes the model described by `opts` into folder `out`, created if needed.
///
/// A model that `gen` wrote there before (`config.json`, `model*.safetensors`, the index) is
/// replaced and other files are left alone; a model that `gen` did not write is never replaced
/// (an error). `progress(written, total)` is called as tensor bytes reach the writer.
/// `config.json` is written last, so an interrupted run leaves no loadable half-model.
pub fn generate(opts: &GenOptions, out: &Path, progress: &dyn Fn(u64, u64)) -> Result<GenSummary> {
    opts.validate()?;
    let plan = plan_tensors(opts);
    refuse_foreign_model(out)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    writer::remove_previous_model(out)?;
    let files = writer::write_shards(out, opts, &plan, progress)?;
    let config = opts.config_json();
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::InvalidOption(format!("cannot serialise config: {e}")))?;
    let cfg_path = out.join(CONFIG_FILE);
    std::fs::write(&cfg_path, text + "\n").map_err(|e| Error::io(&cfg_path, e))?;
    let layers = opts.layers as u64;
    Ok(GenSummary {
        out: out.to_path_buf(),
        files,
        tensors: plan.len(),
        data_bytes: plan.iter().map(|t| t.byte_len()).sum(),
        expert_bytes: opts.expert_bytes(),
        total_expert_bytes: opts.expert_bytes() * opts.experts_per_block() as u64 * layers,
    })
}

/// Refuses to write into a folder whose `config.json` was not written by `gen` (it has no
/// `gen_version`): replacing it would delete someone's checkpoint.
fn refuse_foreign_model(out: &Path) -> Result<()> {
    let path = out.join(CONFIG_FILE);
    if !path.exists() {
        return Ok(());
    }
    let ours = crate::checkpoint::read_config(&path)
        .map(|c| c.get("gen_version").is_some())
        .unwrap_or(false);
    if ours {
        Ok(())
    } else {
        Err(Error::InvalidOption(format!(
            "{} holds a model that gen did not write; choose another --out folder",
            out.display()
        )))
    }
}

/// Makes sure folder `out` holds the model of `opts`: generates it when it is absent, does not
/// load, or its `config.json` differs from the one `opts` would write. Returns whether it
/// (re)generated.
pub fn ensure_model(opts: &GenOptions, out: &Path, progress: &dyn Fn(u64, u64)) -> Result<bool> {
    if model_matches(opts, out) {
        return Ok(false);
    }
    generate(opts, out, progress)?;
    Ok(true)
}

/// Whether `out` holds a loadable model whose config is the one `opts` writes.
fn model_matches(opts: &GenOptions, out: &Path) -> bool {
    let Ok(ckpt) = Checkpoint::open(out) else { return false };
    if *ckpt.config() != opts.config_json() {
        return false;
    }
    ModelSpec::from_checkpoint(&ckpt).is_ok()
}
