//! The engine: the public object a serving stack holds. It owns the mapped checkpoint, the
//! model spec, a compute backend and — when a budget is given — the expert cache, the slot
//! arena and the transfer pipeline; it runs one block or all blocks in order and keeps stats.
//! With `device: "cuda"` (feature `cuda`) the same schedule runs on the GPU: slots in device
//! memory, misses uploaded over `transfer` (see `cuda_offload.rs`).
//!
//! ```no_run
//! use moe_offload::engine::{Engine, EngineOptions};
//! # fn main() -> moe_offload::Result<()> {
//! let opts = EngineOptions { budget: Some("20%".into()), ..EngineOptions::default() };
//! let engine = Engine::open("target/moe-offload-demo/demo-glam", opts)?;
//! let h = engine.spec().hidden_size;
//! let mut hidden = vec![0.1f32; 4 * h]; // 4 tokens
//! engine.step(&mut hidden, 4, 1, None, None)?;
//! println!("{:?}", engine.stats());
//! # Ok(()) }
//! ```

mod cuda_offload;
mod host_slots;
mod offload;
mod stats;

use std::path::Path;
use std::str::FromStr;
use std::time::Instant;

use parking_lot::Mutex;

pub use stats::EngineStats;

use crate::backend::cuda::CudaBackend;
use crate::backend::{Backend, Device};
use crate::block::{self, BlockInput, BlockOutput};
use crate::cache::{ExpertKey, PolicyKind};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::spec::ModelSpec;

/// How experts are fetched ahead of need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrefetchMode {
    /// Fetch on demand only.
    #[default]
    None,
    /// Apply the next block's router to the current block's input and fetch its guesses
    /// (learned routers).
    Gate,
    /// Routing of every RRE block is known from token ids: fetch the next block's experts
    /// exactly (PanGu-Σ models).
    Exact,
}

impl FromStr for PrefetchMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(PrefetchMode::None),
            "gate" => Ok(PrefetchMode::Gate),
            "exact" => Ok(PrefetchMode::Exact),
            other => Err(Error::InvalidOption(format!(
                "unknown prefetch mode {other:?} (none, gate, exact)"
            ))),
        }
    }
}

impl std::fmt::Display for PrefetchMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PrefetchMode::None => "none",
            PrefetchMode::Gate => "gate",
            PrefetchMode::Exact => "exact",
        })
    }
}

/// Options of [`Engine::open`].
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// `cpu`, or `cuda` / `cuda:N` (an error without the `cuda` feature).
    pub device: String,
    /// CUDA host→device path of the offloaded engine: `auto`, `registered`, `pinned[:N]`,
    /// `pageable` (ignored on the CPU).
    pub transfer: String,
    /// Byte budget of the expert cache (`2GiB`, `20%` of total expert bytes, …); `None` runs
    /// fully resident, experts used straight from the mapping.
    pub budget: Option<String>,
    /// Eviction policy.
    pub policy: PolicyKind,
    /// Prefetch mode.
    pub prefetch: PrefetchMode,
    /// Compute threads (0 = one per core).
    pub threads: usize,
    /// Copy worker threads.
    pub copy_threads: usize,
    /// Belady: the future access sequence (from a trace or a recorded first pass).
    pub future: Option<Vec<ExpertKey>>,
    /// Static: experts to pin.
    pub pinned: Option<Vec<ExpertKey>>,
    /// Emulated host→device link rate in bytes/s for the CPU backend (copies are memcpys
    /// otherwise, far faster than PCIe): each copy takes at least `bytes / rate`.
    pub link_bytes_per_second: Option<f64>,
    /// The naive baseline: no cache; every needed expert is fetched synchronously, then
    /// computed. Needs a budget (it uses one slot of it).
    pub naive: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            device: "cpu".into(),
            transfer: "auto".into(),
            budget: None,
            policy: PolicyKind::Lru,
            prefetch: PrefetchMode::None,
            threads: 0,
            copy_threads: 1,
            future: None,
            pinned: None,
            link_bytes_per_second: None,
            naive: false,
        }
    }
}

