//! Pure bookkeeping of host→device copies, free of any CUDA call so it is tested on machines
//! without a GPU: coalescing source ranges, page-aligned registration windows, splitting a
//! staging chunk across threads, the staging ring, the registration budget (LRU) and the
//! injected-failure hook used by tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Page size assumed for registration windows. x86_64 Linux uses 4 KiB pages; windows start at
/// the (page-aligned) mapping base plus multiples of a window size that is itself a multiple of
/// this, so only the tail of a mapping is rounded with it (CUDA rounds internally anyway).
pub const PAGE_SIZE: usize = 4096;

/// Rounds `x` down to a multiple of `a` (`a > 0`).
pub fn align_down(x: usize, a: usize) -> usize {
    x - x % a
}

/// Rounds `x` up to a multiple of `a` (`a > 0`).
pub fn align_up(x: usize, a: usize) -> usize {
    x.div_ceil(a) * a
}

/// One DMA: `len` bytes from host address `src` to byte offset `dst` of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyRange {
    /// Host address of the first byte.
    pub src: usize,
    /// Bytes to copy.
    pub len: usize,
    /// Byte offset in the destination slot.
    pub dst: usize,
}

/// Turns source ranges `(address, len)`, destined for consecutive bytes of a slot, into as few
/// copies as possible: a range that starts where the previous one ended is merged into it (an
/// expert's tensors are often stored back to back). Empty ranges are dropped.
pub fn coalesce(ranges: &[(usize, usize)]) -> Vec<CopyRange> {
    let mut out: Vec<CopyRange> = Vec::with_capacity(ranges.len());
    let mut dst = 0;
    for &(src, len) in ranges {
        if len == 0 {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.src + last.len == src => last.len += len,
            _ => out.push(CopyRange { src, len, dst }),
        }
        dst += len;
    }
    out
}

/// The registration windows of a mapped region that cover `[addr, addr + len)`.
///
/// Windows are `window` bytes (a multiple of [`PAGE_SIZE`]) counted from the region base, so
/// they never overlap: registering two overlapping ranges is an error in CUDA
/// (`CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED`), which per-tensor page rounding would cause
/// where two tensors share a page. Returns `None` if the range is not inside the region.
pub fn covering_windows(
    region_base: usize,
    region_len: usize,
    window: usize,
    addr: usize,
    len: usize,
) -> Option<std::ops::Range<usize>> {
    if addr < region_base || addr + len > region_base + region_len || window == 0 {
        return None;
    }
    let first = (addr - region_base) / window;
    let last = (addr + len.max(1) - 1 - region_base) / window;
    Some(first..last + 1)
}

/// Address and length of window `index` of a region: clipped to the region, with its end
/// rounded up to a page (the mapping covers whole pages).
pub fn window_bounds(
    region_base: usize,
    region_len: usize,
    window: usize,
    index: usize,
) -> (usize, usize) {
    let start = index * window;
    let end = ((index + 1) * window).min(align_up(region_len, PAGE_SIZE));
    (region_base + start, end.saturating_sub(start))
}

/// A piece of a CPU copy: `len` bytes from `srcs[src][src_off..]` to `out_off` in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Index of the source slice.
    pub src: usize,
    /// Offset in that slice.
    pub src_off: usize,
    /// Bytes.
    pub len: usize,
    /// Offset in the output buffer (relative to the window start).
    pub out_off: usize,
}

/// The pieces of the concatenation of sources (lengths `src_lens`) that fall in the window
/// `[off, off + len)` of that concatenation, in order.
pub fn pieces(src_lens: &[usize], off: usize, len: usize) -> Vec<Piece> {
    let mut out = Vec::new();
    let end = off + len;
    let mut pos = 0;
    for (i, &l) in src_lens.iter().enumerate() {
        let (s, e) = (pos.max(off), (pos + l).min(end));
        if s < e {
            out.push(Piece { src: i, src_off: s - pos, len: e - s, out_off: s - off });
        }
        pos += l;
        if pos >= end {
            break;
        }
    }
    out
}

