//! Model specs: what a checkpoint means. Turns `config.json` into the list of MoE blocks, each
//! with its checkpoint prefix, router, expert FFN form and the tensor names of every expert,
//! then checks every named tensor against the checkpoint (presence, dtype, shape).

mod config;
mod hf;
mod native;

use serde::{Deserialize, Serialize};

pub use config::Config;
pub use native::{
    NATIVE_GLAM, NATIVE_PANGU, block_prefix as native_block_prefix,
    expert_tensors as native_expert_tensors,
};

use crate::checkpoint::Checkpoint;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ffn::FfnKind;
use crate::routing::RouterSpec;

/// A model family: which config layout and tensor names a checkpoint follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// `mixtral` (HF).
    Mixtral,
    /// `qwen2_moe` (HF), with a gated shared expert.
    Qwen2Moe,
    /// `qwen3_moe` (HF).
    Qwen3Moe,
    /// `deepseek_v3` (HF), grouped sigmoid routing and shared experts.
    DeepseekV3,
    /// `nllb-moe` / `nllb_moe` (HF), GShard top-2 with capacity.
    NllbMoe,
    /// `switch_transformers` (HF), top-1 with capacity.
    SwitchTransformers,
    /// Native `glam`: GShard top-2.
    Glam,
    /// Native `pangu_sigma`: Random Routed Experts.
    PanguSigma,
}

impl Family {
    /// The `model_type` string this family is written with.
    pub fn model_type(&self) -> &'static str {
        match self {
            Family::Mixtral => "mixtral",
            Family::Qwen2Moe => "qwen2_moe",
            Family::Qwen3Moe => "qwen3_moe",
            Family::DeepseekV3 => "deepseek_v3",
            Family::NllbMoe => "nllb_moe",
            Family::SwitchTransformers => "switch_transformers",
            Family::Glam => NATIVE_GLAM,
            Family::PanguSigma => NATIVE_PANGU,
        }
    }

    /// Parses a `model_type`.
    pub fn from_model_type(s: &str) -> Result<Family> {
        Ok(match s {
            "mixtral" => Family::Mixtral,
            "qwen2_moe" => Family::Qwen2Moe,
            "qwen3_moe" => Family::Qwen3Moe,
            "deepseek_v3" => Family::DeepseekV3,
            "nllb-moe" | "nllb_moe" => Family::NllbMoe,
            "switch_transformers" => Family::SwitchTransformers,
            NATIVE_GLAM => Family::Glam,
            NATIVE_PANGU => Family::PanguSigma,
            other => return Err(Error::UnknownModelType(other.to_string())),
        })
    }
}

/// Tensor names of one expert (or shared expert). Shapes: `gate`/`up` `[ffn, hidden]`,
/// `down` `[hidden, ffn]`, biases `[ffn]` and `[hidden]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpertTensors {
    /// Gate projection (GLU forms only).
    pub gate: Option<String>,
    /// Up projection (`w3`, `up_proj`, `fc1`, `wi`).
    pub up: String,
    /// Down projection (`w2`, `down_proj`, `fc2`, `wo`).
    pub down: String,
    /// Bias of the up projection.
    pub up_bias: Option<String>,
    /// Bias of the down projection.
    pub down_bias: Option<String>,
}

impl ExpertTensors {
    /// All tensor names of the expert, in a fixed order (gate, up, down, up_bias, down_bias).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.gate
            .iter()
            .chain(std::iter::once(&self.up))
            .chain(std::iter::once(&self.down))
            .chain(self.up_bias.iter())
            .chain(self.down_bias.iter())
            .map(|s| s.as_str())
    }

    /// GLU or plain tensors named `{prefix}.{gate|up|down}` (+ `.weight`, `.bias`).
    pub fn named(
        prefix: &str,
        gate: Option<&str>,
        up: &str,
        down: &str,
        biases: bool,
    ) -> ExpertTensors {
        ExpertTensors {
            gate: gate.map(|g| format!("{prefix}.{g}.weight")),
            up: format!("{prefix}.{up}.weight"),
            down: format!("{prefix}.{down}.weight"),
            up_bias: biases.then(|| format!("{prefix}.{up}.bias")),
            down_bias: biases.then(|| format!("{prefix}.{down}.bias")),
        }
    }
}

