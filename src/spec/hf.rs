//! Hugging Face families: config fields and tensor layouts as transformers writes them.

use crate::checkpoint::Checkpoint;
use crate::dtype::DType;
use crate::error::Result;
use crate::ffn::{Activation, FfnKind};
use crate::routing::{Capacity, RouterSpec};

use super::{BlockSpec, Config, ExpertTensors, Family, ModelSpec, SharedExpert};

/// Builds the spec of an HF checkpoint (tensors are validated by the caller).
pub fn build(family: Family, cfg: &Config, ckpt: &Checkpoint) -> Result<ModelSpec> {
    let (hidden_size, blocks) = match family {
        Family::Mixtral => mixtral(cfg)?,
        Family::Qwen2Moe | Family::Qwen3Moe => qwen(family, cfg)?,
        Family::DeepseekV3 => deepseek_v3(cfg)?,
        Family::NllbMoe => nllb(cfg)?,
        Family::SwitchTransformers => switch(cfg, ckpt)?,
        Family::Glam | Family::PanguSigma => unreachable!("native families are built in native.rs"),
    };
    Ok(ModelSpec {
        family,
        hidden_size,
        dtype: DType::F32,
        blocks: number(blocks),
        vocab_size: cfg.opt_usize("vocab_size")?,
        domain_ids: None,
    })
}

fn number(mut blocks: Vec<BlockSpec>) -> Vec<BlockSpec> {
    for (i, b) in blocks.iter_mut().enumerate() {
        b.index = i;
    }
    blocks
}

/// A block with a learned router, no biases, and experts named by `expert_prefix(e)`.
fn learned_block(
    prefix: String,
    router: RouterSpec,
    router_weight: String,
    ffn: FfnKind,
    ffn_dim: usize,
    experts: Vec<ExpertTensors>,
) -> BlockSpec {
    BlockSpec {
        index: 0,
        prefix,
        router,
        router_weight: Some(router_weight),
        router_bias: None,
        score_correction_bias: None,
        rre_map: None,
        ffn,
        ffn_dim,
        experts,
        shared: None,
        expert_bytes: 0,
        shared_expert_bytes: 0,
    }
}

fn glu_act(cfg: &Config) -> Result<Activation> {
    Activation::from_hf_name(cfg.opt_str("hidden_act")?.unwrap_or("silu"))
}

/// `model.layers.{L}.block_sparse_moe.{gate.weight, experts.{E}.w1|w2|w3.weight}`; every
/// layer is sparse; softmax top-k, always renormalised.
fn mixtral(cfg: &Config) -> Result<(usize, Vec<BlockSpec>)> {
    let hidden = cfg.usize("hidden_size")?;
    let ffn_dim = cfg.usize("intermediate_size")?;
    let layers = cfg.usize("num_hidden_layers")?;
    let e = cfg.usize("num_local_experts")?;
    let k = cfg.usize("num_experts_per_tok")?;
    check_k(cfg, k, e)?;
    let act = glu_act(cfg)?;
    let blocks = (0..layers)
        .map(|l| {
            let p = format!("model.layers.{l}.block_sparse_moe");
            let experts = (0..e)
                .map(|x| {
                    ExpertTensors::named(&format!("{p}.experts.{x}"), Some("w1"), "w3", "w2", false)
                })
                .collect();
            learned_block(
                p.clone(),
                RouterSpec::SoftmaxTopK { top_k: k, renormalize: true },
                format!("{p}.gate.weight"),
                FfnKind::Glu(act),
                ffn_dim,
                experts,
            )
        })
        .collect();
    Ok((hidden, blocks))
}

fn check_k(cfg: &Config, k: usize, e: usize) -> Result<()> {
    if k == 0 || k > e {
        return Err(cfg.error(format!("num_experts_per_tok = {k} must be in 1..={e}")));
    }
    Ok(())
}

fn proj_expert(prefix: &str) -> ExpertTensors {
    ExpertTensors::named(prefix, Some("gate_proj"), "up_proj", "down_proj", false)
}

