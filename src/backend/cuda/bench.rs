//! `bench transfer`: host→device rate of each transfer path copying whole experts of a model
//! into device slots, against the pinned-memory ceiling measured in the same run. The report
//! types and their formatting are device-free; the measurement needs the `cuda` feature.

use std::path::PathBuf;

use serde::Serialize;

use super::options::{DEFAULT_RING_THREADS, TransferPath};
use crate::error::{Error, Result};

/// What to measure.
#[derive(Debug, Clone)]
pub struct TransferBenchOptions {
    /// Model folder.
    pub model: PathBuf,
    /// Paths to measure, in order.
    pub paths: Vec<TransferPath>,
    /// Timed passes over all experts of the model (after one warm-up pass).
    pub iters: usize,
    /// CUDA device ordinal.
    pub ordinal: usize,
}

impl TransferBenchOptions {
    /// The paths named by `--path` (`registered`, `pinned`, `pageable`, `all`, or any
    /// [`TransferPath`]) with `--threads` for the pinned ring.
    pub fn paths_for(path: &str, threads: &[usize]) -> Result<Vec<TransferPath>> {
        let threads =
            if threads.is_empty() { vec![DEFAULT_RING_THREADS] } else { threads.to_vec() };
        let ring = threads.iter().map(|&t| TransferPath::PinnedRing { threads: t });
        match path.trim().to_ascii_lowercase().as_str() {
            "all" => Ok(std::iter::once(TransferPath::Registered)
                .chain(ring)
                .chain(std::iter::once(TransferPath::Pageable))
                .collect()),
            "pinned" | "pinned-ring" => Ok(ring.collect()),
            other => Ok(vec![other.parse::<TransferPath>()?]),
        }
    }
}

/// One measured path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransferBenchRow {
    /// The path (`registered`, `pinned:4`, `pageable`).
    pub path: String,
    /// Bytes copied in the timed passes.
    pub bytes: u64,
    /// Wall time of the timed passes, from the first upload to the last fence.
    pub seconds: f64,
    /// `bytes / seconds / 1e9`.
    pub gbps: f64,
    /// `gbps` over the pinned ceiling.
    pub fraction_of_ceiling: f64,
    /// Bytes that went by registered DMA, staging, pageable copies (after fallbacks).
    pub registered_bytes: u64,
    /// Bytes staged through the pinned ring.
    pub staged_bytes: u64,
    /// Bytes copied from pageable memory.
    pub pageable_bytes: u64,
}

/// The result of `bench transfer`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransferBenchReport {
    /// GPU name.
    pub device: String,
    /// Model folder.
    pub model: String,
    /// Experts copied per pass.
    pub experts: usize,
    /// Bytes per pass.
    pub bytes_per_pass: u64,
    /// Device copy rate from one big ordinary pinned buffer, GB/s.
    pub ceiling_gbps: f64,
    /// One row per path.
    pub rows: Vec<TransferBenchRow>,
    /// Copy/compute overlap in one block (needs a block with two experts).
    pub overlap: Option<OverlapResult>,
}

/// Copy of one expert (auto path) while FFNs of another expert run, against each alone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OverlapResult {
    /// Tokens per FFN.
    pub tokens: usize,
    /// FFN rounds (chosen so compute takes about as long as the copy).
    pub rounds: usize,
    /// Compute alone, ms.
    pub compute_ms: f64,
    /// Copy alone, ms.
    pub copy_ms: f64,
    /// Both at once, ms.
    pub both_ms: f64,
}

impl OverlapResult {
    /// Fraction of the shorter of the two hidden under the other (1 = perfect overlap).
    pub fn hidden_fraction(&self) -> f64 {
        let saved = self.compute_ms + self.copy_ms - self.both_ms;
        (saved / self.compute_ms.min(self.copy_ms).max(1e-9)).clamp(0.0, 1.0)
    }

    /// Block time over max(compute, copy) (1 = perfect; the target is ≤ 1.1).
    pub fn block_ratio(&self) -> f64 {
        self.both_ms / self.compute_ms.max(self.copy_ms).max(1e-9)
    }
}

