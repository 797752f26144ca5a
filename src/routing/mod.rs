//! Routing: from gate logits (learned routers) or token ids (PanGu-Σ RRE) to a plan that says,
//! per expert, which tokens it serves and with which weights. Knows nothing of where weights are.

pub mod gshard;
pub mod rre;
pub mod switch;
pub mod topk;

use serde::{Deserialize, Serialize};

/// How many tokens an expert may take in one call (GShard/GLaM, NLLB, Switch).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capacity {
    /// A fixed number of tokens per expert.
    Fixed(usize),
    /// `ceil(fraction × tokens in the call)` tokens per expert (NLLB's
    /// `moe_eval_capacity_token_fraction`).
    Fraction(f64),
    /// `factor × ceil(tokens / experts)` (GShard's capacity factor; NLLB's default is 2).
    Factor(f64),
}

impl Capacity {
    /// The capacity for a call of `tokens` tokens over `experts` experts.
    pub fn for_call(&self, tokens: usize, experts: usize) -> usize {
        match *self {
            Capacity::Fixed(c) => c,
            Capacity::Fraction(f) => (f * tokens as f64).ceil() as usize,
            Capacity::Factor(f) => (f * tokens.div_ceil(experts.max(1)) as f64) as usize,
        }
    }
}

/// Which router a block uses, with its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RouterSpec {
    /// fp32 softmax over the gate logits, top-k, optional renormalisation of the k weights
    /// (Mixtral always; Qwen when `norm_topk_prob`).
    SoftmaxTopK {
        /// Experts per token.
        top_k: usize,
        /// Renormalise the k weights to sum to 1.
        renormalize: bool,
    },
    /// DeepSeek-V3: sigmoid scores; a correction bias for choosing only; groups ranked by the sum
    /// of their top-2 biased scores; top-k inside the kept groups; weights = unbiased scores,
    /// optionally renormalised, times `routed_scaling_factor`.
    GroupedSigmoid {
        /// Experts per token.
        top_k: usize,
        /// Number of expert groups.
        n_group: usize,
        /// Groups kept per token.
        topk_group: usize,
        /// Renormalise the k weights.
        renormalize: bool,
        /// Final weight multiplier.
        routed_scaling_factor: f32,
    },
    /// GShard / GLaM / NLLB-MoE top-2 with the deterministic ('all') second expert.
    GShardTop2 {
        /// Expert capacity, if any.
        capacity: Option<Capacity>,
        /// Normalise g1/(g1+g2) before dropping (else after).
        normalize_before_dropping: bool,
        /// Place tokens in order of their top probability instead of token order.
        batch_prioritized: bool,
    },
    /// Switch Transformers top-1: weight = top probability, capacity counted per sequence.
    SwitchTop1 {
        /// Tokens per expert per sequence, if capped.
        capacity: Option<usize>,
    },
    /// PanGu-Σ Random Routed Experts: token t of domain d goes to expert `d·K + map[t]`.
    Rre {
        /// Number of domains in this model.
        num_domains: usize,
        /// Experts per domain (K).
        experts_per_domain: usize,
        /// Vocabulary size (the map's length).
        vocab_size: usize,
    },
}

impl RouterSpec {
    /// Assignments per token (k).
    pub fn top_k(&self) -> usize {
        match self {
            RouterSpec::SoftmaxTopK { top_k, .. } | RouterSpec::GroupedSigmoid { top_k, .. } => {
                *top_k
            }
            RouterSpec::GShardTop2 { .. } => 2,
            RouterSpec::SwitchTop1 { .. } | RouterSpec::Rre { .. } => 1,
        }
    }

    /// Short name for tables and JSON: `softmax_topk`, `grouped_sigmoid`, `gshard_top2`,
    /// `switch_top1`, `rre`.
    pub fn name(&self) -> &'static str {
        match self {
            RouterSpec::SoftmaxTopK { .. } => "softmax_topk",
            RouterSpec::GroupedSigmoid { .. } => "grouped_sigmoid",
            RouterSpec::GShardTop2 { .. } => "gshard_top2",
            RouterSpec::SwitchTop1 { .. } => "switch_top1",
            RouterSpec::Rre { .. } => "rre",
        }
    }

    /// Whether routing needs token ids and domains rather than hidden states.
    pub fn is_rre(&self) -> bool {
        matches!(self, RouterSpec::Rre { .. })
    }
}

/// The tokens one expert serves in one call, with their combine weights.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExpertBatch {
    /// Expert index within the block.
    pub expert: usize,
    /// Token indices (rows of the block input), ascending.
    pub tokens: Vec<u32>,
    /// Combine weight for each token, same order.
    pub weights: Vec<f32>,
}

/// The result of routing one call of a block.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoutingPlan {
    /// Tokens in the call.
    pub num_tokens: usize,
    /// Assignment slots per token.
    pub k: usize,
    /// `[num_tokens × k]` chosen experts, −1 where an assignment was dropped (capacity).
    pub expert_ids: Vec<i32>,
    /// `[num_tokens × k]` combine weights (0 where dropped).
    pub weights: Vec<f32>,
    /// Per expert with at least one token, ascending by expert index.
    pub per_expert: Vec<ExpertBatch>,
}

impl RoutingPlan {
    /// Builds a plan from per-slot assignments, deriving `per_expert`.
    pub fn from_assignments(
        num_tokens: usize,
        k: usize,
        num_experts: usize,
        expert_ids: Vec<i32>,
        weights: Vec<f32>,
    ) -> RoutingPlan {
        debug_assert_eq!(expert_ids.len(), num_tokens * k);
        let mut batches: Vec<ExpertBatch> =
            (0..num_experts).map(|e| ExpertBatch { expert: e, ..Default::default() }).collect();
        for t in 0..num_tokens {
            for s in 0..k {
                let e = expert_ids[t * k + s];
                if e >= 0 && (e as usize) < num_experts {
                    let b = &mut batches[e as usize];
                    b.tokens.push(t as u32);
                    b.weights.push(weights[t * k + s]);
                }
            }
        }
        batches.retain(|b| !b.tokens.is_empty());
        RoutingPlan { num_tokens, k, expert_ids, weights, per_expert: batches }
    }

    /// The experts used, ascending.
    pub fn experts(&self) -> impl Iterator<Item = usize> + '_ {
        self.per_expert.iter().map(|b| b.expert)
    }
}
