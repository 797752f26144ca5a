//! The offloaded engine path on a CUDA device: the same schedule, cache, prefetch and stats as
//! the CPU path ([`super::offload::Offload`]), with slots in device memory
//! ([`DeviceSlots`], carved from the budget), misses uploaded by an [`Uploader`] on the copy
//! stream (registered mmap, pinned ring or pageable; `EngineOptions::transfer`) and experts
//! computed by cuBLAS from their slot ([`CudaBackend::expert_ffn_slot`]): the compute stream
//! waits on the slot's copy event, never on the whole device.
//!
//! Output rows of each expert come back to the host and are combined there by
//! [`crate::block::combine`] in a fixed order, exactly as on the resident path (whose
//! [`crate::backend::Backend::expert_ffn`] runs the same kernels on weights uploaded per
//! call), so offloaded and resident runs give identical bits. Routing and shared experts go
//! through the backend's generic trait (router GEMM on the device, shared-expert weights
//! uploaded per call; their bytes are still charged to the budget, as on the CPU).
//!
//! Without the `cuda` feature this compiles against the stub backend and `open` fails with
//! [`crate::Error::NotCompiledWithCuda`] at `CudaBackend::new`, before reaching here.

use std::time::Instant;

use crate::backend::cuda::{
    CudaBackend, DeviceSlots, ExpertLayout, Fence, TransferOptions, TransferPath, Uploader,
};
use crate::block::{self, BlockInput};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::routing::ExpertBatch;
use crate::spec::{BlockSpec, ModelSpec};

use super::offload::{Offload, SlotDevice, SlotPlan};
use super::{Engine, EngineOptions};

/// Device slots, their uploader and the backend computing from them.
pub(super) struct CudaSlots {
    gpu: CudaBackend,
    slots: DeviceSlots,
    uploader: Uploader,
    ckpt_sources: Vec<Vec<Vec<(usize, usize, usize)>>>,
    /// `[block][expert]` packed layouts (the order the uploader writes).
    layouts: Vec<Vec<ExpertLayout>>,
    mmaps: Vec<std::sync::Arc<memmap2::Mmap>>,
}

/// The offloaded path on `gpu`: slots for `(budget − shared-expert bytes) / largest expert`
/// experts (fewer only if 256-byte slot alignment does not fit that many).
pub(super) fn open(
    ckpt: &Checkpoint,
    spec: &ModelSpec,
    budget: &str,
    opts: &EngineOptions,
    gpu: CudaBackend,
) -> Result<Offload<CudaSlots>> {
    let plan = SlotPlan::new(spec, budget, opts)?;
    let path: TransferPath = opts.transfer.parse()?;
    let mut layouts = Vec::with_capacity(spec.blocks.len());
    let mut sources = Vec::with_capacity(spec.blocks.len());
    for b in &spec.blocks {
        let mut ls = Vec::with_capacity(b.num_experts());
        let mut ss = Vec::with_capacity(b.num_experts());
        for e in 0..b.num_experts() {
            ls.push(ExpertLayout::of_expert(ckpt, b, e)?);
            ss.push(source_ranges(ckpt, b, e)?);
        }
        layouts.push(ls);
        sources.push(ss);
    }
    let slot_budget = plan.budget_bytes.saturating_sub(plan.pinned_bytes);
    // Only the slots the cache may use are allocated: never more device memory than the budget.
    let usable = crate::backend::cuda::slots_in_budget(slot_budget, plan.slot_bytes as usize)
        .min(plan.num_slots);
    plan.check(usable)?;
    let stride = crate::backend::cuda::slot_stride(plan.slot_bytes as usize) as u64;
    let slots = DeviceSlots::new(&gpu, plan.slot_bytes as usize, usable as u64 * stride)?;
    let topts = TransferOptions { path, ..TransferOptions::default() };
    let uploader = Uploader::for_checkpoint(&slots, topts, ckpt)?;
    let mmaps = (0..ckpt.files().len()).map(|i| ckpt.mmap(i).clone()).collect();
    let num_slots = slots.num_slots();
    let dev = CudaSlots { gpu, slots, uploader, ckpt_sources: sources, layouts, mmaps };
    Offload::new(spec, plan, num_slots, opts, dev)
}

/// `(file, offset, len)` of expert `e`'s tensors in packed slot order.
fn source_ranges(ckpt: &Checkpoint, b: &BlockSpec, e: usize) -> Result<Vec<(usize, usize, usize)>> {
    let t = b
        .experts
        .get(e)
        .ok_or_else(|| Error::input(format!("block {} has no expert {e}", b.prefix)))?;
    t.names().map(|n| ckpt.info(n).map(|i| (i.file, i.offset, i.len))).collect()
}

impl SlotDevice for CudaSlots {
    type Fence = Fence;

    fn is_complete(fence: &Fence) -> bool {
        // A failed query means a broken context: treat the copy as over so nothing waits on
        // it forever; the next device call reports the error.
        fence.is_complete().unwrap_or(true)
    }

    fn submit(&self, block: usize, expert: usize, slot: usize) -> Result<Fence> {
        let ranges = &self.ckpt_sources[block][expert];
        let mut src: Vec<&[u8]> = Vec::with_capacity(ranges.len());
        for &(file, off, len) in ranges {
            let map = &self.mmaps[file];
            src.push(map.get(off..off + len).ok_or_else(|| {
                Error::input(format!("expert {expert} of block {block}: range past its file"))
            })?);
        }
        self.uploader.upload(&src, slot)
    }

    fn wait(&self, fence: &Fence) -> std::result::Result<f64, String> {
        // Waits on the copy's own event (not the device) so that stall time is measured; the
        // compute stream also waits on the slot's event, so the order holds either way.
        let t = Instant::now();
        if fence.is_complete().map_err(|e| e.to_string())? {
            return Ok(0.0);
        }
        fence.wait().map_err(|e| e.to_string())?;
        Ok(t.elapsed().as_secs_f64())
    }

    fn compute(
        &self,
        engine: &Engine,
        block: &BlockSpec,
        input: &BlockInput,
        batch: &ExpertBatch,
        slot: usize,
    ) -> Result<Vec<f32>> {
        let h = engine.spec().hidden_size;
        let layout = &self.layouts[block.index][batch.expert];
        let x = block::gather(input.hidden, h, &batch.tokens);
        let mut y = vec![0f32; batch.tokens.len() * h];
        self.gpu.expert_ffn_slot(
            block.ffn,
            &self.slots,
            slot,
            layout,
            &x,
            batch.tokens.len(),
            &mut y,
        )?;
        Ok(y)
    }

    fn inject_failure(&self, n: u64) {
        self.uploader.inject_failure(n);
    }
}