impl TransferBenchRow {
    /// A row from a timing; the fraction is filled against `ceiling_gbps`.
    pub fn new(path: TransferPath, bytes: u64, seconds: f64, ceiling_gbps: f64) -> Self {
        let gbps = if seconds > 0.0 { bytes as f64 / seconds / 1e9 } else { 0.0 };
        TransferBenchRow {
            path: path.to_string(),
            bytes,
            seconds,
            gbps,
            fraction_of_ceiling: if ceiling_gbps > 0.0 { gbps / ceiling_gbps } else { 0.0 },
            registered_bytes: 0,
            staged_bytes: 0,
            pageable_bytes: 0,
        }
    }
}

impl TransferBenchReport {
    /// A markdown table (also what `tools/gpu-check.sh` commits).
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "Host→device transfer on {} ({} experts, {:.2} GB per pass); pinned ceiling \
             {:.1} GB/s.\n\n| path | GB/s | of ceiling | GB copied | seconds | route (reg/staged/pageable GB) |\n|---|---:|---:|---:|---:|---|\n",
            self.device,
            self.experts,
            self.bytes_per_pass as f64 / 1e9,
            self.ceiling_gbps
        );
        for r in &self.rows {
            s += &format!(
                "| {} | {:.1} | {:.0}% | {:.2} | {:.3} | {:.2} / {:.2} / {:.2} |\n",
                r.path,
                r.gbps,
                100.0 * r.fraction_of_ceiling,
                r.bytes as f64 / 1e9,
                r.seconds,
                r.registered_bytes as f64 / 1e9,
                r.staged_bytes as f64 / 1e9,
                r.pageable_bytes as f64 / 1e9
            );
        }
        if let Some(o) = &self.overlap {
            s += &format!(
                "\nOverlap in one block ({} FFN rounds of {} tokens from one slot while the next \
                 expert is copied into another): compute {:.2} ms, copy {:.2} ms, both {:.2} ms \
                 → {:.0}% of the shorter hidden, block time {:.2}× max(compute, copy).\n",
                o.rounds,
                o.tokens,
                o.compute_ms,
                o.copy_ms,
                o.both_ms,
                100.0 * o.hidden_fraction(),
                o.block_ratio()
            );
        }
        s
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::Cuda(format!("report JSON: {e}")))
    }
}

#[cfg(feature = "cuda")]
pub(crate) use run::run;

#[cfg(feature = "cuda")]
mod run {
    use std::time::Instant;

    use cudarc::driver::sys;

    use super::super::compute::{CudaBackend, dptr};
    use super::super::device::drv;
    use super::super::options::{ExpertLayout, TransferOptions};
    use super::super::slots::DeviceSlots;
    use super::super::transfer::Uploader;
    use super::*;
    use crate::checkpoint::Checkpoint;
    use crate::spec::ModelSpec;

    /// Bytes of the ceiling copy: large enough that launch latency is noise.
    const CEILING_BYTES: usize = 1 << 30;

