//! `inspect`: a summary of a model's MoE blocks, for people (a table) and programs (JSON).

use serde::Serialize;

use crate::spec::ModelSpec;

/// One MoE block in an [`InspectReport`].
#[derive(Debug, Clone, Serialize)]
pub struct BlockSummary {
    /// Checkpoint prefix.
    pub prefix: String,
    /// Router kind name (`softmax_topk`, `gshard_top2`, …).
    pub router: String,
    /// Routed experts.
    pub num_experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Bytes of one routed expert.
    pub expert_bytes: u64,
    /// Bytes of the shared expert(s), 0 if none.
    pub shared_expert_bytes: u64,
}

/// What `moe-offload inspect` prints.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// Family name (the `model_type`).
    pub family: String,
    /// Hidden size.
    pub hidden_size: usize,
    /// Expert weight dtype.
    pub dtype: String,
    /// Every MoE block, in execution order.
    pub blocks: Vec<BlockSummary>,
    /// Sum of routed-expert bytes over all blocks.
    pub total_expert_bytes: u64,
}

impl InspectReport {
    /// Summarises a model spec.
    pub fn new(spec: &ModelSpec) -> InspectReport {
        InspectReport {
            family: spec.family.model_type().to_string(),
            hidden_size: spec.hidden_size,
            dtype: spec.dtype.name(),
            blocks: spec
                .blocks
                .iter()
                .map(|b| BlockSummary {
                    prefix: b.prefix.clone(),
                    router: b.router.name().to_string(),
                    num_experts: b.num_experts(),
                    top_k: b.router.top_k(),
                    expert_bytes: b.expert_bytes,
                    shared_expert_bytes: b.shared_expert_bytes,
                })
                .collect(),
            total_expert_bytes: spec.total_expert_bytes(),
        }
    }
}

/// Formats a byte count with binary units (`1.50 GiB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{bytes} B") } else { format!("{v:.2} {}", UNITS[u]) }
}

impl std::fmt::Display for InspectReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "family       {}", self.family)?;
        writeln!(f, "hidden size  {}", self.hidden_size)?;
        writeln!(f, "dtype        {}", self.dtype)?;
        writeln!(f, "MoE blocks   {}", self.blocks.len())?;
        writeln!(
            f,
            "{:<44} {:<16} {:>7} {:>5} {:>12} {:>12}",
            "prefix", "router", "experts", "top-k", "expert", "shared"
        )?;
        for b in &self.blocks {
            writeln!(
                f,
                "{:<44} {:<16} {:>7} {:>5} {:>12} {:>12}",
                b.prefix,
                b.router,
                b.num_experts,
                b.top_k,
                human_bytes(b.expert_bytes),
                human_bytes(b.shared_expert_bytes)
            )?;
        }
        write!(
            f,
            "total expert bytes {} ({})",
            self.total_expert_bytes,
            human_bytes(self.total_expert_bytes)
        )
    }
}
