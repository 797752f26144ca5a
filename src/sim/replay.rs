//! Replays block records through the crate's [`ExpertCache`] and policies (the engine's own
//! code) with demand fetching and optional exact next-block prefetch, and turns hits, misses and
//! bytes into time with a cost model.
//!
//! Cost model (one copy link, one compute stream, as the engine's schedule): at a block's start
//! its misses are queued on the link in order of descending token count (InfMoE's order, as the
//! engine), then the prefetches for the next block; the link moves `bandwidth` bytes/s, FIFO,
//! and carries over across blocks. The compute stream runs the block's experts in order of
//! readiness (resident first); an expert costs `(fixed + per_token × tokens) × bytes /
//! reference_bytes` seconds (small-batch expert FFNs are bound by reading their weights, so time
//! scales with expert size) and waits for its transfer: the waiting is stall time. Non-expert work (attention, router) is not
//! modelled: tokens/s is an upper bound set by the expert path alone.

use super::trace::{BlockRecord, TraceHeader};
use crate::cache::{ExpertCache, KeyIndex, Policy};
use crate::{Error, Result};

/// Transfer and compute costs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostModel {
    /// Host → device bytes per second.
    pub bandwidth: f64,
    /// Seconds per expert call regardless of tokens (launch, weight read), for an expert of
    /// `reference_bytes`.
    pub compute_fixed_s: f64,
    /// Additional seconds per token routed to the expert, for an expert of `reference_bytes`.
    pub compute_per_token_s: f64,
    /// The expert size the two times above were measured at; other sizes scale linearly.
    pub reference_bytes: f64,
}

/// One Mixtral-8x7B expert in bf16 (3 × 4096 × 14336 × 2 bytes), where the default compute
/// times were measured.
pub const MIXTRAL_EXPERT_BYTES: f64 = 352_321_536.0;

impl Default for CostModel {
    /// PCIe Gen5 as measured on the H200 in DESIGN.md (55 GB/s); one Mixtral-size bf16 expert on
    /// that GPU took 0.10 ms at 1–64 tokens and 0.25 ms at 512, i.e. ≈ 0.1 ms + 0.3 µs/token.
    fn default() -> Self {
        CostModel {
            bandwidth: 55e9,
            compute_fixed_s: 1e-4,
            compute_per_token_s: 3e-7,
            reference_bytes: MIXTRAL_EXPERT_BYTES,
        }
    }
}

/// Prefetch in the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefetch {
    /// Fetch on demand only.
    None,
    /// While a block computes, fetch the next block's experts (exact: the trace knows them —
    /// what RRE allows in a real run, an upper bound for gate-based guessing).
    Next,
}

/// What one simulated (policy, budget) pair counted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// Expert uses that found the expert resident (or already on its way by prefetch).
    pub hits: u64,
    /// Expert uses that had to be fetched on demand.
    pub misses: u64,
    /// Bytes moved host → device (demand and prefetch).
    pub bytes_transferred: u64,
    /// Prefetches issued.
    pub prefetch_issued: u64,
    /// Prefetched experts that were used before being evicted.
    pub prefetch_used: u64,
    /// Seconds the compute stream waited on transfers.
    pub stall_seconds: f64,
    /// Seconds of expert compute.
    pub compute_seconds: f64,
}

/// One cache replaying records: the cache, protection stamps and the cost-model clocks.
pub struct Replayer {
    cache: ExpertCache,
    offsets: Vec<usize>,
    expert_bytes: Vec<u64>,
    cost: CostModel,
    prefetch: Prefetch,
    /// `protect[i] == stamp`: expert `i` is needed by the current (or prefetched-for) block.
    protect: Vec<u64>,
    stamp: u64,
    /// When expert `i`'s last transfer completes (seconds).
    ready_at: Vec<f64>,
    /// Resident by prefetch and not yet used.
    prefetched: Vec<bool>,
    /// Compute-stream and link clocks.
    now: f64,
    link_free: f64,
    /// This block's misses (dense index, tokens) and resident experts still arriving
    /// (ready time, tokens).
    missed: Vec<(u32, u32)>,
    in_flight: Vec<(f64, u32)>,
    counters: Counters,
}

impl Replayer {
    /// A replayer of `num_slots` slots for the model of `header`, evicting with `policy`.
    pub fn new(
        header: &TraceHeader,
        num_slots: usize,
        policy: Box<dyn Policy>,
        cost: CostModel,
        prefetch: Prefetch,
    ) -> Self {
        let index = KeyIndex::new(&header.experts_per_block);
        let offsets = (0..header.blocks)
            .map(|b| index.index(crate::cache::ExpertKey::new(b as u32, 0)).unwrap_or(0))
            .collect();
        let n = index.len();
        Replayer {
            cache: ExpertCache::new(num_slots, &header.experts_per_block, policy),
            offsets,
            expert_bytes: header.expert_bytes.clone(),
            cost,
            prefetch,
            protect: vec![0; n],
            stamp: 0,
            ready_at: vec![0.0; n],
            prefetched: vec![false; n],
            now: 0.0,
            link_free: 0.0,
            missed: Vec::new(),
            in_flight: Vec::new(),
            counters: Counters::default(),
        }
    }

