//! Belady's MIN (Belady 1966, "A study of replacement algorithms for a virtual-storage
//! computer"): evict the resident expert whose next use lies farthest in the future. With the
//! whole access sequence known (a trace, or a recorded first pass) it is the optimum every other
//! policy is measured against.
//!
//! The future is stored as per-expert sorted occurrence lists (a CSR table built by counting
//! sort, 4 bytes per access) with a cursor per expert that only moves forward, so finding "the
//! next use at or after clock t" is amortised O(1) and correct for inserts at any clock.

use std::cmp::Reverse;

use super::heap::IndexedHeap;
use super::policy::Policy;
use crate::{Error, Result};

/// "Never used again".
const NEVER: u64 = u64::MAX;

/// Belady's optimal offline policy.
#[derive(Debug, Clone)]
pub struct Belady {
    /// `occ[start[i]..start[i + 1]]`: the access indices at which expert `i` is used, ascending.
    start: Vec<u32>,
    occ: Vec<u32>,
    /// Per expert, the first entry of its occurrence list not yet known to be in the past.
    cursor: Vec<u32>,
    /// Resident experts keyed by next use, farthest first.
    order: IndexedHeap<Reverse<u64>>,
}

impl Belady {
    /// Belady over `num_keys` dense indices and the future access sequence `future` (dense
    /// indices, each `< num_keys`). Fails if the sequence has 2³² or more accesses.
    pub fn from_indices(num_keys: usize, future: &[u32]) -> Result<Self> {
        if future.len() >= u32::MAX as usize {
            return Err(Error::InvalidOption(format!(
                "belady: a future of {} accesses is longer than the supported 2^32 - 1",
                future.len()
            )));
        }
        let mut start = vec![0u32; num_keys + 1];
        for &i in future {
            start[i as usize + 1] += 1;
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
        let cursor = start[..num_keys].to_vec();
        Ok(Belady { start, occ, cursor, order: IndexedHeap::new(num_keys) })
    }

    /// The first use of `idx` at access index `>= t`, or [`NEVER`].
    #[inline]
    fn next_use(&mut self, idx: usize, t: u64) -> u64 {
        let end = self.start[idx + 1];
        let mut c = self.cursor[idx];
        while c < end && (self.occ[c as usize] as u64) < t {
            c += 1;
        }
        self.cursor[idx] = c;
        if c < end { self.occ[c as usize] as u64 } else { NEVER }
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