/// A shared (always-on) expert: Qwen2-MoE's sigmoid-gated one or DeepSeek's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedExpert {
    /// Its tensors.
    pub tensors: ExpertTensors,
    /// Its intermediate size.
    pub ffn_dim: usize,
    /// `[1, hidden]` gate: output scaled by `sigmoid(x · gate)` (Qwen2-MoE).
    pub gate_weight: Option<String>,
}

/// One MoE block of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockSpec {
    /// Position in execution order (0-based, encoder blocks before decoder blocks).
    pub index: usize,
    /// The block's checkpoint prefix, e.g. `model.layers.1.block_sparse_moe`.
    pub prefix: String,
    /// Router kind and parameters.
    pub router: RouterSpec,
    /// Gate weight `[experts, hidden]` (absent for RRE).
    pub router_weight: Option<String>,
    /// Gate bias `[experts]` (NLLB/Switch with `router_bias`).
    pub router_bias: Option<String>,
    /// DeepSeek-V3 `e_score_correction_bias` `[experts]`, used for choosing only.
    pub score_correction_bias: Option<String>,
    /// RRE token → expert-in-domain map `[vocab]` (i32/i64).
    pub rre_map: Option<String>,
    /// Expert FFN form.
    pub ffn: FfnKind,
    /// Expert intermediate size.
    pub ffn_dim: usize,
    /// Expert tensors, by expert index.
    pub experts: Vec<ExpertTensors>,
    /// The shared expert, if any.
    pub shared: Option<SharedExpert>,
    /// Expert bytes (the same for every expert of the block), filled in by validation.
    pub expert_bytes: u64,
    /// Shared-expert bytes (0 if none), filled in by validation.
    pub shared_expert_bytes: u64,
}

impl BlockSpec {
    /// Number of routed experts.
    pub fn num_experts(&self) -> usize {
        self.experts.len()
    }
}

/// Everything moe-offload needs to know about a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// The family.
    pub family: Family,
    /// Hidden size (model width).
    pub hidden_size: usize,
    /// Dtype of the expert weights.
    pub dtype: DType,
    /// The MoE blocks in execution order.
    pub blocks: Vec<BlockSpec>,
    /// Vocabulary size when the config gives one.
    pub vocab_size: Option<usize>,
    /// For RRE models: the original domain ids this model holds (a model made by `extract`
    /// holds one); `None` means `0..num_domains`.
    pub domain_ids: Option<Vec<usize>>,
}

impl ModelSpec {
    /// Reads the family from `config.json`, builds the block list and validates every tensor.
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<ModelSpec> {
        let path = ckpt.config_path();
        let cfg = Config::new(&path, ckpt.config());
        let model_type = cfg.str("model_type")?;
        let family = Family::from_model_type(model_type)?;
        let mut spec = match family {
            Family::Glam | Family::PanguSigma => native::build(family, &cfg)?,
            _ => hf::build(family, &cfg, ckpt)?,
        };
        spec.validate(ckpt)?;
        Ok(spec)
    }

    /// Total routed-expert bytes of all blocks.
    pub fn total_expert_bytes(&self) -> u64 {
        self.blocks.iter().map(|b| b.expert_bytes * b.num_experts() as u64).sum()
    }

    /// The block with checkpoint prefix `prefix`.
    pub fn block(&self, prefix: &str) -> Result<&BlockSpec> {
        self.blocks.iter().find(|b| b.prefix == prefix).ok_or_else(|| Error::UnknownBlock {
            prefix: prefix.to_string(),
            known: self.blocks.iter().map(|b| b.prefix.as_str()).collect::<Vec<_>>().join(", "),
        })
    }

