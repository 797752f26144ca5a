//! Offloaded-decode benchmark: tokens/s of the same workload under several budgets and
//! policies, against the fully resident run and the naive method (fetch every needed expert
//! synchronously, then compute, no cache), with the share of copy time hidden under compute.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::cache::PolicyKind;
use crate::engine::{EngineOptions, EngineStats, PrefetchMode};
use crate::error::Result;
use crate::workload::{self, Workload};

/// One configuration of the decode benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct DecodeRow {
    /// `resident`, `naive`, `lru`, `lfu`, `lru+gate`, …
    pub method: String,
    /// Budget as given (`100%`), or `-` for resident.
    pub budget: String,
    /// Decode tokens per second.
    pub tokens_per_second: f64,
    /// Expert-use hit rate.
    pub hit_rate: f64,
    /// Bytes copied into slots.
    pub bytes_transferred: u64,
    /// Seconds waiting on copies.
    pub stall_seconds: f64,
    /// Share of the copy time hidden under compute (1 − stall / copy time alone).
    pub hidden_fraction: f64,
    /// Tokens/s relative to the naive method at the same budget.
    pub speedup_vs_naive: f64,
    /// Prefetches issued / used.
    pub prefetch: (u64, u64),
    /// Whether the final hidden states equal the resident run's bit for bit.
    pub matches_resident: bool,
    /// The transfer-bound limit at this row's traffic: tokens / (bytes moved / ceiling rate);
    /// infinite when nothing moved.
    pub transfer_bound_tokens_per_second: f64,
}

/// Where and how the decode benchmark runs.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// CUDA transfer path (`auto`, `registered`, `pinned[:N]`, `pageable`).
    pub transfer: String,
    /// Compute threads (0 = one per core).
    pub threads: usize,
    /// Emulated host→device link rate for the CPU (see [`EngineOptions::link_bytes_per_second`]).
    pub link_bytes_per_second: Option<f64>,
    /// Host→device ceiling in bytes/s (on a GPU: the pinned-memory rate measured by
    /// `bench transfer`) for the transfer bound and the hidden fraction; `None` uses the copy
    /// rate measured here.
    pub ceiling_bytes_per_second: Option<f64>,
    /// Include LFU rows (naive, LRU and LRU + prefetch always run).
    pub lfu: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            device: "cpu".into(),
            transfer: "auto".into(),
            threads: 0,
            link_bytes_per_second: None,
            ceiling_bytes_per_second: None,
            lfu: true,
        }
    }
}

/// The whole benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct DecodeReport {
    /// Copy rate (bytes/s) `hidden_fraction` is measured against: the host copy rate measured
    /// in the same run, or the emulated link rate when lower.
    pub copy_bytes_per_second: f64,
    /// The emulated link rate, if any.
    pub link_bytes_per_second: Option<f64>,
    /// The device it ran on.
    pub device: String,
    /// The transfer path asked for (CUDA).
    pub transfer: String,
    /// Whether `copy_bytes_per_second` was given (a measured ceiling) rather than measured here.
    pub ceiling_given: bool,
    /// Rows, resident first.
    pub rows: Vec<DecodeRow>,
}

