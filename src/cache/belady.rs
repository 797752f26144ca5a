//! Belady's MIN (Belady 1966, "A study of replacement algorithms for a virtual-storage
//! computer"): evict the resident expert whose next use lies farthest in the future. With the
//! whole access sequence known (a trace, or a recorded first pass) it is the optimum every other
//! policy is measured against.
//!
//! The future is stored as per-expert sorted occurrence lists (a CSR table built by counting
//! sort, 4 bytes per access) with a cursor per expert that only moves forward, so finding "the
//! next use at or after clock t" is amortised O(1) and correct for inserts at any clock.

use std::cmp::Reverse;
use std::sync::Arc;

use super::heap::IndexedHeap;
use super::policy::Policy;
use crate::{Error, Result};

/// "Never used again" (access indices are below 2³² - 1).
const NEVER: u32 = u32::MAX;

/// The future access sequence indexed for Belady: per expert, the ascending access indices at
/// which it is used. Shared (behind an `Arc`) by every Belady cache replaying the same sequence.
#[derive(Debug, Clone)]
pub struct FutureIndex {
    /// `occ[start[i]..start[i + 1]]`: the access indices at which expert `i` is used, ascending.
    start: Vec<u32>,
    occ: Vec<u32>,
}

impl FutureIndex {
    /// Indexes `future` (dense indices, each `< num_keys`). Fails if the sequence has 2³² or
    /// more accesses or names an index outside `0..num_keys`.
    pub fn new(num_keys: usize, future: &[u32]) -> Result<Self> {
        if future.len() >= u32::MAX as usize {
            return Err(Error::InvalidOption(format!(
                "belady: a future of {} accesses is longer than the supported 2^32 - 1",
                future.len()
            )));
        }
        let mut start = vec![0u32; num_keys + 1];
        for &i in future {
            let slot = start.get_mut(i as usize + 1).ok_or_else(|| {
                Error::InvalidOption(format!("belady: future names expert index {i} of {num_keys}"))
            })?;
            *slot += 1;
        }
        for i in 0..num_keys {
            start[i + 1] += start[i];
        }
        let mut fill = start[..num_keys].to_vec();
        let mut occ = vec![0u32; future.len()];
        for (t, &i) in future.iter().enumerate() {
            occ[fill[i as usize] as usize] = t as u32;
            fill[i as usize] += 1;
        }
        Ok(FutureIndex { start, occ })
    }

    /// Number of experts indexed.
    pub fn num_keys(&self) -> usize {
        self.start.len() - 1
    }

    /// Number of accesses in the sequence.
    pub fn len(&self) -> usize {
        self.occ.len()
    }

    /// Whether the sequence is empty.
    pub fn is_empty(&self) -> bool {
        self.occ.is_empty()
    }
}

/// Belady's optimal offline policy.
#[derive(Debug, Clone)]
pub struct Belady {
    future: Arc<FutureIndex>,
    /// Per expert, the first entry of its occurrence list not yet known to be in the past.
    cursor: Vec<u32>,
    /// Resident experts keyed by next use, farthest first.
    order: IndexedHeap<Reverse<u32>>,
}

impl Belady {
    /// Belady over `num_keys` dense indices and the future access sequence `future` (dense
    /// indices, each `< num_keys`).
    pub fn from_indices(num_keys: usize, future: &[u32]) -> Result<Self> {
        Ok(Belady::with_future(Arc::new(FutureIndex::new(num_keys, future)?)))
    }

    /// Belady over an indexed future (shareable between caches of different sizes).
    pub fn with_future(future: Arc<FutureIndex>) -> Self {
        let n = future.num_keys();
        let cursor = future.start[..n].to_vec();
        Belady { future, cursor, order: IndexedHeap::new(n) }
    }

    /// The first use of `idx` at access index `>= t`, or [`NEVER`].
    #[inline]
    fn next_use(&mut self, idx: usize, t: u64) -> u32 {
        let f = &*self.future;
        let end = f.start[idx + 1];
        let mut c = self.cursor[idx];
        while c < end && (f.occ[c as usize] as u64) < t {
            c += 1;
        }
        self.cursor[idx] = c;
        if c < end { f.occ[c as usize] } else { NEVER }
    }
}

impl Policy for Belady {
    fn name(&self) -> &'static str {
        "belady"
    }
    #[inline]
    fn on_access(&mut self, idx: usize, t: u64, resident: bool) {
        if resident {
            let n = self.next_use(idx, t + 1);
            self.order.set(idx, Reverse(n));
        }
    }
    fn on_insert(&mut self, idx: usize, now: u64) {
        let n = self.next_use(idx, now);
        self.order.set(idx, Reverse(n));
    }
    fn on_remove(&mut self, idx: usize) {
        self.order.remove(idx);
    }
    fn victim(&mut self, _now: u64, evictable: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        // Keys are next uses as of their last refresh; a key used since then was refreshed by
        // `on_access`, so every resident key is exact as long as the accesses follow `future`.
        self.order.min_matching(evictable)
    }
}
