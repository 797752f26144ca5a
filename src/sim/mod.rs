//! The offload-policy simulator: replays routing traces (files in the format of
//! `docs/TRACE.md`, or generated) through the same [`crate::cache`] code the engine uses, under
//! several policies and budgets at once, and reports hits, bytes, predicted stall time and
//! tokens/s, each policy against Belady's bound.
//!
//! A simulation reads its source twice: a survey pass collects the key stream (Belady's
//! future, 4 bytes per access), expert frequencies (Static's pinned set) and step/token counts;
//! a replay pass drives every (policy, budget) cache in lockstep, so a trace file is parsed
//! twice whatever the number of configurations.

mod bitmap_text;
mod font;
pub mod generate;
pub mod plot;
pub mod replay;
pub mod report;
pub mod shapes;
pub mod trace;

use std::io::BufRead;
use std::sync::Arc;

use serde::Serialize;

pub use generate::{GenConfig, Generator, RreGen};
pub use replay::{CostModel, Counters, Prefetch, Replayer};
pub use shapes::{ModelShape, SHAPE_NAMES};
pub use trace::{BlockRecord, TRACE_VERSION, TraceHeader, TraceReader, TraceWriter};

use crate::cache::{
    Belady, ExpertKey, FutureIndex, KeyIndex, Policy, PolicyInit, PolicyKind, make_policy,
    parse_budget,
};
use crate::{Error, Result};

/// Anything that yields block records in execution order: a trace file, a generator, memory.
pub trait RecordSource {
    /// The model summary.
    fn header(&self) -> &TraceHeader;
    /// Reads the next record into `rec`; `Ok(false)` at the end.
    fn read_into(&mut self, rec: &mut BlockRecord) -> Result<bool>;
}

impl<R: BufRead> RecordSource for TraceReader<R> {
    fn header(&self) -> &TraceHeader {
        TraceReader::header(self)
    }
    fn read_into(&mut self, rec: &mut BlockRecord) -> Result<bool> {
        TraceReader::read_into(self, rec)
    }
}

impl RecordSource for Generator {
    fn header(&self) -> &TraceHeader {
        Generator::header(self)
    }
    fn read_into(&mut self, rec: &mut BlockRecord) -> Result<bool> {
        Ok(self.next_into(rec))
    }
}

/// A trace held in memory (tests, benchmarks, small generated traces).
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryTrace {
    /// The model summary.
    pub header: TraceHeader,
    /// The records, in execution order.
    pub records: Vec<BlockRecord>,
}

impl MemoryTrace {
    /// Collects a whole source (validate sizes first: this holds every record).
    pub fn collect(mut src: impl RecordSource) -> Result<Self> {
        let header = src.header().clone();
        let mut records = Vec::new();
        let mut rec = BlockRecord::default();
        while src.read_into(&mut rec)? {
            records.push(rec.clone());
        }
        Ok(MemoryTrace { header, records })
    }

    /// A source reading this trace from the start.
    pub fn source(&self) -> MemorySource<'_> {
        MemorySource { trace: self, pos: 0 }
    }
}

/// A [`RecordSource`] over a [`MemoryTrace`].
pub struct MemorySource<'a> {
    trace: &'a MemoryTrace,
    pos: usize,
}