/// Qwen2-MoE / Qwen3-MoE: `model.layers.{L}.mlp`; a layer is sparse unless it is in
/// `mlp_only_layers`, and only when `(L + 1) % decoder_sparse_step == 0` (as transformers'
/// Qwen2MoeDecoderLayer). Qwen2 adds `sigmoid(x·shared_expert_gate)·shared_expert(x)`.
fn qwen(family: Family, cfg: &Config) -> Result<(usize, Vec<BlockSpec>)> {
    let hidden = cfg.usize("hidden_size")?;
    let ffn_dim = cfg.usize("moe_intermediate_size")?;
    let layers = cfg.usize("num_hidden_layers")?;
    let e = cfg.usize("num_experts")?;
    let k = cfg.usize("num_experts_per_tok")?;
    check_k(cfg, k, e)?;
    let step = cfg.opt_usize("decoder_sparse_step")?.unwrap_or(1);
    let mlp_only = cfg.usize_list("mlp_only_layers")?;
    let renormalize = cfg.bool_or("norm_topk_prob", false)?;
    let shared_dim = match family {
        Family::Qwen2Moe => cfg.opt_usize("shared_expert_intermediate_size")?.unwrap_or(0),
        _ => 0,
    };
    let act = glu_act(cfg)?;
    let mut blocks = Vec::new();
    for l in 0..layers {
        let sparse = !mlp_only.contains(&l) && step > 0 && (l + 1) % step == 0;
        if !sparse {
            continue;
        }
        let p = format!("model.layers.{l}.mlp");
        let experts = (0..e).map(|x| proj_expert(&format!("{p}.experts.{x}"))).collect();
        let mut b = learned_block(
            p.clone(),
            RouterSpec::SoftmaxTopK { top_k: k, renormalize },
            format!("{p}.gate.weight"),
            FfnKind::Glu(act),
            ffn_dim,
            experts,
        );
        if shared_dim > 0 {
            b.shared = Some(SharedExpert {
                tensors: proj_expert(&format!("{p}.shared_expert")),
                ffn_dim: shared_dim,
                gate_weight: Some(format!("{p}.shared_expert_gate.weight")),
            });
        }
        blocks.push(b);
    }
    Ok((hidden, blocks))
}

/// DeepSeek-V3: layers from `first_k_dense_replace` on (every `moe_layer_freq`-th) are MoE,
/// `model.layers.{L}.mlp` with `gate.e_score_correction_bias` and `shared_experts`.
fn deepseek_v3(cfg: &Config) -> Result<(usize, Vec<BlockSpec>)> {
    let hidden = cfg.usize("hidden_size")?;
    let ffn_dim = cfg.usize("moe_intermediate_size")?;
    let layers = cfg.usize("num_hidden_layers")?;
    let e = cfg.usize("n_routed_experts")?;
    let k = cfg.usize("num_experts_per_tok")?;
    check_k(cfg, k, e)?;
    let n_group = cfg.opt_usize("n_group")?.unwrap_or(1).max(1);
    let topk_group = cfg.opt_usize("topk_group")?.unwrap_or(n_group);
    if e % n_group != 0 || topk_group == 0 || topk_group > n_group {
        return Err(cfg.error(format!(
            "n_group = {n_group} must divide n_routed_experts = {e}, and topk_group = {topk_group} be in 1..=n_group"
        )));
    }
    let renormalize = cfg.bool_or("norm_topk_prob", true)?;
    let scale = cfg.opt_f64("routed_scaling_factor")?.unwrap_or(1.0) as f32;
    let first_dense = cfg.opt_usize("first_k_dense_replace")?.unwrap_or(0);
    let freq = cfg.opt_usize("moe_layer_freq")?.unwrap_or(1).max(1);
    let n_shared = cfg.opt_usize("n_shared_experts")?.unwrap_or(0);
    let act = glu_act(cfg)?;
    let mut blocks = Vec::new();
    for l in first_dense..layers {
        if l % freq != 0 {
            continue;
        }
        let p = format!("model.layers.{l}.mlp");
        let experts = (0..e).map(|x| proj_expert(&format!("{p}.experts.{x}"))).collect();
        let mut b = learned_block(
            p.clone(),
            RouterSpec::GroupedSigmoid {
                top_k: k,
                n_group,
                topk_group,
                renormalize,
                routed_scaling_factor: scale,
            },
            format!("{p}.gate.weight"),
            FfnKind::Glu(act),
            ffn_dim,
            experts,
        );
        b.score_correction_bias = Some(format!("{p}.gate.e_score_correction_bias"));
        if n_shared > 0 {
            b.shared = Some(SharedExpert {
                tensors: proj_expert(&format!("{p}.shared_experts")),
                ffn_dim: ffn_dim * n_shared,
                gate_weight: None,
            });
        }
        blocks.push(b);
    }
    Ok((hidden, blocks))
}

