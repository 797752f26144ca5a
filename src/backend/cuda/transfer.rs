//! [`Uploader`]: moves expert bytes from host memory (normally the mapped checkpoint) into a
//! device slot on the copy stream, by one of three paths, and returns a [`Fence`]:
//!
//! * **registered**: page-aligned windows of the mapping are registered with
//!   `cuMemHostRegister` (read-only where the device supports it) and DMA'd straight into the
//!   slot, no staging copy. Registered bytes are bounded (LRU of windows); windows are
//!   unregistered after their last copy completed and on drop. If registration fails (e.g.
//!   error 801 where read-only registration is unsupported) the pinned ring takes over.
//! * **pinned ring**: N CPU threads copy from the mapping into a ring of ordinary pinned
//!   buffers (not write-combined), each DMA'd to the slot; a buffer is refilled only after the
//!   event of its previous copy completed, so CPU fills overlap DMA.
//! * **pageable**: plain `cuMemcpyHtoDAsync` from the mapping (the driver stages it): the slow
//!   reference.
//!
//! Uploads are serialised (one copy stream); a copy into a slot first waits, on the GPU, for
//! the compute stream to release the slot.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::sys::{self, CUevent_flags};
use cudarc::driver::{CudaEvent, PinnedHostSlice};
use memmap2::Mmap;
use parking_lot::Mutex;
use rayon::prelude::*;

use super::device::{Gpu, drv};
use super::options::{TransferOptions, TransferPath, TransferStats};
use super::plan::{
    FailureInjector, RegistrationLru, Ring, WindowKey, chunks, coalesce, covering_windows, pieces,
    split_dst_runs, split_even, window_bounds,
};
use super::slots::DeviceSlots;
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};

/// Cache-line alignment of the parts the ring's threads copy (keeps them off shared lines).
const THREAD_PART_ALIGN: usize = 64;

/// Completion of one upload: a CUDA event recorded on the copy stream after the last copy.
#[derive(Debug, Clone)]
pub struct Fence {
    event: Arc<CudaEvent>,
    slot: usize,
    bytes: u64,
}

impl Fence {
    /// Blocks the calling thread until the copy completed (the event sleeps, it does not spin).
    pub fn wait(&self) -> Result<()> {
        self.event.synchronize().map_err(|e| drv("waiting for a copy", e))
    }

    /// Whether the copy completed, without waiting.
    pub fn is_complete(&self) -> Result<bool> {
        self.event.try_is_complete().map_err(|e| drv("querying a copy", e))
    }

    /// The slot written.
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// Bytes written.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// A pinned staging buffer: its address is taken once; only the uploader's threads write it
/// and only DMAs it enqueued read it.
struct Staging {
    _mem: PinnedHostSlice<u8>,
    addr: usize,
    len: usize,
}

struct State {
    ring: Option<(Vec<Staging>, Ring<Arc<CudaEvent>>)>,
    lru: RegistrationLru,
    /// Registered windows: address and the fence of the last copy that read them.
    registered: HashMap<WindowKey, (usize, Option<Arc<CudaEvent>>)>,
    registration_broken: bool,
    stats: TransferStats,
}

/// Host→device copier into [`DeviceSlots`].
pub struct Uploader {
    slots: DeviceSlots,
    gpu: Arc<Gpu>,
    path: TransferPath,
    opts: TransferOptions,
    regions: Vec<Arc<Mmap>>,
    pool: Option<rayon::ThreadPool>,
    injector: FailureInjector,
    state: Mutex<State>,
}

impl std::fmt::Debug for Uploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploader").field("path", &self.path).finish()
    }
}