impl RecordSource for MemorySource<'_> {
    fn header(&self) -> &TraceHeader {
        &self.trace.header
    }
    fn read_into(&mut self, rec: &mut BlockRecord) -> Result<bool> {
        match self.trace.records.get(self.pos) {
            Some(r) => {
                rec.clone_from(r);
                self.pos += 1;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// What the survey pass learns about a trace.
#[derive(Debug, Clone)]
pub struct Survey {
    /// The model summary.
    pub header: TraceHeader,
    /// Every access as a dense expert index, in order (Belady's future).
    pub keys: Vec<u32>,
    /// Accesses per dense expert index.
    pub counts: Vec<u64>,
    /// The most experts one block execution uses.
    pub max_experts_per_block: usize,
    /// Block executions.
    pub records: u64,
    /// Distinct steps.
    pub steps: u64,
    /// Tokens: `tokens_per_step` × steps when the header gives it, else per step the largest
    /// block's token count divided by `top_k` (default 1).
    pub tokens: u64,
}

impl Survey {
    /// Reads `src` to the end.
    pub fn collect(src: &mut dyn RecordSource) -> Result<Self> {
        let header = src.header().clone();
        let index = KeyIndex::new(&header.experts_per_block);
        let offsets: Vec<usize> = (0..header.blocks)
            .map(|b| index.index(ExpertKey::new(b as u32, 0)).unwrap_or(0))
            .collect();
        let top_k = header.top_k.unwrap_or(1).max(1) as u64;
        let mut s = Survey {
            keys: Vec::new(),
            counts: vec![0; index.len()],
            max_experts_per_block: 0,
            records: 0,
            steps: 0,
            tokens: 0,
            header,
        };
        let mut rec = BlockRecord::default();
        let (mut cur_step, mut step_tokens) = (None, 0u64);
        while src.read_into(&mut rec)? {
            s.records += 1;
            s.max_experts_per_block = s.max_experts_per_block.max(rec.experts.len());
            let base = offsets[rec.block as usize];
            let mut tokens = 0u64;
            for &(e, t) in &rec.experts {
                let i = base + e as usize;
                s.keys.push(i as u32);
                s.counts[i] += 1;
                tokens += t as u64;
            }
            if cur_step != Some(rec.step) {
                s.tokens += step_tokens;
                s.steps += 1;
                cur_step = Some(rec.step);
                step_tokens = 0;
            }
            step_tokens = step_tokens.max(tokens.div_ceil(top_k));
        }
        s.tokens += step_tokens;
        if let Some(t) = s.header.tokens_per_step {
            s.tokens = t as u64 * s.steps;
        }
        Ok(s)
    }

    /// The `n` most used experts (ties by key), never more than were used.
    pub fn most_frequent(&self, n: usize) -> Vec<ExpertKey> {
        let index = KeyIndex::new(&self.header.experts_per_block);
        let mut order: Vec<usize> =
            (0..self.counts.len()).filter(|&i| self.counts[i] > 0).collect();
        order.sort_by(|&a, &b| self.counts[b].cmp(&self.counts[a]).then(a.cmp(&b)));
        order.into_iter().take(n).map(|i| index.key(i)).collect()
    }
}

/// Builds `kind` for a cache of `slots` slots replaying the surveyed trace: Belady gets the
/// trace's future, Static pins the most frequent experts that fit beside one block's needs.
pub fn build_policy(
    kind: PolicyKind,
    survey: &Survey,
    future: &Arc<FutureIndex>,
    slots: usize,
) -> Result<Box<dyn Policy>> {
    if kind == PolicyKind::Belady {
        return Ok(Box::new(Belady::with_future(future.clone())));
    }
    let pinned = (kind == PolicyKind::Static)
        .then(|| survey.most_frequent(slots.saturating_sub(survey.max_experts_per_block)));
    let init = PolicyInit {
        experts_per_block: survey.header.experts_per_block.clone(),
        future: None,
        pinned,
    };
    make_policy(kind, init, slots)
}

/// Simulation settings beside policies and budgets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimOptions {
    /// The cost model.
    pub cost: CostModel,
    /// Prefetch mode.
    pub prefetch: Prefetch,
}

/// One row of results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimResult {
    /// Policy name.
    pub policy: String,
    /// Budget as given (`"25%"`, `"2GiB"`).
    pub budget: String,
    /// Budget in bytes.
    pub budget_bytes: u64,
    /// Slots (budget / largest expert).
    pub slots: usize,
    /// Expert uses that hit.
    pub hits: u64,
    /// Expert uses that missed.
    pub misses: u64,
    /// hits / (hits + misses).
    pub hit_rate: f64,
    /// This hit rate over Belady's at the same budget (1 = optimal).
    pub hit_rate_vs_belady: Option<f64>,
    /// Bytes moved host → device.
    pub bytes_transferred: u64,
    /// Predicted seconds the compute stream waits on transfers.
    pub stall_seconds: f64,
    /// Predicted seconds of expert compute.
    pub compute_seconds: f64,
    /// Predicted tokens per second (expert path only).
    pub tokens_per_second: f64,
    /// Prefetches issued.
    pub prefetch_issued: u64,
    /// Prefetches used.
    pub prefetch_used: u64,
}

/// All rows of one simulation and what was simulated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimReport {
    /// Model name from the trace header.
    pub model: Option<String>,
    /// Block executions replayed.
    pub records: u64,
    /// Expert accesses replayed (per configuration).
    pub accesses: u64,
    /// Steps.
    pub steps: u64,
    /// Tokens.
    pub tokens: u64,
    /// Total expert bytes (100% budget).
    pub total_expert_bytes: u64,
    /// One row per (policy, budget), budgets outer, policies in the order asked.
    pub results: Vec<SimResult>,
}

