//! Engine statistics: where time and bytes went, in the schema `run --stats-json` writes.

use serde::Serialize;

use crate::schedule::BlockRecord;

/// Counters of an engine since it was opened (or since [`super::Engine::reset_stats`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EngineStats {
    /// Forward steps through all blocks.
    pub steps: u64,
    /// Tokens processed by those steps.
    pub tokens: u64,
    /// Expert uses by a block (after routing) that found the expert resident.
    pub hits: u64,
    /// Expert uses that had to wait for a fetch.
    pub misses: u64,
    /// `hits / (hits + misses)` (1 when nothing was used).
    pub hit_rate: f64,
    /// Bytes copied into slots (sum of the sizes of the experts fetched).
    pub bytes_transferred: u64,
    /// The budget the cache may occupy.
    pub budget_bytes: u64,
    /// The most bytes ever resident at once (routed experts in slots + pinned shared experts).
    pub peak_resident_bytes: u64,
    /// Seconds the compute side waited on copy fences.
    pub stall_seconds: f64,
    /// Seconds spent computing (routing, experts, combine).
    pub compute_seconds: f64,
    /// Wall-clock seconds of the steps.
    pub wall_seconds: f64,
    /// `tokens / wall_seconds`.
    pub tokens_per_second: f64,
    /// Experts fetched ahead of need.
    pub prefetch_issued: u64,
    /// Prefetched experts that a block then used.
    pub prefetch_used: u64,
    /// Per block execution, in order (not written to the stats JSON; see `per_block`).
    #[serde(skip)]
    pub blocks: Vec<BlockRecord>,
    /// Totals per MoE block over the run: where compute, stall and bytes went.
    pub per_block: Vec<BlockTotals>,
}

/// What one MoE block cost over a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BlockTotals {
    /// Block index.
    pub block: usize,
    /// Executions (one per step).
    pub executions: u64,
    /// Expert uses.
    pub experts: u64,
    /// Of which resident when routed.
    pub hits: u64,
    /// Seconds computing.
    pub compute_seconds: f64,
    /// Seconds waiting on copies.
    pub stall_seconds: f64,
    /// Bytes copied for this block's misses and prefetches into it.
    pub bytes_moved: u64,
}

impl EngineStats {
    /// Recomputes the derived fields (`hit_rate`, `tokens_per_second`, `per_block`).
    pub fn finish(&mut self) {
        self.per_block.clear();
        for r in &self.blocks {
            if self.per_block.len() <= r.block {
                self.per_block.resize_with(r.block + 1, BlockTotals::default);
            }
            let t = &mut self.per_block[r.block];
            t.block = r.block;
            t.executions += 1;
            t.experts += r.experts as u64;
            t.hits += r.hits as u64;
            t.compute_seconds += r.compute_seconds;
            t.stall_seconds += r.stall_seconds;
            t.bytes_moved += r.bytes_moved;
        }
        let uses = self.hits + self.misses;
        self.hit_rate = if uses == 0 { 1.0 } else { self.hits as f64 / uses as f64 };
        self.tokens_per_second =
            if self.wall_seconds > 0.0 { self.tokens as f64 / self.wall_seconds } else { 0.0 };
    }

    /// Fraction of transfer time hidden under compute, given the time the same bytes take to
    /// copy when nothing else runs (`bytes_transferred / copy_rate`).
    pub fn hidden_fraction(&self, copy_bytes_per_second: f64) -> f64 {
        if self.bytes_transferred == 0 || copy_bytes_per_second <= 0.0 {
            return 1.0;
        }
        let transfer = self.bytes_transferred as f64 / copy_bytes_per_second;
        (1.0 - self.stall_seconds / transfer).clamp(0.0, 1.0)
    }
}