    /// The cache being driven.
    pub fn cache(&self) -> &ExpertCache {
        &self.cache
    }

    /// The counts so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Replays one block execution; `next` is the following record (for prefetch). Records
    /// must have been validated against the header (as [`super::TraceReader`] does).
    pub fn block(&mut self, rec: &BlockRecord, next: Option<&BlockRecord>) -> Result<()> {
        self.stamp += 1;
        let b = rec.block as usize;
        let base = self.offsets[b];
        let bytes = self.expert_bytes[b];
        let start = self.now;
        self.missed.clear();
        self.in_flight.clear();
        // Experts resident and ready at the block's start: their order does not matter.
        let (mut ready_n, mut ready_tokens) = (0u64, 0u64);
        for &(e, t) in &rec.experts {
            let idx = base + e as usize;
            self.protect[idx] = self.stamp;
            if self.cache.access_index(idx) {
                self.counters.hits += 1;
                if std::mem::take(&mut self.prefetched[idx]) {
                    self.counters.prefetch_used += 1;
                }
                let r = self.ready_at[idx];
                if r <= start {
                    ready_n += 1;
                    ready_tokens += t as u64;
                } else {
                    self.in_flight.push((r, t));
                }
            } else {
                self.counters.misses += 1;
                self.missed.push((idx as u32, t));
            }
        }
        // Demand fetches: misses by descending token count (the engine's order), queued on
        // the link after whatever is already in flight, so they arrive in this order.
        if self.missed.len() > 1 {
            self.missed.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        }
        for m in 0..self.missed.len() {
            let idx = self.missed[m].0 as usize;
            let stamp = self.stamp;
            let protect = &self.protect;
            if self.cache.insert_index(idx, &mut |i| protect[i] != stamp).is_none() {
                let key = self.cache.key_index().key(idx);
                return Err(Error::CacheFull {
                    block: key.block,
                    expert: key.expert,
                    slots: self.cache.num_slots(),
                });
            }
            self.prefetched[idx] = false;
            let done = self.transfer(start, bytes);
            self.ready_at[idx] = done;
        }
        if self.prefetch == Prefetch::Next {
            if let Some(next) = next {
                self.prefetch_block(next, start);
            }
        }
        // Compute in order of readiness: ready experts, then prefetches still in flight (queued
        // before this block's misses), then the misses in arrival order.
        let scale = bytes as f64 / self.cost.reference_bytes;
        let fixed = self.cost.compute_fixed_s * scale;
        let per_token = self.cost.compute_per_token_s * scale;
        let mut c = start + fixed * ready_n as f64 + per_token * ready_tokens as f64;
        if self.in_flight.len() > 1 {
            self.in_flight.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        }
        let arrivals = self
            .in_flight
            .iter()
            .copied()
            .chain(self.missed.iter().map(|&(idx, t)| (self.ready_at[idx as usize], t)));
        let mut stall = 0.0;
        for (ready, t) in arrivals {
            if ready > c {
                stall += ready - c;
                c = ready;
            }
            c += fixed + per_token * t as f64;
        }
        self.counters.stall_seconds += stall;
        self.counters.compute_seconds += c - start - stall;
        self.now = c;
        Ok(())
    }

    /// Queues `bytes` on the link no earlier than `at`; returns when they arrive.
    #[inline]
    fn transfer(&mut self, at: f64, bytes: u64) -> f64 {
        let begin = self.link_free.max(at);
        self.link_free = begin + bytes as f64 / self.cost.bandwidth;
        self.counters.bytes_transferred += bytes;
        self.link_free
    }

    /// Fetches the experts of `next` that are not resident, never evicting an expert of the
    /// current block or of `next`; skips a prefetch when no slot can be freed.
    fn prefetch_block(&mut self, next: &BlockRecord, at: f64) {
        let b = next.block as usize;
        let base = self.offsets[b];
        let bytes = self.expert_bytes[b];
        for &(e, _) in &next.experts {
            self.protect[base + e as usize] = self.stamp;
        }
        for &(e, _) in &next.experts {
            let idx = base + e as usize;
            if self.cache.slot_of_index(idx).is_some() {
                continue;
            }
            let stamp = self.stamp;
            let protect = &self.protect;
            if self.cache.insert_index(idx, &mut |i| protect[i] != stamp).is_some() {
                self.counters.prefetch_issued += 1;
                self.prefetched[idx] = true;
                let done = self.transfer(at, bytes);
                self.ready_at[idx] = done;
            }
        }
    }

    /// The final counts.
    pub fn finish(self) -> Counters {
        self.counters
    }
}