/// Simulates every policy in `policies` at every budget in `budgets` (strings as
/// [`parse_budget`] reads them, against the trace's total expert bytes). `open` is called
/// twice (survey, replay) and must yield the same records both times. Belady is always replayed
/// (as the reference for `hit_rate_vs_belady`) but only reported if asked for.
pub fn simulate<S: RecordSource>(
    mut open: impl FnMut() -> Result<S>,
    policies: &[PolicyKind],
    budgets: &[String],
    opts: &SimOptions,
) -> Result<SimReport> {
    let c = &opts.cost;
    if !c.bandwidth.is_finite() || c.bandwidth <= 0.0 {
        return Err(Error::InvalidOption(format!("bandwidth {} must be > 0", c.bandwidth)));
    }
    if !c.reference_bytes.is_finite() || c.reference_bytes <= 0.0 {
        return Err(Error::InvalidOption(format!(
            "compute reference bytes {} must be > 0",
            c.reference_bytes
        )));
    }
    let non_negative = |x: f64| x.is_finite() && x >= 0.0;
    if !non_negative(c.compute_fixed_s) || !non_negative(c.compute_per_token_s) {
        return Err(Error::InvalidOption("compute times must be ≥ 0".into()));
    }
    let survey = Survey::collect(&mut open()?)?;
    let header = survey.header.clone();
    let total = header.total_expert_bytes();
    let slot_bytes = header.max_expert_bytes().max(1);
    let future = Arc::new(FutureIndex::new(survey.counts.len(), &survey.keys)?);
    let mut runs: Vec<(PolicyKind, usize, Replayer)> = Vec::new(); // (policy, budget #, …)
    let mut parsed = Vec::new();
    for (bi, label) in budgets.iter().enumerate() {
        let bytes = parse_budget(label, total)?;
        let slots =
            usize::try_from(bytes / slot_bytes).unwrap_or(usize::MAX).min(future.num_keys());
        if slots < survey.max_experts_per_block {
            return Err(Error::BudgetTooSmall {
                budget: bytes,
                reason: format!(
                    "{label} holds {slots} experts of {slot_bytes} bytes but one block uses up to {} at once",
                    survey.max_experts_per_block
                ),
            });
        }
        parsed.push((bytes, slots));
        let mut kinds = policies.to_vec();
        if !kinds.contains(&PolicyKind::Belady) {
            kinds.push(PolicyKind::Belady);
        }
        for kind in kinds {
            let policy = build_policy(kind, &survey, &future, slots)?;
            runs.push((kind, bi, Replayer::new(&header, slots, policy, opts.cost, opts.prefetch)));
        }
    }
    drop(future);
    let mut src = open()?;
    let (mut cur, mut next) = (BlockRecord::default(), BlockRecord::default());
    let mut have = src.read_into(&mut cur)?;
    while have {
        let more = src.read_into(&mut next)?;
        for (_, _, r) in runs.iter_mut() {
            r.block(&cur, more.then_some(&next))?;
        }
        std::mem::swap(&mut cur, &mut next);
        have = more;
    }
    let done: Vec<(PolicyKind, usize, Counters)> =
        runs.into_iter().map(|(k, b, r)| (k, b, r.finish())).collect();
    let rate = |c: &Counters| {
        let n = c.hits + c.misses;
        if n == 0 { 0.0 } else { c.hits as f64 / n as f64 }
    };
    let mut results = Vec::new();
    for (bi, label) in budgets.iter().enumerate() {
        let best = done
            .iter()
            .find(|(k, b, _)| *k == PolicyKind::Belady && *b == bi)
            .map(|(_, _, c)| rate(c));
        for &kind in policies {
            let Some((_, _, c)) = done.iter().find(|(k, b, _)| *k == kind && *b == bi) else {
                continue;
            };
            let time = c.stall_seconds + c.compute_seconds;
            results.push(SimResult {
                policy: kind.to_string(),
                budget: label.clone(),
                budget_bytes: parsed[bi].0,
                slots: parsed[bi].1,
                hits: c.hits,
                misses: c.misses,
                hit_rate: rate(c),
                hit_rate_vs_belady: best.filter(|&b| b > 0.0).map(|b| rate(c) / b),
                bytes_transferred: c.bytes_transferred,
                stall_seconds: c.stall_seconds,
                compute_seconds: c.compute_seconds,
                tokens_per_second: if time > 0.0 { survey.tokens as f64 / time } else { 0.0 },
                prefetch_issued: c.prefetch_issued,
                prefetch_used: c.prefetch_used,
            });
        }
    }
    Ok(SimReport {
        model: header.model.clone(),
        records: survey.records,
        accesses: survey.keys.len() as u64,
        steps: survey.steps,
        tokens: survey.tokens,
        total_expert_bytes: total,
        results,
    })
}