/// Measures the rate of copying expert bytes out of the mapping with one thread, copying
/// every expert of the first block once (a warm page cache, as during a run).
pub fn measure_copy_rate(model: &Path) -> Result<f64> {
    let ckpt = crate::checkpoint::Checkpoint::open(model)?;
    let spec = crate::spec::ModelSpec::from_checkpoint(&ckpt)?;
    let Some(block) = spec.blocks.first() else { return Ok(0.0) };
    let mut buf = vec![0u8; block.expert_bytes as usize];
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let mut total = 0usize;
        for ex in &block.experts {
            let mut at = 0;
            for name in ex.names() {
                let v = ckpt.tensor(name)?;
                buf[at..at + v.bytes.len()].copy_from_slice(v.bytes);
                at += v.bytes.len();
            }
            total += at;
        }
        std::hint::black_box(&buf);
        best = best.max(total as f64 / t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Runs the decode benchmark on `model` for each budget, with LRU, LFU (if `o.lfu`), LRU +
/// gate prefetch (or exact prefetch for RRE models) and the naive method, on `o.device`.
pub fn decode(
    model: &Path,
    budgets: &[String],
    w: &Workload,
    o: &DecodeOptions,
) -> Result<DecodeReport> {
    let link_bytes_per_second = o.link_bytes_per_second;
    let copy_rate = match (o.ceiling_bytes_per_second, link_bytes_per_second) {
        (Some(c), _) => c,
        (None, Some(r)) => r.min(measure_copy_rate(model)?),
        (None, None) => measure_copy_rate(model)?,
    };
    let base = EngineOptions {
        device: o.device.clone(),
        transfer: o.transfer.clone(),
        threads: o.threads,
        link_bytes_per_second,
        ..EngineOptions::default()
    };
    // The spec alone says whether routing is RRE; opening an engine here would also start a
    // device context and a copy pool just to read it.
    let spec =
        crate::spec::ModelSpec::from_checkpoint(&crate::checkpoint::Checkpoint::open(model)?)?;
    let rre = spec.blocks.iter().any(|b| b.router.is_rre());
    let row = |method: &str, budget: &str, s: &EngineStats| DecodeRow {
        method: method.into(),
        budget: budget.into(),
        tokens_per_second: s.tokens_per_second,
        hit_rate: s.hit_rate,
        bytes_transferred: s.bytes_transferred,
        stall_seconds: s.stall_seconds,
        hidden_fraction: s.hidden_fraction(copy_rate),
        speedup_vs_naive: 0.0,
        prefetch: (s.prefetch_issued, s.prefetch_used),
        matches_resident: true,
        transfer_bound_tokens_per_second: if s.bytes_transferred == 0 {
            f64::INFINITY
        } else {
            s.tokens as f64 / (s.bytes_transferred as f64 / copy_rate)
        },
    };
    let mut rows = Vec::new();
    let resident = workload::run_model(model, base.clone(), w, None)?;
    rows.push(row("resident", "-", &resident.stats));
    let prefetch = if rre { PrefetchMode::Exact } else { PrefetchMode::Gate };
    let methods: [(&str, PolicyKind, PrefetchMode, bool); 4] = [
        ("naive", PolicyKind::Lru, PrefetchMode::None, true),
        ("lru", PolicyKind::Lru, PrefetchMode::None, false),
        ("lfu", PolicyKind::Lfu, PrefetchMode::None, false),
        (if rre { "lru+exact" } else { "lru+gate" }, PolicyKind::Lru, prefetch, false),
    ];
    for budget in budgets {
        let mut naive_tps = 0.0;
        for (name, policy, prefetch, naive) in methods {
            if name == "lfu" && !o.lfu {
                continue;
            }
            let opts = EngineOptions {
                budget: Some(budget.clone()),
                policy,
                prefetch,
                naive,
                ..base.clone()
            };
            let out = workload::run_model(model, opts, w, None)?;
            let mut r = row(name, budget, &out.stats);
            r.matches_resident = bits(&out.hidden) == bits(&resident.hidden);
            if naive {
                naive_tps = r.tokens_per_second;
            }
            r.speedup_vs_naive =
                if naive_tps > 0.0 { r.tokens_per_second / naive_tps } else { 0.0 };
            rows.push(r);
        }
    }
    Ok(DecodeReport {
        copy_bytes_per_second: copy_rate,
        link_bytes_per_second,
        device: o.device.clone(),
        transfer: o.transfer.clone(),
        ceiling_given: o.ceiling_bytes_per_second.is_some(),
        rows,
    })
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

impl std::fmt::Display for DecodeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.link_bytes_per_second {
            Some(l) => writeln!(f, "copies: emulated link of {:.2} GB/s", l / 1e9)?,
            None if self.device != "cpu" || self.ceiling_given => writeln!(
                f,
                "device {}, transfer path {}; bound and hidden share against {:.2} GB/s ({})",
                self.device,
                self.transfer,
                self.copy_bytes_per_second / 1e9,
                if self.ceiling_given { "given" } else { "host copy rate, 1 thread, measured" }
            )?,
            None => writeln!(
                f,
                "copies: memcpy from the page cache, {:.2} GB/s (1 thread, measured)",
                self.copy_bytes_per_second / 1e9
            )?,
        }
        writeln!(
            f,
            "| method | budget | tokens/s | × naive | bound tok/s | of bound | hit rate | moved MB | stall s | hidden | prefetch used/issued | = resident |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|---|---|---|---|---|")?;
        for r in &self.rows {
            writeln!(
                f,
                "| {} | {} | {:.1} | {} | {} | {} | {:.1}% | {:.1} | {:.3} | {:.0}% | {}/{} | {} |",
                r.method,
                r.budget,
                r.tokens_per_second,
                if r.speedup_vs_naive > 0.0 {
                    format!("{:.2}", r.speedup_vs_naive)
                } else {
                    "-".into()
                },
                if r.transfer_bound_tokens_per_second.is_finite() {
                    format!("{:.1}", r.transfer_bound_tokens_per_second)
                } else {
                    "∞".into()
                },
                if r.transfer_bound_tokens_per_second.is_finite() {
                    format!(
                        "{:.0}%",
                        100.0 * r.tokens_per_second / r.transfer_bound_tokens_per_second
                    )
                } else {
                    "-".into()
                },
                100.0 * r.hit_rate,
                r.bytes_transferred as f64 / 1e6,
                r.stall_seconds,
                100.0 * r.hidden_fraction,
                r.prefetch.1,
                r.prefetch.0,
                if r.matches_resident { "bit-identical" } else { "DIFFERS" }
            )?;
        }
        Ok(())
    }
}