/// NLLB-MoE: encoder then decoder layers; layer `i` is sparse when `(i + 1) % sparse_step == 0`
/// (transformers' NllbMoeEncoder/Decoder). In evaluation the capacity is
/// `ceil(moe_eval_capacity_token_fraction × tokens)` when that fraction is positive, else
/// `expert_capacity`, else `2 × ceil(tokens / experts)` (NllbMoeTop2Router.route_tokens).
fn nllb(cfg: &Config) -> Result<(usize, Vec<BlockSpec>)> {
    let hidden = cfg.usize_any(&["d_model", "hidden_size"])?;
    let e = cfg.usize("num_experts")?;
    if e < 2 {
        return Err(cfg.error("num_experts must be at least 2 for top-2 routing"));
    }
    let act = Activation::from_hf_name(cfg.opt_str("activation_function")?.unwrap_or("relu"))?;
    let fraction = cfg.opt_f64("moe_eval_capacity_token_fraction")?.unwrap_or(0.0);
    let capacity = if fraction > 0.0 {
        Capacity::Fraction(fraction)
    } else if let Some(c) = cfg.opt_usize("expert_capacity")? {
        Capacity::Fixed(c)
    } else {
        Capacity::Factor(2.0)
    };
    if let Some(policy) = cfg.opt_str("second_expert_policy")?
        && policy != "all"
    {
        return Err(cfg.error(format!(
            "second_expert_policy {policy:?} is random at inference; only \"all\" is deterministic and supported"
        )));
    }
    let router = RouterSpec::GShardTop2 {
        capacity: Some(capacity),
        normalize_before_dropping: cfg.bool_or("normalize_router_prob_before_dropping", false)?,
        batch_prioritized: cfg.bool_or("batch_prioritized_routing", false)?,
    };
    let router_bias = cfg.bool_or("router_bias", false)?;
    let mut blocks = Vec::new();
    for side in ["encoder", "decoder"] {
        let layers = cfg.usize(&format!("{side}_layers"))?;
        let ffn_dim = cfg.usize(&format!("{side}_ffn_dim"))?;
        let step = cfg.opt_usize(&format!("{side}_sparse_step"))?.unwrap_or(1);
        for l in 0..layers {
            if step == 0 || (l + 1) % step != 0 {
                continue;
            }
            let p = format!("model.{side}.layers.{l}.ffn");
            let experts = (0..e)
                .map(|x| {
                    ExpertTensors::named(
                        &format!("{p}.experts.expert_{x}"),
                        None,
                        "fc1",
                        "fc2",
                        true,
                    )
                })
                .collect();
            let mut b = learned_block(
                p.clone(),
                router.clone(),
                format!("{p}.router.classifier.weight"),
                FfnKind::Plain(act),
                ffn_dim,
                experts,
            );
            if router_bias {
                b.router_bias = Some(format!("{p}.router.classifier.bias"));
            }
            blocks.push(b);
        }
    }
    Ok((hidden, blocks))
}

/// Switch Transformers: `encoder.block.{i}.layer.1.mlp` and `decoder.block.{i}.layer.2.mlp`.
/// Which blocks are sparse is read from the checkpoint (a router tensor is present): the config
/// derives `*_sparse_step` from `num_sparse_*_layers` differently across transformers versions,
/// while the saved tensors are what the model computes with.
fn switch(cfg: &Config, ckpt: &Checkpoint) -> Result<(usize, Vec<BlockSpec>)> {
    let hidden = cfg.usize_any(&["d_model", "hidden_size"])?;
    let ffn_dim = cfg.usize("d_ff")?;
    let e = cfg.usize("num_experts")?;
    let act = Activation::from_hf_name(cfg.opt_str("dense_act_fn")?.unwrap_or("relu"))?;
    let capacity = cfg.opt_usize("expert_capacity")?;
    let router_bias = cfg.bool_or("router_bias", false)?;
    let enc_layers = cfg.usize("num_layers")?;
    let dec_layers = cfg.opt_usize("num_decoder_layers")?.unwrap_or(enc_layers);
    let mut blocks = Vec::new();
    for (side, layers, sub) in [("encoder", enc_layers, 1), ("decoder", dec_layers, 2)] {
        for l in 0..layers {
            let p = format!("{side}.block.{l}.layer.{sub}.mlp");
            let router_weight = format!("{p}.router.classifier.weight");
            if !ckpt.has(&router_weight) {
                continue;
            }
            let experts = (0..e)
                .map(|x| {
                    ExpertTensors::named(
                        &format!("{p}.experts.expert_{x}"),
                        None,
                        "wi",
                        "wo",
                        false,
                    )
                })
                .collect();
            let mut b = learned_block(
                p.clone(),
                RouterSpec::SwitchTop1 { capacity },
                router_weight,
                FfnKind::Plain(act),
                ffn_dim,
                experts,
            );
            if router_bias {
                b.router_bias = Some(format!("{p}.router.classifier.bias"));
            }
            blocks.push(b);
        }
    }
    Ok((hidden, blocks))
}