    /// The largest single expert, in bytes.
    pub fn max_expert_bytes(&self) -> u64 {
        self.blocks.iter().map(|b| b.expert_bytes).max().unwrap_or(0)
    }

    /// Checks presence, dtype and shape of every tensor the blocks name, and fills in
    /// expert byte counts and the model dtype.
    fn validate(&mut self, ckpt: &Checkpoint) -> Result<()> {
        let h = self.hidden_size;
        let mut dtype: Option<DType> = None;
        for block in &mut self.blocks {
            let e = block.num_experts();
            if let Some(w) = &block.router_weight {
                ckpt.expect_weight(w, &[e, h])?;
            }
            if let Some(b) = &block.router_bias {
                ckpt.expect_weight(b, &[e])?;
            }
            if let Some(b) = &block.score_correction_bias {
                ckpt.expect_weight(b, &[e])?;
            }
            if let Some(m) = &block.rre_map {
                let info = ckpt.info(m)?;
                if !matches!(info.dtype, DType::I32 | DType::I64) {
                    return Err(Error::UnsupportedDtype {
                        name: m.clone(),
                        found: info.dtype.to_string(),
                        expected: "i32 or i64".into(),
                    });
                }
                if let RouterSpec::Rre { vocab_size, .. } = block.router
                    && info.shape != [vocab_size]
                {
                    return Err(Error::ShapeMismatch {
                        name: m.clone(),
                        expected: vec![vocab_size],
                        found: info.shape.clone(),
                    });
                }
            }
            let mut first_bytes = None;
            for ex in &block.experts {
                let bytes = expert_bytes(ckpt, ex, h, block.ffn_dim, &mut dtype)?;
                match first_bytes {
                    None => first_bytes = Some(bytes),
                    Some(b) if b != bytes => {
                        return Err(Error::config(
                            ckpt.config_path(),
                            format!("experts of block {} differ in size", block.prefix),
                        ));
                    }
                    _ => {}
                }
            }
            block.expert_bytes = first_bytes.unwrap_or(0);
            if let Some(sh) = &block.shared {
                block.shared_expert_bytes =
                    expert_bytes(ckpt, &sh.tensors, h, sh.ffn_dim, &mut dtype)?;
                if let Some(g) = &sh.gate_weight {
                    ckpt.expect_weight(g, &[1, h])?;
                    block.shared_expert_bytes += ckpt.info(g)?.len as u64;
                }
            }
        }
        if let Some(d) = dtype {
            self.dtype = d;
        }
        Ok(())
    }
}

/// Validates one expert's tensors and returns its byte size. Every expert weight of a model
/// must share one dtype (`dtype` records the first seen).
fn expert_bytes(
    ckpt: &Checkpoint,
    ex: &ExpertTensors,
    hidden: usize,
    ffn: usize,
    dtype: &mut Option<DType>,
) -> Result<u64> {
    let mut checks: Vec<(&str, Vec<usize>)> = Vec::with_capacity(5);
    if let Some(g) = &ex.gate {
        checks.push((g, vec![ffn, hidden]));
    }
    checks.push((&ex.up, vec![ffn, hidden]));
    checks.push((&ex.down, vec![hidden, ffn]));
    if let Some(b) = &ex.up_bias {
        checks.push((b, vec![ffn]));
    }
    if let Some(b) = &ex.down_bias {
        checks.push((b, vec![hidden]));
    }
    let mut total = 0u64;
    for (name, shape) in checks {
        let info = ckpt.expect_weight(name, &shape)?;
        match dtype {
            None => *dtype = Some(info.dtype.clone()),
            Some(d) if *d != info.dtype => {
                return Err(Error::UnsupportedDtype {
                    name: name.to_string(),
                    found: info.dtype.to_string(),
                    expected: format!("{d} like the other expert weights"),
                });
            }
            _ => {}
        }
        total += info.len as u64;
    }
    Ok(total)
}
