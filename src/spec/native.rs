//! Native moe-offload families (`glam`, `pangu_sigma`): config fields and tensor names, as
//! documented in `docs/FORMAT.md`.

use crate::dtype::DType;
use crate::error::Result;
use crate::ffn::FfnKind;
use crate::routing::{Capacity, RouterSpec};

use super::{BlockSpec, Config, ExpertTensors, Family, ModelSpec};

/// `model_type` of native GShard/GLaM top-2 models.
pub const NATIVE_GLAM: &str = "glam";
/// `model_type` of native PanGu-Σ RRE models.
pub const NATIVE_PANGU: &str = "pangu_sigma";

/// Checkpoint prefix of native MoE block `layer`.
pub fn block_prefix(layer: usize) -> String {
    format!("layers.{layer}.moe")
}

/// Tensor names of expert `e` of a native block.
pub fn expert_tensors(prefix: &str, e: usize, ffn: FfnKind, bias: bool) -> ExpertTensors {
    let gate = ffn.is_glu().then_some("gate");
    ExpertTensors::named(&format!("{prefix}.experts.{e}"), gate, "up", "down", bias)
}

/// Builds the spec of a native model.
pub fn build(family: Family, cfg: &Config) -> Result<ModelSpec> {
    let hidden = cfg.usize("hidden_size")?;
    let ffn_dim = cfg.usize("intermediate_size")?;
    let layers = cfg.usize("num_layers")?;
    let ffn = FfnKind::parse(cfg.opt_str("expert_ffn")?.unwrap_or("swiglu"))?;
    let bias = cfg.bool_or("expert_bias", false)?;
    let vocab = cfg.opt_usize("vocab_size")?;
    let mut domain_ids = None;
    let (router, num_experts) = match family {
        Family::Glam => {
            let e = cfg.usize("num_experts")?;
            if e < 2 {
                return Err(cfg.error("num_experts must be at least 2 for top-2 routing"));
            }
            let capacity =
                match (cfg.opt_usize("expert_capacity")?, cfg.opt_f64("capacity_fraction")?) {
                    (Some(_), Some(_)) => {
                        return Err(
                            cfg.error("give expert_capacity or capacity_fraction, not both")
                        );
                    }
                    (Some(c), None) => Some(Capacity::Fixed(c)),
                    (None, Some(f)) if f > 0.0 => Some(Capacity::Fraction(f)),
                    (None, Some(f)) => {
                        return Err(cfg.error(format!("capacity_fraction = {f} must be positive")));
                    }
                    (None, None) => None,
                };
            let router = RouterSpec::GShardTop2 {
                capacity,
                normalize_before_dropping: cfg
                    .bool_or("normalize_router_prob_before_dropping", false)?,
                batch_prioritized: cfg.bool_or("batch_prioritized_routing", false)?,
            };
            (router, e)
        }
        Family::PanguSigma => {
            let d = cfg.usize("num_domains")?;
            let k = cfg.usize("experts_per_domain")?;
            let v = cfg.usize("vocab_size")?;
            if d == 0 || k == 0 || v == 0 {
                return Err(
                    cfg.error("num_domains, experts_per_domain and vocab_size must be positive")
                );
            }
            let ids = cfg.usize_list("domain_ids")?;
            if !ids.is_empty() {
                if ids.len() != d {
                    return Err(cfg.error(format!(
                        "domain_ids lists {} domains but num_domains is {d}",
                        ids.len()
                    )));
                }
                domain_ids = Some(ids);
            }
            (RouterSpec::Rre { num_domains: d, experts_per_domain: k, vocab_size: v }, d * k)
        }
        _ => unreachable!("HF families are built in hf.rs"),
    };
    let blocks = (0..layers)
        .map(|l| {
            let p = block_prefix(l);
            let rre = router.is_rre();
            BlockSpec {
                index: l,
                prefix: p.clone(),
                router: router.clone(),
                router_weight: (!rre).then(|| format!("{p}.router.weight")),
                router_bias: None,
                score_correction_bias: None,
                rre_map: rre.then(|| format!("{p}.rre_map")),
                ffn,
                ffn_dim,
                experts: (0..num_experts).map(|e| expert_tensors(&p, e, ffn, bias)).collect(),
                shared: None,
                expert_bytes: 0,
                shared_expert_bytes: 0,
            }
        })
        .collect();
    Ok(ModelSpec {
        family,
        hidden_size: hidden,
        dtype: DType::F32,
        blocks,
        vocab_size: vocab,
        domain_ids,
    })
}
