//! The CPU engine's device: a slot arena in RAM filled by the transfer pool's copy workers,
//! computed from with the CPU backend.

use crate::block::{self, BlockInput};
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::routing::ExpertBatch;
use crate::spec::{BlockSpec, ModelSpec};
use crate::transfer::{ByteRange, CopyRequest, Fence, SlotArena, TransferPool, coalesce};

use super::offload::{Offload, SlotDevice, SlotPlan};
use super::{Engine, EngineOptions};

/// The CPU device: a slot arena in RAM filled by the transfer pool's copy workers.
pub(super) struct HostSlots {
    /// `[block][expert]` source ranges, coalesced, in packed slot order.
    ranges: Vec<Vec<Vec<ByteRange>>>,
    pool: TransferPool,
}

impl HostSlots {
    pub(super) fn new(
        ckpt: &Checkpoint,
        spec: &ModelSpec,
        plan: &SlotPlan,
        opts: &EngineOptions,
    ) -> Result<HostSlots> {
        let mut ranges = Vec::with_capacity(spec.blocks.len());
        for b in &spec.blocks {
            let mut per_expert = Vec::with_capacity(b.num_experts());
            for ex in &b.experts {
                let mut rs = Vec::new();
                for name in ex.names() {
                    let info = ckpt.info(name)?;
                    rs.push(ByteRange { file: info.file, offset: info.offset, len: info.len });
                }
                per_expert.push(coalesce(&rs));
            }
            ranges.push(per_expert);
        }
        // Each slot is its own 8-byte-aligned buffer of exactly one expert.
        let arena = std::sync::Arc::new(SlotArena::new(plan.num_slots, plan.slot_bytes as usize));
        let mmaps = (0..ckpt.files().len()).map(|i| ckpt.mmap(i).clone()).collect();
        let pool = TransferPool::new(arena, mmaps, opts.copy_threads, opts.link_bytes_per_second);
        Ok(HostSlots { ranges, pool })
    }
}

impl SlotDevice for HostSlots {
    type Fence = Fence;

    fn is_complete(fence: &Fence) -> bool {
        fence.is_complete()
    }

    fn submit(&self, block: usize, expert: usize, slot: usize) -> Result<Fence> {
        let fence = Fence::new();
        self.pool.submit(CopyRequest {
            ranges: self.ranges[block][expert].clone(),
            slot,
            fence: fence.clone(),
            label: (block, expert),
        });
        Ok(fence)
    }

    fn wait(&self, fence: &Fence) -> std::result::Result<f64, String> {
        let (waited, outcome) = fence.wait();
        outcome.map(|()| waited.as_secs_f64())
    }

    fn compute(
        &self,
        engine: &Engine,
        block: &BlockSpec,
        input: &BlockInput,
        batch: &ExpertBatch,
        slot: usize,
    ) -> Result<Vec<f32>> {
        let h = engine.spec.hidden_size;
        let guard = self.pool.arena().read(slot);
        let w = block::expert_weights_packed(block, h, &engine.spec.dtype, guard.bytes())?;
        let x = block::gather(input.hidden, h, &batch.tokens);
        let mut y = vec![0f32; batch.tokens.len() * h];
        engine.backend().expert_ffn(block.ffn, &w, &x, batch.tokens.len(), &mut y)?;
        Ok(y)
    }

    fn inject_failure(&self, n: u64) {
        self.pool.inject_failure(n);
    }
}

/// The CPU engine's offloaded path.
pub(super) fn open_host(
    ckpt: &Checkpoint,
    spec: &ModelSpec,
    budget: &str,
    opts: &EngineOptions,
) -> Result<Offload<HostSlots>> {
    let plan = SlotPlan::new(spec, budget, opts)?;
    let dev = HostSlots::new(ckpt, spec, &plan, opts)?;
    Offload::new(spec, plan, plan.num_slots, opts, dev)
}