/// A model opened for serving. `Send + Sync`: calls from several threads are safe and are
/// served one at a time (the cache is one shared resource).
pub struct Engine {
    ckpt: Checkpoint,
    spec: ModelSpec,
    backend: Box<dyn Backend>,
    offload: Option<Box<dyn offload::OffloadPath>>,
    stats: Mutex<EngineStats>,
    /// Serialises forward calls of the resident path (the offloaded path locks its state).
    resident_lock: Mutex<()>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.ckpt.root())
            .field("backend", &self.backend.name())
            .field("offloaded", &self.offload.is_some())
            .finish()
    }
}

impl Engine {
    /// Opens a model folder with `opts`.
    pub fn open(model: impl AsRef<Path>, opts: EngineOptions) -> Result<Engine> {
        let ckpt = Checkpoint::open(model)?;
        let spec = ModelSpec::from_checkpoint(&ckpt)?;
        let device: Device = opts.device.parse()?;
        // Checked on every device so that a typo is an error, not silently ignored on the CPU.
        opts.transfer.parse::<crate::backend::cuda::TransferPath>()?;
        let (backend, offload): (Box<dyn Backend>, Option<Box<dyn offload::OffloadPath>>) =
            match (device, &opts.budget) {
                (Device::Cuda(ordinal), Some(b)) => {
                    let gpu = CudaBackend::new(ordinal)?;
                    let o = cuda_offload::open(&ckpt, &spec, b, &opts, gpu.clone())?;
                    (Box::new(gpu), Some(Box::new(o)))
                }
                (_, budget) => {
                    let backend = block::io::backend_for(&opts.device, opts.threads)?;
                    let o = match budget {
                        Some(b) => Some(Box::new(host_slots::open_host(&ckpt, &spec, b, &opts)?)
                            as Box<dyn offload::OffloadPath>),
                        None => None,
                    };
                    (backend, o)
                }
            };
        let offload = match offload {
            Some(o) => Some(o),
            None => {
                if opts.naive {
                    return Err(Error::InvalidOption("the naive method needs a --budget".into()));
                }
                None
            }
        };
        let budget_bytes = offload.as_ref().map_or(spec.total_expert_bytes(), |o| o.budget_bytes());
        let stats = EngineStats { budget_bytes, ..EngineStats::default() };
        Ok(Engine {
            ckpt,
            spec,
            backend,
            offload,
            stats: Mutex::new(stats),
            resident_lock: Mutex::new(()),
        })
    }

