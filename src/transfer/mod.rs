//! The transfer pipeline: moves expert bytes from the mapped checkpoint into slots on copy
//! worker threads (never the compute thread), and signals each copy's completion with a
//! [`Fence`]. It knows nothing of which expert to fetch or why.

mod fence;
mod slots;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use memmap2::Mmap;

pub use fence::Fence;
pub use slots::{SlotArena, SlotBuf};

/// A byte range in one mapped file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// Index of the mapped file.
    pub file: usize,
    /// Start offset in the file.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

/// Merges ranges that follow each other in the same file, keeping order, so an expert whose
/// tensors are stored back to back moves in one copy.
pub fn coalesce(ranges: &[ByteRange]) -> Vec<ByteRange> {
    let mut out: Vec<ByteRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if last.file == r.file && last.offset + last.len == r.offset => {
                last.len += r.len;
            }
            _ => out.push(*r),
        }
    }
    out
}

/// One copy: `ranges` concatenated into `slot`; `label` names the expert in errors.
#[derive(Debug)]
pub struct CopyRequest {
    /// Source ranges, already coalesced, in slot order.
    pub ranges: Vec<ByteRange>,
    /// Destination slot.
    pub slot: usize,
    /// Signalled when the copy ends.
    pub fence: Fence,
    /// `(block, expert)`, for error messages.
    pub label: (usize, usize),
}

/// Counts copies so a test can make the n-th one fail.
#[derive(Debug, Default)]
struct FaultInjector {
    /// Copies left before the injected failure; 0 = disabled.
    countdown: AtomicU64,
}

impl FaultInjector {
    fn should_fail(&self) -> bool {
        let mut cur = self.countdown.load(Ordering::Relaxed);
        while cur > 0 {
            match self.countdown.compare_exchange(cur, cur - 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return cur == 1,
                Err(now) => cur = now,
            }
        }
        false
    }
}

struct Shared {
    /// Emulated link rate: a copy of n bytes takes at least n / rate seconds.
    link_bytes_per_second: Option<f64>,
    arena: Arc<SlotArena>,
    mmaps: Vec<Arc<Mmap>>,
    faults: FaultInjector,
    bytes_copied: AtomicU64,
}

/// Copy workers fed by a channel.
pub struct TransferPool {
    tx: Option<Sender<CopyRequest>>,
    workers: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TransferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferPool").field("workers", &self.workers.len()).finish()
    }
}

impl TransferPool {
    /// Starts `threads` copy workers (at least one) that copy from `mmaps` into `arena`.
    ///
    /// `link_bytes_per_second` emulates a slower host→device link (e.g. PCIe) on the CPU
    /// backend, where a copy is a memcpy: each copy is stretched to at least
    /// `bytes / rate` seconds. `None` copies at memory speed.
    pub fn new(
        arena: Arc<SlotArena>,
        mmaps: Vec<Arc<Mmap>>,
        threads: usize,
        link_bytes_per_second: Option<f64>,
    ) -> TransferPool {
        let (tx, rx) = crossbeam_channel::unbounded::<CopyRequest>();
        let shared = Arc::new(Shared {
            link_bytes_per_second: link_bytes_per_second.filter(|r| *r > 0.0),
            arena,
            mmaps,
            faults: FaultInjector::default(),
            bytes_copied: AtomicU64::new(0),
        });
        let workers = (0..threads.max(1))
            .map(|i| {
                let rx: Receiver<CopyRequest> = rx.clone();
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("moe-copy-{i}"))
                    .spawn(move || {
                        for req in rx {
                            let result = copy_one(&shared, &req);
                            req.fence.signal(result);
                        }
                    })
                    .expect("spawning a copy worker thread")
            })
            .collect();
        TransferPool { tx: Some(tx), workers, shared }
    }

    /// The slot arena copies go to.
    pub fn arena(&self) -> &Arc<SlotArena> {
        &self.shared.arena
    }

    /// Queues a copy; returns at once. Its fence completes when the bytes are in the slot.
    pub fn submit(&self, req: CopyRequest) {
        let fence = req.fence.clone();
        let sent = self.tx.as_ref().map(|tx| tx.send(req));
        if !matches!(sent, Some(Ok(()))) {
            fence.signal(Err("the transfer pool is shut down".into()));
        }
    }

    /// Total bytes copied so far.
    pub fn bytes_copied(&self) -> u64 {
        self.shared.bytes_copied.load(Ordering::Relaxed)
    }

    /// Test hook: the `n`-th copy from now (1 = the next) fails with an I/O-style error.
    pub fn inject_failure(&self, n: u64) {
        self.shared.faults.countdown.store(n, Ordering::Relaxed);
    }
}

impl Drop for TransferPool {
    fn drop(&mut self) {
        self.tx = None; // closing the channel ends the workers' loops
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn copy_one(shared: &Shared, req: &CopyRequest) -> std::result::Result<(), String> {
    if shared.faults.should_fail() {
        return Err("injected copy failure".into());
    }
    let started = std::time::Instant::now();
    let total: usize = req.ranges.iter().map(|r| r.len).sum();
    let mut slot = shared.arena.write(req.slot);
    if total > shared.arena.slot_bytes() {
        return Err(format!("{total} bytes do not fit a slot of {}", shared.arena.slot_bytes()));
    }
    let dst = slot.fill(total);
    let mut at = 0;
    for r in &req.ranges {
        let src = shared
            .mmaps
            .get(r.file)
            .and_then(|m| m.get(r.offset..r.offset + r.len))
            .ok_or_else(|| format!("source range {r:?} lies outside the mapped checkpoint"))?;
        dst[at..at + r.len].copy_from_slice(src);
        at += r.len;
    }
    if let Some(rate) = shared.link_bytes_per_second {
        let min = std::time::Duration::from_secs_f64(total as f64 / rate);
        if let Some(rest) = min.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    shared.bytes_copied.fetch_add(total as u64, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesce_merges_only_adjacent_ranges_of_one_file() {
        let r = |file, offset, len| ByteRange { file, offset, len };
        let merged = coalesce(&[r(0, 0, 4), r(0, 4, 4), r(0, 12, 4), r(1, 16, 2), r(1, 18, 2)]);
        assert_eq!(merged, vec![r(0, 0, 8), r(0, 12, 4), r(1, 16, 4)]);
    }

    #[test]
    fn injector_fires_once_on_the_nth_call() {
        let f = FaultInjector::default();
        f.countdown.store(3, Ordering::Relaxed);
        let fired: Vec<bool> = (0..5).map(|_| f.should_fail()).collect();
        assert_eq!(fired, vec![false, false, true, false, false]);
    }
}