/// Splits `len` bytes into at most `parts` contiguous `(offset, len)` parts whose boundaries are
/// multiples of `align` (a cache line keeps threads off each other's lines); no empty parts.
pub fn split_even(len: usize, parts: usize, align: usize) -> Vec<(usize, usize)> {
    let parts = parts.max(1);
    let step = align_up(len.div_ceil(parts).max(1), align.max(1));
    (0..len).step_by(step).map(|o| (o, step.min(len - o))).collect()
}

/// `(offset, len)` chunks of at most `chunk` bytes covering `total` bytes.
pub fn chunks(total: usize, chunk: usize) -> Vec<(usize, usize)> {
    (0..total).step_by(chunk.max(1)).map(|o| (o, chunk.max(1).min(total - o))).collect()
}

/// Splits `(addr, len, dst)` copies into runs whose destinations are contiguous (each run is
/// then coalesced on its own, so merged copies never jump over a destination gap).
pub fn split_dst_runs(items: &[(usize, usize, usize)]) -> Vec<&[(usize, usize, usize)]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=items.len() {
        if i == items.len() || items[i - 1].2 + items[i - 1].1 != items[i].2 {
            out.push(&items[start..i]);
            start = i;
        }
    }
    out
}

/// Round-robin staging ring: hands out buffer indices in turn, with the completion token (a
/// CUDA event in the backend) of the copy that last used the buffer, which must be waited on
/// before the buffer is overwritten.
#[derive(Debug)]
pub struct Ring<T> {
    pending: Vec<Option<T>>,
    next: usize,
}

impl<T> Ring<T> {
    /// A ring of `len` buffers (at least 1), none in use.
    pub fn new(len: usize) -> Ring<T> {
        Ring { pending: (0..len.max(1)).map(|_| None).collect(), next: 0 }
    }

    /// Number of buffers.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Always false: a ring has at least one buffer.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The next buffer and the token of its previous use (wait on it before writing).
    pub fn acquire(&mut self) -> (usize, Option<T>) {
        let i = self.next;
        self.next = (self.next + 1) % self.pending.len();
        (i, self.pending[i].take())
    }

    /// Records that buffer `i` is being read by a copy that completes with `token`.
    pub fn submitted(&mut self, i: usize, token: T) {
        self.pending[i] = Some(token);
    }

    /// Takes every outstanding token (to wait for all copies, e.g. before freeing the ring).
    pub fn drain(&mut self) -> Vec<T> {
        self.pending.iter_mut().filter_map(Option::take).collect()
    }
}

/// A registration window: mapped region index and window index within it.
pub type WindowKey = (usize, usize);

/// What to change so that a set of windows is registered within the budget.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RegistrationPlan {
    /// Windows to unregister first (least recently used, not needed now).
    pub unregister: Vec<WindowKey>,
    /// Windows to register, with their lengths.
    pub register: Vec<(WindowKey, u64)>,
}

/// Which windows of the mapped checkpoint are registered (pinned) with the driver, bounded by a
/// byte budget; evicts the least recently used windows that the current copy does not need.
/// Registration pins pages, so an unbounded set could exhaust the host's lockable memory.
#[derive(Debug)]
pub struct RegistrationLru {
    budget: u64,
    used: u64,
    clock: u64,
    entries: HashMap<WindowKey, (u64, u64)>,
}

impl RegistrationLru {
    /// An empty set with a budget in bytes.
    pub fn new(budget: u64) -> RegistrationLru {
        RegistrationLru { budget, used: 0, clock: 0, entries: HashMap::new() }
    }

    /// Bytes registered now.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Whether a window is registered.
    pub fn contains(&self, key: WindowKey) -> bool {
        self.entries.contains_key(&key)
    }

