//! [`DeviceSlots`]: one device allocation carved into equal expert slots (never more than the
//! budget), each with two events that order the copy and compute streams without a device-wide
//! synchronize: `ready` (recorded on the copy stream after a slot is written; the compute
//! stream waits on it before reading) and `released` (recorded on the compute stream after a
//! read; the copy stream waits on it before overwriting the slot).

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream};

use super::compute::{CudaBackend, dptr};
use super::device::{Gpu, drv};
use super::options::{slot_stride, slots_in_budget};
use crate::error::{Error, Result};

/// Expert slots in device memory.
#[derive(Clone)]
pub struct DeviceSlots {
    inner: Arc<SlotsInner>,
}

struct SlotsInner {
    gpu: Arc<Gpu>,
    buf: Option<CudaSlice<u8>>,
    base: u64,
    slot_bytes: usize,
    stride: usize,
    ready: Vec<CudaEvent>,
    released: Vec<CudaEvent>,
}

impl Drop for SlotsInner {
    fn drop(&mut self) {
        // Copies or kernels may still use the memory: wait for both streams (not the device)
        // before the allocation is freed on the compute stream (cudarc's free does not make
        // the context current, and this may run on any thread).
        let _ = self.gpu.ctx.bind_to_thread();
        let _ = self.gpu.copy.synchronize();
        let _ = self.gpu.compute.synchronize();
        drop(self.buf.take());
    }
}

impl std::fmt::Debug for DeviceSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSlots")
            .field("num_slots", &self.num_slots())
            .field("slot_bytes", &self.inner.slot_bytes)
            .finish()
    }
}

impl DeviceSlots {
    /// As many slots of `slot_bytes` as fit in `budget` bytes, in one allocation on `backend`'s
    /// device. Errors if not even one fits or the device is out of memory.
    pub fn new(backend: &CudaBackend, slot_bytes: usize, budget: u64) -> Result<DeviceSlots> {
        let n = slots_in_budget(budget, slot_bytes);
        if n == 0 || slot_bytes == 0 {
            return Err(Error::BudgetTooSmall {
                budget,
                reason: format!("not one slot of {slot_bytes} bytes fits"),
            });
        }
        let gpu = backend.gpu.clone();
        let stride = slot_stride(slot_bytes);
        // SAFETY: slot bytes are only read after an upload wrote them (the `ready` event).
        let buf = unsafe { gpu.compute.alloc::<u8>(n * stride) }
            .map_err(|e| drv(&format!("allocating {n} slots of {stride} bytes"), e))?;
        // One-time: the copy stream must not touch the memory before the (stream-ordered)
        // allocation on the compute stream has happened.
        gpu.compute.synchronize().map_err(|e| drv("allocating slots", e))?;
        let base = dptr(&buf, &gpu.compute);
        let event = || {
            gpu.ctx
                .new_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING))
                .map_err(|e| drv("creating a slot event", e))
        };
        let ready = (0..n).map(|_| event()).collect::<Result<Vec<_>>>()?;
        let released = (0..n).map(|_| event()).collect::<Result<Vec<_>>>()?;
        Ok(DeviceSlots {
            inner: Arc::new(SlotsInner {
                gpu,
                buf: Some(buf),
                base,
                slot_bytes,
                stride,
                ready,
                released,
            }),
        })
    }

    /// Number of slots.
    pub fn num_slots(&self) -> usize {
        self.inner.ready.len()
    }

    /// Usable bytes per slot.
    pub fn slot_bytes(&self) -> usize {
        self.inner.slot_bytes
    }

    /// Device bytes held (all slots, with alignment padding).
    pub fn total_bytes(&self) -> u64 {
        (self.num_slots() * self.inner.stride) as u64
    }

    pub(crate) fn gpu(&self) -> &Arc<Gpu> {
        &self.inner.gpu
    }

    fn ptr(&self, slot: usize) -> Result<u64> {
        if slot >= self.num_slots() {
            return Err(Error::input(format!(
                "slot {slot} does not exist ({} slots)",
                self.num_slots()
            )));
        }
        Ok(self.inner.base + (slot * self.inner.stride) as u64)
    }

    /// Makes `stream` wait for the last write of `slot`; returns the slot's address.
    pub(crate) fn acquire_for_compute(&self, slot: usize, stream: &CudaStream) -> Result<u64> {
        let p = self.ptr(slot)?;
        stream.wait(&self.inner.ready[slot]).map_err(|e| drv("waiting for a slot's copy", e))?;
        Ok(p)
    }

    /// Marks the reads of `slot` enqueued so far on `stream` as the ones a rewrite waits for.
    pub(crate) fn release_after_compute(&self, slot: usize, stream: &CudaStream) -> Result<()> {
        self.ptr(slot)?;
        self.inner.released[slot].record(stream).map_err(|e| drv("recording a slot release", e))
    }

    /// Makes the copy stream wait until `slot` is no longer read; returns its address.
    pub(crate) fn before_write(&self, slot: usize, copy: &CudaStream) -> Result<u64> {
        let p = self.ptr(slot)?;
        copy.wait(&self.inner.released[slot]).map_err(|e| drv("waiting for a slot release", e))?;
        Ok(p)
    }

    /// Records the copies enqueued so far on `copy` as the slot's content.
    pub(crate) fn after_write(&self, slot: usize, copy: &CudaStream) -> Result<()> {
        self.ptr(slot)?;
        self.inner.ready[slot].record(copy).map_err(|e| drv("recording a slot's copy", e))
    }

    /// The first `len` bytes of `slot`, after its last upload (tests and checks; synchronous).
    pub fn download(&self, slot: usize, len: usize) -> Result<Vec<u8>> {
        if len > self.slot_bytes() {
            return Err(Error::input(format!("{len} bytes is more than a slot holds")));
        }
        let stream = &self.inner.gpu.compute;
        self.acquire_for_compute(slot, stream)?;
        let start = slot * self.inner.stride;
        let mut out = vec![0u8; len];
        if let (Some(buf), true) = (&self.inner.buf, len > 0) {
            let view = buf.slice(start..start + len);
            stream.memcpy_dtoh(&view, &mut out).map_err(|e| drv("reading a slot", e))?;
        }
        self.release_after_compute(slot, stream)?;
        stream.synchronize().map_err(|e| drv("reading a slot", e))?;
        self.inner.gpu.check()?;
        Ok(out)
    }
}
