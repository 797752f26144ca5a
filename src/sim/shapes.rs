//! Model shapes for trace generation: presets of real MoE models (with where each number comes
//! from) and explicit shapes.

use crate::{Error, Result};

/// The routed-expert shape of a model: what the cache and the cost model need.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelShape {
    /// Name written into trace headers.
    pub name: String,
    /// Routed experts in each MoE block.
    pub experts_per_block: Vec<usize>,
    /// Bytes of one expert in each block.
    pub expert_bytes: Vec<u64>,
    /// Hidden size.
    pub hidden_size: usize,
    /// Experts per token.
    pub top_k: usize,
}

/// The preset names `--shape` accepts.
pub const SHAPE_NAMES: &[&str] = &["cpm2-198b", "deepseek-v3", "mixtral-8x7b", "glam-64e"];

impl ModelShape {
    /// `blocks` identical blocks of `experts` experts of `expert_bytes` bytes each.
    pub fn uniform(
        name: &str,
        blocks: usize,
        experts: usize,
        top_k: usize,
        expert_bytes: u64,
        hidden_size: usize,
    ) -> Result<Self> {
        if blocks == 0 || experts == 0 || top_k == 0 || top_k > experts || expert_bytes == 0 {
            return Err(Error::InvalidOption(format!(
                "shape {name}: need blocks ≥ 1, experts ≥ 1, 1 ≤ top-k ≤ experts and expert bytes ≥ 1 \
                 (got blocks {blocks}, experts {experts}, top-k {top_k}, expert bytes {expert_bytes})"
            )));
        }
        Ok(ModelShape {
            name: name.to_string(),
            experts_per_block: vec![experts; blocks],
            expert_bytes: vec![expert_bytes; blocks],
            hidden_size,
            top_k,
        })
    }

    /// A preset by name (see [`SHAPE_NAMES`]).
    pub fn preset(name: &str) -> Result<Self> {
        // Expert bytes = matrices × hidden × expert FFN width × bytes per weight.
        match name.trim().to_ascii_lowercase().as_str() {
            // CPM-2 MoE (Zhang et al. 2021, arXiv:2106.10715, Table 1): the 11B CPM-2
            // encoder-decoder (24 + 24 layers, d_model 4096, d_ff 10240, gated FFN as mT5) with
            // 32 experts in the FFN of every layer, top-1 (BASE-layer routing), fp16. Check:
            // 48 × 32 × 3·4096·10240 ≈ 193B expert parameters of the 198B.
            "cpm2-198b" => Self::uniform(name, 48, 32, 1, 3 * 4096 * 10240 * 2, 4096),
            // DeepSeek-V3 (deepseek-ai/DeepSeek-V3 config.json): 61 layers, the first 3 dense
            // (first_k_dense_replace = 3) → 58 MoE layers × 256 routed experts
            // (n_routed_experts), top-8 (num_experts_per_tok), hidden 7168,
            // moe_intermediate_size 2048, SwiGLU, FP8 weights as released (block scales, 0.02%,
            // ignored). The shared expert is always resident and not part of the cache.
            "deepseek-v3" => Self::uniform(name, 58, 256, 8, 3 * 7168 * 2048, 7168),
            // Mixtral 8x7B (mistralai/Mixtral-8x7B-v0.1 config.json): 32 layers × 8 experts
            // (num_local_experts), top-2, hidden 4096, intermediate 14336, SwiGLU, bf16:
            // 352 MB per expert, as measured in DESIGN.md.
            "mixtral-8x7b" => Self::uniform(name, 32, 8, 2, 3 * 4096 * 14336 * 2, 4096),
            // GLaM 64B/64E (Du et al. 2022, arXiv:2112.06905, Table 4): 64 layers with an MoE
            // FFN in every other one → 32 MoE layers × 64 experts, top-2, d_model 8192,
            // d_ff 32768, plain GELU FFN (2 matrices), bf16. Check: 32 × 64 × 2·8192·32768 ≈
            // 1.1T of the 1.2T parameters.
            "glam-64e" => Self::uniform(name, 32, 64, 2, 2 * 8192 * 32768 * 2, 8192),
            other => Err(Error::InvalidOption(format!(
                "unknown shape {other:?} (valid: {}; or give --blocks --experts --top-k --expert-bytes)",
                SHAPE_NAMES.join(", ")
            ))),
        }
    }

    /// Number of blocks.
    pub fn blocks(&self) -> usize {
        self.experts_per_block.len()
    }
}