    /// Plans the registration of `wanted` windows (marking them recently used) and applies the
    /// plan to the bookkeeping. Errors, changing nothing, if `wanted` alone exceeds the budget.
    pub fn plan(&mut self, wanted: &[(WindowKey, u64)]) -> Result<RegistrationPlan, String> {
        let mut unique: Vec<(WindowKey, u64)> = Vec::with_capacity(wanted.len());
        for &(k, len) in wanted {
            if !unique.iter().any(|(u, _)| *u == k) {
                unique.push((k, len));
            }
        }
        let wanted = &unique[..];
        let mut need: u64 = 0;
        let mut missing = Vec::new();
        for &(k, len) in wanted {
            if !self.entries.contains_key(&k) {
                missing.push((k, len));
                need += len;
            }
        }
        let wanted_total: u64 = need
            + wanted
                .iter()
                .filter(|(k, _)| self.entries.contains_key(k))
                .map(|(k, _)| self.entries[k].0)
                .sum::<u64>();
        if wanted_total > self.budget {
            return Err(format!(
                "one copy needs {wanted_total} registered bytes, above the registration budget of {}",
                self.budget
            ));
        }
        for &(k, _) in wanted {
            self.clock += 1;
            if let Some(e) = self.entries.get_mut(&k) {
                e.1 = self.clock;
            }
        }
        let mut plan = RegistrationPlan::default();
        while self.used + need > self.budget {
            let victim = self
                .entries
                .iter()
                .filter(|(k, _)| !wanted.iter().any(|(w, _)| w == *k))
                .min_by_key(|(_, e)| e.1)
                .map(|(k, _)| *k);
            let Some(v) = victim else { break };
            self.used -= self.entries.remove(&v).map_or(0, |e| e.0);
            plan.unregister.push(v);
        }
        for &(k, len) in &missing {
            self.clock += 1;
            self.entries.insert(k, (len, self.clock));
            self.used += len;
        }
        plan.register = missing;
        Ok(plan)
    }

    /// Forgets a window (its registration failed or it was unregistered outside a plan).
    pub fn forget(&mut self, key: WindowKey) {
        if let Some((len, _)) = self.entries.remove(&key) {
            self.used -= len;
        }
    }

    /// Forgets everything and returns the windows that were registered (for unregistering).
    pub fn clear(&mut self) -> Vec<WindowKey> {
        self.used = 0;
        self.entries.drain().map(|(k, _)| k).collect()
    }
}

/// Test hook: makes the n-th upload (1-based) fail once with an error, so that callers can
/// check that a copy failure surfaces as an error, not a panic or a deadlock.
#[derive(Debug, Default)]
pub struct FailureInjector {
    /// The 1-based call that fails; 0 = none.
    fail_at: AtomicU64,
    count: AtomicU64,
}

impl FailureInjector {
    /// Fails the `fail_at`-th call of [`FailureInjector::next_fails`] (never if `None`).
    pub fn new(fail_at: Option<u64>) -> FailureInjector {
        FailureInjector { fail_at: AtomicU64::new(fail_at.unwrap_or(0)), count: AtomicU64::new(0) }
    }

    /// Makes the `n`-th call from now fail (`n` = 1: the next one; 0 disarms).
    pub fn arm(&self, n: u64) {
        let at = if n == 0 { 0 } else { self.count.load(Ordering::Relaxed) + n };
        self.fail_at.store(at, Ordering::Relaxed);
    }