    pub(crate) fn run(opts: &TransferBenchOptions) -> Result<TransferBenchReport> {
        let ckpt = Checkpoint::open(&opts.model)?;
        let spec = ModelSpec::from_checkpoint(&ckpt)?;
        let mut experts = Vec::new();
        let mut max_bytes = 0;
        for b in &spec.blocks {
            for e in 0..b.num_experts() {
                max_bytes = max_bytes.max(ExpertLayout::of_expert(&ckpt, b, e)?.total_bytes);
                experts.push((b, e));
            }
        }
        if experts.is_empty() {
            return Err(Error::input("the model has no experts to copy".to_string()));
        }
        let backend = CudaBackend::new(opts.ordinal)?;
        let ceiling = pinned_ceiling(&backend)?;
        let stride = super::super::options::slot_stride(max_bytes) as u64;
        let slots = DeviceSlots::new(&backend, max_bytes, 2 * stride)?;
        let mut rows = Vec::new();
        let mut bytes_per_pass = 0u64;
        for &path in &opts.paths {
            let topts = TransferOptions { path, ..Default::default() };
            let up = Uploader::for_checkpoint(&slots, topts, &ckpt)?;
            let pass = |up: &Uploader| -> Result<u64> {
                let mut bytes = 0;
                let mut last = None;
                for (i, (b, e)) in experts.iter().enumerate() {
                    let src = ExpertLayout::sources(&ckpt, b, *e)?;
                    let f = up.upload(&src, i % slots.num_slots())?;
                    bytes += f.bytes();
                    last = Some(f);
                }
                if let Some(f) = last {
                    f.wait()?;
                }
                Ok(bytes)
            };
            // Warm-up: registers windows, allocates the ring, faults pages in.
            bytes_per_pass = pass(&up)?;
            let before = up.stats();
            let t0 = Instant::now();
            let mut bytes = 0;
            for _ in 0..opts.iters.max(1) {
                bytes += pass(&up)?;
            }
            let secs = t0.elapsed().as_secs_f64();
            let after = up.stats();
            let mut row = TransferBenchRow::new(up.path(), bytes, secs, ceiling);
            row.registered_bytes = after.registered_bytes - before.registered_bytes;
            row.staged_bytes = after.staged_bytes - before.staged_bytes;
            row.pageable_bytes = after.pageable_bytes - before.pageable_bytes;
            rows.push(row);
        }
        Ok(TransferBenchReport {
            device: backend.info().name.clone(),
            model: opts.model.display().to_string(),
            experts: experts.len(),
            bytes_per_pass,
            ceiling_gbps: ceiling,
            rows,
            overlap: match spec.blocks.iter().find(|b| b.num_experts() >= 2) {
                Some(b) => Some(overlap(&backend, &slots, &ckpt, b)?),
                None => None,
            },
        })
    }

    /// Tokens per FFN in the overlap measurement: large enough that the GEMMs are
    /// compute-bound (a Mixtral-size bf16 expert takes ~0.5 ms at 1024 tokens on an H200).
    const OVERLAP_TOKENS: usize = 1024;

    fn overlap(
        backend: &CudaBackend,
        slots: &DeviceSlots,
        ckpt: &Checkpoint,
        block: &crate::spec::BlockSpec,
    ) -> Result<OverlapResult> {
        let up = Uploader::for_checkpoint(slots, TransferOptions::default(), ckpt)?;
        let layout = ExpertLayout::of_expert(ckpt, block, 0)?;
        let src1 = ExpertLayout::sources(ckpt, block, 1)?;
        up.upload(&ExpertLayout::sources(ckpt, block, 0)?, 0)?.wait()?;
        let tokens = OVERLAP_TOKENS;
        let xd = backend.device_input(&vec![0.01f32; tokens * layout.hidden])?;
        let ffn = |rounds| backend.time_slot_ffn(block.ffn, slots, 0, &layout, &xd, tokens, rounds);
        ffn(1)?; // warm-up (cuBLAS heuristics, pool)
        let one = ffn(3)? / 3.0;
        up.upload(&src1, 1)?.wait()?; // registers expert 1's windows outside the timings
        let t0 = Instant::now();
        up.upload(&src1, 1)?.wait()?;
        let copy = t0.elapsed().as_secs_f64();
        let rounds = ((copy / one.max(1e-9)).round() as usize).clamp(1, 1000);
        let compute = ffn(rounds)?;
        let t0 = Instant::now();
        let fence = up.upload(&src1, 1)?;
        ffn(rounds)?;
        fence.wait()?;
        let both = t0.elapsed().as_secs_f64();
        Ok(OverlapResult {
            tokens,
            rounds,
            compute_ms: compute * 1e3,
            copy_ms: copy * 1e3,
            both_ms: both * 1e3,
        })
    }

