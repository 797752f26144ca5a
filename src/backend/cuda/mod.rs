//! The CUDA backend (cudarc): device discovery that never panics, NVRTC kernels, cuBLAS expert
//! FFNs, device slots carved from a budget, and the three host→device transfer paths
//! (registered mmap, pinned staging ring, pageable) with event fences.
//!
//! The module exists in every build, candle-style: without the `cuda` feature the same public
//! names exist and their constructors return [`crate::Error::NotCompiledWithCuda`], so callers
//! never write `cfg`. Device-free parts (paths, layouts, copy planning, the registration LRU,
//! report formatting) are always compiled and unit-tested without a GPU.
//!
//! Streams: one compute stream and one copy stream per backend. A copy into a slot waits (on
//! the GPU) for the compute stream to have finished reading the slot's previous expert, then
//! records the slot's "ready" event; the compute stream waits on that event before reading.
//! Nothing on the hot path synchronises the whole device.
//!
//! How the engine uses it (one expert of one block, offloaded):
//!
//! ```no_run
//! use moe_offload::backend::cuda::{CudaBackend, DeviceSlots, ExpertLayout, TransferOptions, Uploader};
//! use moe_offload::{Checkpoint, ModelSpec};
//! # fn main() -> moe_offload::Result<()> {
//! let ckpt = Checkpoint::open("model")?;
//! let spec = ModelSpec::from_checkpoint(&ckpt)?;
//! let block = &spec.blocks[0];
//! let layout = ExpertLayout::of_expert(&ckpt, block, 3)?;
//! let gpu = CudaBackend::new(0)?; // errors, never panics, without a driver
//! let slots = DeviceSlots::new(&gpu, layout.total_bytes, 8 << 30)?; // slots under an 8 GiB budget
//! let up = Uploader::for_checkpoint(&slots, TransferOptions::default(), &ckpt)?;
//! let fence = up.upload(&ExpertLayout::sources(&ckpt, block, 3)?, 0)?; // returns at once
//! let (rows, x) = (2, vec![0.0f32; 2 * layout.hidden]);
//! let mut y = vec![0.0f32; x.len()];
//! // The compute stream waits on slot 0's copy event; the host does not wait on `fence`.
//! gpu.expert_ffn_slot(block.ffn, &slots, 0, &layout, &x, rows, &mut y)?;
//! # let _ = fence;
//! # Ok(())
//! # }
//! ```

mod bench;
mod options;
pub mod plan;

pub use bench::{OverlapResult, TransferBenchOptions, TransferBenchReport, TransferBenchRow};
pub use options::{
    CudaInfo, DEFAULT_RING_THREADS, ExpertLayout, LD_LIBRARY_PATH_HINT, Libraries, SLOT_ALIGN,
    SlotExpert, TensorSlot, TransferOptions, TransferPath, TransferStats, parse_list, slot_stride,
    slots_in_budget,
};

#[cfg(feature = "cuda")]
mod block;
#[cfg(feature = "cuda")]
mod compute;
#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
mod kernels;
#[cfg(feature = "cuda")]
mod slots;
#[cfg(feature = "cuda")]
mod transfer;

#[cfg(feature = "cuda")]
pub use compute::CudaBackend;
#[cfg(feature = "cuda")]
pub use device::{libraries, probe};
#[cfg(feature = "cuda")]
pub use slots::DeviceSlots;
#[cfg(feature = "cuda")]
pub use transfer::{Fence, Uploader};

#[cfg(not(feature = "cuda"))]
mod stub;
#[cfg(not(feature = "cuda"))]
pub use stub::{CudaBackend, DeviceSlots, Fence, Uploader, libraries, probe};

/// Whether this build has the CUDA backend compiled in.
pub const COMPILED: bool = cfg!(feature = "cuda");

/// Runs `bench transfer`: H2D rate of each transfer path copying whole experts of a model into
/// device slots, and the pinned-memory ceiling measured in the same run.
pub fn bench_transfer(opts: &TransferBenchOptions) -> crate::Result<TransferBenchReport> {
    #[cfg(feature = "cuda")]
    {
        bench::run(opts)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = opts;
        Err(crate::Error::NotCompiledWithCuda)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_send_and_sync() {
        // The engine shares these across its copy workers and compute threads.
        fn check<T: Send + Sync>() {}
        check::<CudaBackend>();
        check::<DeviceSlots>();
        check::<Uploader>();
        check::<Fence>();
    }
}