    /// Counts one upload; true if this one must fail.
    pub fn next_fails(&self) -> bool {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        self.fail_at.load(Ordering::Relaxed) == n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesce_merges_adjacent_and_drops_empty() {
        let r = coalesce(&[(1000, 10), (1010, 5), (0, 0), (2000, 3), (2003, 1), (1015, 2)]);
        assert_eq!(
            r,
            vec![
                CopyRange { src: 1000, len: 15, dst: 0 },
                CopyRange { src: 2000, len: 4, dst: 15 },
                CopyRange { src: 1015, len: 2, dst: 19 },
            ]
        );
        assert!(coalesce(&[]).is_empty());
    }

    #[test]
    fn windows_cover_and_never_overlap() {
        let (base, len, w) = (1 << 20, 10 * PAGE_SIZE + 100, 4 * PAGE_SIZE);
        // A range inside window 1 only.
        assert_eq!(covering_windows(base, len, w, base + w + 1, 10), Some(1..2));
        // A range straddling windows 0..=2.
        assert_eq!(covering_windows(base, len, w, base + 5, 2 * w), Some(0..3));
        // Outside the region.
        assert_eq!(covering_windows(base, len, w, base - 1, 4), None);
        assert_eq!(covering_windows(base, len, w, base + len - 2, 4), None);
        // Windows tile the region, page-aligned, the last one rounded up to a page.
        let mut end = base;
        for i in 0..3 {
            let (s, l) = window_bounds(base, len, w, i);
            assert_eq!(s, end);
            assert_eq!(s % PAGE_SIZE, 0);
            end = s + l;
        }
        assert_eq!(end, base + align_up(len, PAGE_SIZE));
    }

    #[test]
    fn pieces_of_a_window() {
        let p = pieces(&[10, 5, 20], 8, 10);
        assert_eq!(
            p,
            vec![
                Piece { src: 0, src_off: 8, len: 2, out_off: 0 },
                Piece { src: 1, src_off: 0, len: 5, out_off: 2 },
                Piece { src: 2, src_off: 0, len: 3, out_off: 7 },
            ]
        );
        let total: usize = pieces(&[10, 5, 20], 0, 35).iter().map(|p| p.len).sum();
        assert_eq!(total, 35);
    }

    #[test]
    fn split_and_chunks_cover_exactly() {
        for (len, parts) in [(1000, 3), (64, 8), (1, 4), (4096 * 3 + 7, 8)] {
            let s = split_even(len, parts, 64);
            assert!(s.len() <= parts);
            assert_eq!(s.iter().map(|p| p.1).sum::<usize>(), len);
            for w in s.windows(2) {
                assert_eq!(w[0].0 + w[0].1, w[1].0);
                assert_eq!(w[1].0 % 64, 0);
            }
        }
        assert!(split_even(0, 4, 64).is_empty());
        assert_eq!(chunks(10, 4), vec![(0, 4), (4, 4), (8, 2)]);
    }

    #[test]
    fn dst_runs_break_at_gaps() {
        let items = [(100, 10, 0), (500, 5, 10), (900, 4, 20), (904, 4, 24)];
        let runs = split_dst_runs(&items);
        assert_eq!(runs, vec![&items[0..2], &items[2..4]]);
        assert!(split_dst_runs(&[]).is_empty());
    }

    #[test]
    fn ring_returns_previous_token_before_reuse() {
        let mut r = Ring::new(2);
        let (a, t) = r.acquire();
        assert_eq!((a, t), (0, None));
        r.submitted(a, 10);
        let (b, t) = r.acquire();
        assert_eq!((b, t), (1, None));
        r.submitted(b, 11);
        assert_eq!(r.acquire(), (0, Some(10)));
        r.submitted(0, 12);
        let mut rest = r.drain();
        rest.sort();
        assert_eq!(rest, vec![11, 12]);
    }

    #[test]
    fn registration_lru_respects_budget_and_keeps_wanted() {
        let mut lru = RegistrationLru::new(300);
        let p = lru.plan(&[((0, 0), 100), ((0, 1), 100), ((0, 0), 100)]).unwrap();
        assert_eq!(p.register.len(), 2, "duplicates count once");
        assert!(p.unregister.is_empty());
        lru.plan(&[((0, 2), 100)]).unwrap();
        assert_eq!(lru.used(), 300);
        // Touch (0,0) so (0,1) becomes the oldest.
        assert!(lru.plan(&[((0, 0), 100)]).unwrap().register.is_empty());
        let p = lru.plan(&[((0, 3), 100), ((0, 2), 100)]).unwrap();
        assert_eq!(p.unregister, vec![(0, 1)]);
        assert_eq!(p.register, vec![((0, 3), 100)]);
        assert!(lru.used() <= 300);
        assert!(lru.contains((0, 2)) && lru.contains((0, 0)) && !lru.contains((0, 1)));
        // More than the budget at once is refused and changes nothing.
        assert!(lru.plan(&[((1, 0), 200), ((1, 1), 200)]).is_err());
        assert_eq!(lru.used(), 300);
        lru.forget((0, 0));
        assert_eq!(lru.used(), 200);
        assert_eq!(lru.clear().len(), 2);
        assert_eq!(lru.used(), 0);
    }

    #[test]
    fn injector_fails_once_at_n() {
        let f = FailureInjector::new(Some(2));
        assert_eq!((f.next_fails(), f.next_fails(), f.next_fails()), (false, true, false));
        let never = FailureInjector::new(None);
        assert!(!(0..5).any(|_| never.next_fails()));
        // Armed later: counts from the arming, fails once.
        never.arm(2);
        assert_eq!(
            (never.next_fails(), never.next_fails(), never.next_fails()),
            (false, true, false)
        );
        never.arm(1);
        never.arm(0);
        assert!(!never.next_fails());
    }
}