impl Uploader {
    /// An uploader into `slots`. `mappings` are the memory maps sources may come from (only
    /// those can be registered; other sources are staged). `Auto` resolves to registered if
    /// the device supports read-only registration, else to the pinned ring.
    pub fn new(
        slots: &DeviceSlots,
        opts: TransferOptions,
        mappings: Vec<Arc<Mmap>>,
    ) -> Result<Uploader> {
        let gpu = slots.gpu().clone();
        let path = opts.path.resolve(gpu.info.read_only_host_register);
        if opts.register_window == 0 || opts.register_window % super::plan::PAGE_SIZE != 0 {
            return Err(Error::InvalidOption(format!(
                "registration window of {} bytes is not a multiple of the page size",
                opts.register_window
            )));
        }
        let threads = match path {
            TransferPath::PinnedRing { threads } => threads,
            _ => super::options::DEFAULT_RING_THREADS,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("moe-stage-{i}"))
            .build()
            .map_err(|e| Error::Cuda(format!("starting the staging threads: {e}")))?;
        Ok(Uploader {
            slots: slots.clone(),
            path,
            regions: mappings,
            pool: Some(pool),
            injector: FailureInjector::new(opts.fail_on_upload),
            state: Mutex::new(State {
                ring: None,
                lru: RegistrationLru::new(opts.register_budget),
                registered: HashMap::new(),
                registration_broken: false,
                stats: TransferStats::default(),
            }),
            opts,
            gpu,
        })
    }

    /// An uploader whose registrable sources are every file of `ckpt`.
    pub fn for_checkpoint(
        slots: &DeviceSlots,
        opts: TransferOptions,
        ckpt: &Checkpoint,
    ) -> Result<Uploader> {
        let maps = (0..ckpt.files().len()).map(|i| ckpt.mmap(i).clone()).collect();
        Uploader::new(slots, opts, maps)
    }

    /// The path in use (`Auto` resolved).
    pub fn path(&self) -> TransferPath {
        self.path
    }

    /// Test hook: the `n`-th upload from now fails with an error (0 disarms).
    pub fn inject_failure(&self, n: u64) {
        self.injector.arm(n);
    }

    /// Counters so far.
    pub fn stats(&self) -> TransferStats {
        self.state.lock().stats
    }

    /// Copies the concatenation of `src` into `slot` (in order, from its first byte) and
    /// returns the fence of the copy. `src` may be released when this returns: registered
    /// sources are kept mapped by the uploader, staged and pageable ones are consumed.
    pub fn upload(&self, src: &[&[u8]], slot: usize) -> Result<Fence> {
        let mut st = self.state.lock();
        let r = self.upload_locked(&mut st, src, slot);
        match &r {
            Ok(_) => st.stats.uploads += 1,
            Err(_) => st.stats.failures += 1,
        }
        r
    }

    fn upload_locked(&self, st: &mut State, src: &[&[u8]], slot: usize) -> Result<Fence> {
        let total: usize = src.iter().map(|s| s.len()).sum();
        if self.injector.next_fails() {
            return Err(Error::Cuda(format!(
                "injected copy failure (test hook) uploading {total} bytes to slot {slot}"
            )));
        }
        if total > self.slots.slot_bytes() {
            return Err(Error::input(format!(
                "{total} bytes do not fit a slot of {} bytes",
                self.slots.slot_bytes()
            )));
        }
        self.gpu.ctx.bind_to_thread().map_err(|e| drv("binding the context", e))?;
        let copy = &self.gpu.copy;
        let base = self.slots.before_write(slot, copy)?;
        let mut dst = 0;
        let items: Vec<(&[u8], usize)> = src
            .iter()
            .map(|s| {
                let item = (*s, dst);
                dst += s.len();
                item
            })
            .collect();
        let mut used_windows = Vec::new();
        match self.path {
            TransferPath::Registered | TransferPath::Auto => {
                let staged = self.copy_registered(st, &items, base, &mut used_windows)?;
                if !staged.is_empty() {
                    self.copy_staged(st, &staged, base)?;
                }
            }
            TransferPath::PinnedRing { .. } => self.copy_staged(st, &items, base)?,
            TransferPath::Pageable => {
                let ranges: Vec<_> = src.iter().map(|s| (s.as_ptr() as usize, s.len())).collect();
                for r in coalesce(&ranges) {
                    self.dma(base + r.dst as u64, r.src, r.len)?;
                }
                st.stats.pageable_bytes += total as u64;
            }
        }
        self.slots.after_write(slot, copy)?;
        let event = Arc::new(
            copy.record_event(Some(CUevent_flags::CU_EVENT_BLOCKING_SYNC))
                .map_err(|e| drv("recording a copy fence", e))?,
        );
        for k in used_windows {
            if let Some(w) = st.registered.get_mut(&k) {
                w.1 = Some(event.clone());
            }
        }
        Ok(Fence { event, slot, bytes: total as u64 })
    }