    /// The model spec.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The mapped checkpoint.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.ckpt
    }

    /// The compute backend.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// Whether experts are offloaded (a budget was given).
    pub fn is_offloaded(&self) -> bool {
        self.offload.is_some()
    }

    /// A snapshot of the stats, derived fields filled in.
    pub fn stats(&self) -> EngineStats {
        let mut s = self.stats.lock().clone();
        if let Some(o) = &self.offload {
            s.peak_resident_bytes = o.peak_resident_bytes();
        } else {
            s.peak_resident_bytes = self.spec.total_expert_bytes()
                + self.spec.blocks.iter().map(|b| b.shared_expert_bytes).sum::<u64>();
        }
        s.finish();
        s
    }

    /// Clears counters (the cache keeps its contents).
    pub fn reset_stats(&self) {
        let mut s = self.stats.lock();
        let budget = s.budget_bytes;
        *s = EngineStats { budget_bytes: budget, ..EngineStats::default() };
    }

    /// Test hook: the `n`-th expert copy from now fails.
    pub fn inject_copy_failure(&self, n: u64) {
        if let Some(o) = &self.offload {
            o.inject_failure(n);
        }
    }

    /// Runs block `index` (execution order) on `input`.
    pub fn forward_block(&self, index: usize, input: &BlockInput) -> Result<BlockOutput> {
        self.forward_block_with_next(index, input, None, 0)
    }

    fn forward_block_with_next(
        &self,
        index: usize,
        input: &BlockInput,
        next: Option<usize>,
        step: usize,
    ) -> Result<BlockOutput> {
        let block = self.spec.blocks.get(index).ok_or_else(|| {
            Error::input(format!(
                "block {index} out of range (model has {})",
                self.spec.blocks.len()
            ))
        })?;
        match &self.offload {
            Some(o) => {
                let next_block = next.and_then(|n| self.spec.blocks.get(n));
                let (out, record) = o.forward_block(self, block, input, next_block, step)?;
                let mut s = self.stats.lock();
                s.hits += record.hits as u64;
                s.misses += (record.experts - record.hits) as u64;
                s.stall_seconds += record.stall_seconds;
                s.compute_seconds += record.compute_seconds;
                s.bytes_transferred += record.bytes_moved;
                s.prefetch_issued = o.prefetch_issued();
                s.prefetch_used = o.prefetch_used();
                s.blocks.push(record);
                Ok(out)
            }
            None => {
                let _guard = self.resident_lock.lock();
                let t = Instant::now();
                let out = block::forward(&self.ckpt, &self.spec, block, self.backend(), input)?;
                let mut s = self.stats.lock();
                let used = out.plan.per_expert.len();
                s.hits += used as u64;
                s.compute_seconds += t.elapsed().as_secs_f64();
                s.blocks.push(crate::schedule::BlockRecord {
                    step,
                    block: index,
                    experts: used,
                    hits: used,
                    compute_seconds: t.elapsed().as_secs_f64(),
                    ..Default::default()
                });
                Ok(out)
            }
        }
    }

    /// One forward step through every block in order: `h ← rmsnorm(h + block(h))`, the
    /// residual stream of a transformer with attention left out (normalised so it stays finite
    /// through many blocks). `hidden` is `[num_tokens, hidden_size]`, updated in place. Returns
    /// each block's routing plan.
    pub fn step(
        &self,
        hidden: &mut [f32],
        num_tokens: usize,
        seq_len: usize,
        token_ids: Option<&[i64]>,
        domains: Option<&[i64]>,
    ) -> Result<Vec<crate::routing::RoutingPlan>> {
        let h = self.spec.hidden_size;
        if hidden.len() != num_tokens * h {
            return Err(Error::input(format!(
                "hidden has {} values; {num_tokens} tokens × hidden size {h} need {}",
                hidden.len(),
                num_tokens * h
            )));
        }
        let step = self.stats.lock().steps as usize;
        let start = Instant::now();
        let mut plans = Vec::with_capacity(self.spec.blocks.len());
        for b in 0..self.spec.blocks.len() {
            let input = BlockInput { hidden, num_tokens, seq_len, token_ids, domains };
            let next = (b + 1 < self.spec.blocks.len()).then_some(b + 1);
            let out = self.forward_block_with_next(b, &input, next, step)?;
            residual_rmsnorm(hidden, &out.output, h);
            plans.push(out.plan);
        }
        let mut s = self.stats.lock();
        s.steps += 1;
        s.tokens += num_tokens as u64;
        s.wall_seconds += start.elapsed().as_secs_f64();
        Ok(plans)
    }
}

/// `h ← (h + y) / rms(h + y)` per token (RMSNorm without a learned scale, eps 1e-6).
pub fn residual_rmsnorm(hidden: &mut [f32], y: &[f32], h: usize) {
    for (row, yrow) in hidden.chunks_exact_mut(h).zip(y.chunks_exact(h)) {
        let mut ss = 0.0f64;
        for (a, b) in row.iter_mut().zip(yrow) {
            *a += *b;
            ss += (*a as f64) * (*a as f64);
        }
        let inv = 1.0 / ((ss / h as f64) + 1e-6).sqrt();
        for a in row.iter_mut() {
            *a = (*a as f64 * inv) as f32;
        }
    }
}