    /// GB/s of a 1 GiB copy from ordinary pinned memory, best of 3, timed with events.
    fn pinned_ceiling(backend: &CudaBackend) -> Result<f64> {
        let gpu = &backend.gpu;
        let copy = &gpu.copy;
        // SAFETY: ordinary pinned memory (flags 0); filled below before it is copied.
        let mut host = unsafe { gpu.ctx.alloc_pinned_with_flags::<u8>(CEILING_BYTES, 0) }
            .map_err(|e| drv("allocating the pinned ceiling buffer", e))?;
        host.as_mut_slice().map_err(|e| drv("pinned buffer", e))?.fill(1);
        let src = host.as_ptr().map_err(|e| drv("pinned buffer", e))? as usize;
        // SAFETY: only written by the copies below, never read.
        let dev = unsafe { copy.alloc::<u8>(CEILING_BYTES) }
            .map_err(|e| drv("allocating the ceiling device buffer", e))?;
        let dst = dptr(&dev, copy);
        let mut best = 0.0f64;
        for _ in 0..3 {
            let start = copy
                .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| drv("event", e))?;
            // SAFETY: both buffers hold CEILING_BYTES and outlive the synchronize below.
            unsafe {
                sys::cuMemcpyHtoDAsync_v2(dst, src as *const _, CEILING_BYTES, copy.cu_stream())
            }
            .result()
            .map_err(|e| drv("ceiling copy", e))?;
            let end = copy
                .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| drv("event", e))?;
            let ms = start.elapsed_ms(&end).map_err(|e| drv("timing the ceiling copy", e))?;
            best = best.max(CEILING_BYTES as f64 / (ms as f64 / 1e3) / 1e9);
        }
        copy.synchronize().map_err(|e| drv("ceiling copy", e))?;
        Ok(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_for_expands_all_and_threads() {
        let all = TransferBenchOptions::paths_for("all", &[1, 4, 8]).unwrap();
        assert_eq!(
            all,
            vec![
                TransferPath::Registered,
                TransferPath::PinnedRing { threads: 1 },
                TransferPath::PinnedRing { threads: 4 },
                TransferPath::PinnedRing { threads: 8 },
                TransferPath::Pageable
            ]
        );
        assert_eq!(TransferBenchOptions::paths_for("pinned", &[]).unwrap().len(), 1);
        assert_eq!(
            TransferBenchOptions::paths_for("pageable", &[2]).unwrap(),
            vec![TransferPath::Pageable]
        );
        assert!(TransferBenchOptions::paths_for("nvlink", &[1]).is_err());
    }

    #[test]
    fn report_formats_rates_against_the_ceiling() {
        let row = TransferBenchRow::new(TransferPath::Registered, 55_000_000_000, 1.0, 55.0);
        assert!((row.gbps - 55.0).abs() < 1e-9 && (row.fraction_of_ceiling - 1.0).abs() < 1e-9);
        let rep = TransferBenchReport {
            device: "NVIDIA H200".into(),
            model: "m".into(),
            experts: 32,
            bytes_per_pass: 11_000_000_000,
            ceiling_gbps: 55.0,
            rows: vec![row],
            overlap: Some(OverlapResult {
                tokens: 1024,
                rounds: 12,
                compute_ms: 6.0,
                copy_ms: 6.4,
                both_ms: 6.6,
            }),
        };
        let o = rep.overlap.as_ref().unwrap();
        assert!((o.hidden_fraction() - 5.8 / 6.0).abs() < 1e-9);
        assert!((o.block_ratio() - 6.6 / 6.4).abs() < 1e-9);
        let md = rep.to_markdown();
        assert!(md.contains("| registered | 55.0 | 100% |"), "{md}");
        assert!(md.contains("97% of the shorter hidden"), "{md}");
        let v: serde_json::Value = serde_json::from_str(&rep.to_json().unwrap()).unwrap();
        assert_eq!(v["rows"][0]["path"], "registered");
        assert_eq!(TransferBenchRow::new(TransferPath::Pageable, 1, 0.0, 0.0).gbps, 0.0);
    }
}