    /// One async DMA of `len` bytes from host address `src` to device address `dst`.
    fn dma(&self, dst: u64, src: usize, len: usize) -> Result<()> {
        // SAFETY: `src..src+len` lies in a live host buffer that stays valid until the copy
        // completes (a registered window of a mapping the uploader holds, a staging buffer
        // not reused before its event, or pageable memory the driver stages before
        // returning); `dst..dst+len` lies in a slot (the caller checked the size).
        unsafe { sys::cuMemcpyHtoDAsync_v2(dst, src as *const _, len, self.gpu.copy.cu_stream()) }
            .result()
            .map_err(|e| drv("host→device copy", e))
    }

    /// DMAs the items that lie in registered windows (registering them first); returns the
    /// items left for the staging ring (outside any mapping, or registration failed).
    fn copy_registered<'a>(
        &self,
        st: &mut State,
        items: &[(&'a [u8], usize)],
        base: u64,
        used: &mut Vec<WindowKey>,
    ) -> Result<Vec<(&'a [u8], usize)>> {
        if st.registration_broken {
            return Ok(items.to_vec());
        }
        let w = self.opts.register_window;
        let mut direct = Vec::new();
        let mut staged = Vec::new();
        let mut wanted: Vec<(WindowKey, u64)> = Vec::new();
        for &(s, dst) in items {
            let (addr, len) = (s.as_ptr() as usize, s.len());
            let found = self.regions.iter().enumerate().find_map(|(ri, m)| {
                covering_windows(m.as_ptr() as usize, m.len(), w, addr, len).map(|ws| (ri, ws))
            });
            match found {
                Some((ri, ws)) if len > 0 => {
                    for wi in ws {
                        let m = &self.regions[ri];
                        let (_, wl) = window_bounds(m.as_ptr() as usize, m.len(), w, wi);
                        wanted.push(((ri, wi), wl as u64));
                    }
                    direct.push((addr, len, dst));
                }
                _ => staged.push((s, dst)),
            }
        }
        let plan = match st.lru.plan(&wanted) {
            Ok(p) => p,
            Err(why) => {
                tracing::warn!("registered copy falls back to the pinned ring: {why}");
                st.stats.fallbacks += 1;
                return Ok(items.to_vec());
            }
        };
        for k in plan.unregister {
            self.unregister(st, k)?;
            st.stats.unregistrations += 1;
        }
        let flags = if self.gpu.info.read_only_host_register {
            sys::CU_MEMHOSTREGISTER_READ_ONLY
        } else {
            0
        };
        for (k, _) in plan.register {
            let m = &self.regions[k.0];
            let (addr, len) = window_bounds(m.as_ptr() as usize, m.len(), w, k.1);
            // SAFETY: `addr..addr+len` is page-aligned and inside a live mapping held by the
            // uploader (its tail rounded to the page the mapping covers); windows never
            // overlap, so no range is registered twice. It is unregistered before the
            // mapping is dropped (in `Drop`).
            let r = unsafe { sys::cuMemHostRegister_v2(addr as *mut _, len, flags) }.result();
            match r {
                Ok(()) => {
                    st.registered.insert(k, (addr, None));
                    st.stats.registrations += 1;
                }
                Err(e) => {
                    tracing::warn!(
                        "cuMemHostRegister failed ({e}); using the pinned staging ring instead"
                    );
                    st.lru.forget(k);
                    st.registration_broken = true;
                    st.stats.fallbacks += 1;
                    return Ok(items.to_vec());
                }
            }
        }
        used.extend(wanted.iter().map(|(k, _)| *k));
        let ranges: Vec<_> = direct.iter().map(|&(a, l, _)| (a, l)).collect();
        // Coalescing keeps destinations: it only merges ranges adjacent in both spaces.
        let mut i = 0;
        for run in split_dst_runs(&direct) {
            for r in coalesce(&ranges[i..i + run.len()]) {
                self.dma(base + (run[0].2 + r.dst) as u64, r.src, r.len)?;
            }
            i += run.len();
        }
        st.stats.registered_bytes += direct.iter().map(|d| d.1 as u64).sum::<u64>();
        Ok(staged)
    }

    fn unregister(&self, st: &mut State, k: WindowKey) -> Result<()> {
        if let Some((addr, last)) = st.registered.remove(&k) {
            if let Some(ev) = last {
                ev.synchronize().map_err(|e| drv("waiting before unregistering", e))?;
            }
            // SAFETY: `addr` was registered by us and the last copy reading it has completed.
            unsafe { sys::cuMemHostUnregister(addr as *mut _) }
                .result()
                .map_err(|e| drv("cuMemHostUnregister", e))?;
        }
        Ok(())
    }

    /// Copies items through the pinned ring: chunks of the items' concatenation (per run of
    /// contiguous destinations) are filled by the thread pool, then DMA'd.
    fn copy_staged(&self, st: &mut State, items: &[(&[u8], usize)], base: u64) -> Result<()> {
        if st.ring.is_none() {
            st.ring = Some(self.make_ring()?);
        }
        let Some((bufs, ring)) = st.ring.as_mut() else {
            return Err(Error::Cuda("staging ring missing".into()));
        };
        let pool = self.pool.as_ref().ok_or_else(|| Error::Cuda("no staging threads".into()))?;
        let threads = pool.current_num_threads();
        let runs: Vec<Vec<(&[u8], usize)>> = {
            let mut runs: Vec<Vec<(&[u8], usize)>> = Vec::new();
            for &(s, d) in items {
                match runs.last_mut() {
                    Some(r) if r.last().is_some_and(|(ps, pd)| pd + ps.len() == d) => {
                        r.push((s, d))
                    }
                    _ => runs.push(vec![(s, d)]),
                }
            }
            runs
        };
        for run in runs {
            let lens: Vec<usize> = run.iter().map(|(s, _)| s.len()).collect();
            let total: usize = lens.iter().sum();
            for (off, len) in chunks(total, bufs[0].len) {
                let (bi, prev) = ring.acquire();
                if let Some(ev) = prev {
                    ev.synchronize().map_err(|e| drv("waiting for a staging buffer", e))?;
                }
                let dst_addr = bufs[bi].addr;
                let parts = split_even(len, threads, THREAD_PART_ALIGN);
                pool.install(|| {
                    parts.par_iter().for_each(|&(po, pl)| {
                        for p in pieces(&lens, off + po, pl) {
                            let from = &run[p.src].0[p.src_off..p.src_off + p.len];
                            // SAFETY: the buffer holds `bufs[0].len ≥ len` bytes, parts of one
                            // chunk are disjoint, and no DMA reads this buffer any more (its
                            // previous event completed above).
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    from.as_ptr(),
                                    (dst_addr + po + p.out_off) as *mut u8,
                                    p.len,
                                )
                            };
                        }
                    })
                });
                self.dma(base + (run[0].1 + off) as u64, dst_addr, len)?;
                let ev = self
                    .gpu
                    .copy
                    .record_event(Some(CUevent_flags::CU_EVENT_BLOCKING_SYNC))
                    .map_err(|e| drv("recording a staging event", e))?;
                ring.submitted(bi, Arc::new(ev));
            }
            st.stats.staged_bytes += total as u64;
        }
        Ok(())
    }

    fn make_ring(&self) -> Result<(Vec<Staging>, Ring<Arc<CudaEvent>>)> {
        let n = self.opts.ring_buffers.max(2);
        let len = self.opts.ring_buffer_bytes.max(1 << 16);
        let mut bufs = Vec::with_capacity(n);
        for _ in 0..n {
            // SAFETY: flags 0 is ordinary pinned memory (readable by the CPU at full speed,
            // unlike write-combined); its contents are written before any DMA reads them.
            let mut mem = unsafe { self.gpu.ctx.alloc_pinned_with_flags::<u8>(len, 0) }
                .map_err(|e| drv(&format!("allocating {len} bytes of pinned memory"), e))?;
            let addr = mem.as_mut_ptr().map_err(|e| drv("pinned buffer", e))? as usize;
            bufs.push(Staging { _mem: mem, addr, len });
        }
        Ok((bufs, Ring::new(n)))
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        // Wait for our copies (not the device), then unregister every window while the
        // mappings are still alive; the ring's pinned buffers are freed after.
        let _ = self.gpu.ctx.bind_to_thread();
        let _ = self.gpu.copy.synchronize();
        let mut st = self.state.lock();
        for k in st.lru.clear() {
            if let Err(e) = self.unregister(&mut st, k) {
                tracing::warn!("unregistering a window on drop: {e}");
            }
        }
        st.ring = None;
        drop(st);
        self.pool = None;
    }
}
