//! Belady's MIN (Belady 1966, "A study of replacement algorithms for a virtual-storage
//! computer"): evict the resident expert whose next use lies farthest in the future. With the
//! whole access sequence known (a trace, or a recorded first pass) it is the optimum every other
//! policy is measured against.
//!
//! The future is stored as a "next access to the same expert" table built in one backward
//! sweep, so an access finds its expert's next use with one sequential read; a per-expert
//! "last access in the past" pointer answers "next use at or after clock t" for inserts made at
//! any clock (prefetches between accesses).

use std::sync::Arc;

use super::policy::Policy;
use crate::{Error, Result};

/// "Never used again" (access indices are below 2³² - 1).
const NEVER: u32 = u32::MAX;

/// The future access sequence indexed for Belady: for each access, the index of the next access
/// to the same expert, and each expert's first access. Shared (behind an `Arc`) by every Belady
/// cache replaying the same sequence. 12 bytes per access.
#[derive(Debug, Clone)]
pub struct FutureIndex {
    /// The expert of each access.
    key_at: Vec<u32>,
    /// For access `t`, the next access to the same expert (or [`NEVER`]).
    next_after: Vec<u32>,
    /// Per expert, its first access (or [`NEVER`]).
    first: Vec<u32>,
}

impl FutureIndex {
    /// Indexes `future` (dense indices, each `< num_keys`). Fails if the sequence has 2³² - 1
    /// or more accesses or names an index outside `0..num_keys`.
    pub fn new(num_keys: usize, future: &[u32]) -> Result<Self> {
        if future.len() >= NEVER as usize {
            return Err(Error::InvalidOption(format!(
                "belady: a future of {} accesses is longer than the supported 2^32 - 2",
                future.len()
            )));
        }
        if let Some(&bad) = future.iter().find(|&&i| i as usize >= num_keys) {
            return Err(Error::InvalidOption(format!(
                "belady: future names expert index {bad} of {num_keys}"
            )));
        }
        // One backward sweep: `seen[i]` is the nearest later access to expert i.
        let mut seen = vec![NEVER; num_keys];
        let mut next_after = vec![NEVER; future.len()];
        for (t, &i) in future.iter().enumerate().rev() {
            next_after[t] = seen[i as usize];
            seen[i as usize] = t as u32;
        }
        Ok(FutureIndex { key_at: future.to_vec(), next_after, first: seen })
    }

    /// Number of experts indexed.
    pub fn num_keys(&self) -> usize {
        self.first.len()
    }

    /// Number of accesses in the sequence.
    pub fn len(&self) -> usize {
        self.key_at.len()
    }

    /// Whether the sequence is empty.
    pub fn is_empty(&self) -> bool {
        self.key_at.is_empty()
    }
}

/// A set of access indices with O(1) insert/remove and a fast "largest member ≤ p" search:
/// three levels of 64-bit occupancy words.
#[derive(Debug, Clone)]
struct TimeSet {
    l0: Vec<u64>,
    l1: Vec<u64>,
    l2: Vec<u64>,
}

impl TimeSet {
    fn new(n: usize) -> Self {
        let w0 = n.div_ceil(64).max(1);
        let w1 = w0.div_ceil(64);
        let w2 = w1.div_ceil(64);
        TimeSet { l0: vec![0; w0], l1: vec![0; w1], l2: vec![0; w2] }
    }

    #[inline]
    fn insert(&mut self, p: usize) {
        let w = p / 64;
        if self.l0[w] == 0 {
            let w1 = w / 64;
            if self.l1[w1] == 0 {
                self.l2[w1 / 64] |= 1 << (w1 % 64);
            }
            self.l1[w1] |= 1 << (w % 64);
        }
        self.l0[w] |= 1 << (p % 64);
    }

    #[inline]
    fn remove(&mut self, p: usize) {
        let w = p / 64;
        self.l0[w] &= !(1 << (p % 64));
        if self.l0[w] == 0 {
            let w1 = w / 64;
            self.l1[w1] &= !(1 << (w % 64));
            if self.l1[w1] == 0 {
                self.l2[w1 / 64] &= !(1 << (w1 % 64));
            }
        }
    }

    /// Bits of `word` at positions ≤ `bit`.
    #[inline]
    fn upto(word: u64, bit: usize) -> u64 {
        if bit >= 63 { word } else { word & ((2u64 << bit) - 1) }
    }

    #[inline]
    fn top(word: u64) -> usize {
        63 - word.leading_zeros() as usize
    }

    /// The largest member `≤ p`.
    fn prev(&self, p: usize) -> Option<usize> {
        let p = p.min(self.l0.len() * 64 - 1);
        let w = p / 64;
        let m = Self::upto(self.l0[w], p % 64);
        if m != 0 {
            return Some(w * 64 + Self::top(m));
        }
        // A lower l0 word in the same l1 word?
        let w1 = w / 64;
        if w % 64 > 0 {
            let m1 = Self::upto(self.l1[w1], w % 64 - 1);
            if m1 != 0 {
                let w0 = w1 * 64 + Self::top(m1);
                return Some(w0 * 64 + Self::top(self.l0[w0]));
            }
        }
        // A lower l1 word: search l2 downwards from w1 - 1.
        if w1 == 0 {
            return None;
        }
        let mut q = w1 - 1;
        loop {
            let w2 = q / 64;
            let m2 = Self::upto(self.l2[w2], q % 64);
            if m2 != 0 {
                let a = w2 * 64 + Self::top(m2);
                let w0 = a * 64 + Self::top(self.l1[a]);
                return Some(w0 * 64 + Self::top(self.l0[w0]));
            }
            if w2 == 0 {
                return None;
            }
            q = w2 * 64 - 1;
        }
    }
}

/// Belady's optimal offline policy.
///
/// Each resident expert with a future use is a member of a set of access indices (its next
/// use; next uses are distinct because each access belongs to one expert), so a hit moves one
/// bit and the victim is the largest member, found through three levels of occupancy words.
/// Resident experts never used again sit in a separate list and go first.
#[derive(Debug, Clone)]
pub struct Belady {
    future: Arc<FutureIndex>,
    /// Per expert: its last access known to be in the past (or [`NEVER`]).
    last: Vec<u32>,
    /// Per resident expert: its next use ([`NEVER`] if none); [`NEVER`] when not resident.
    next_use: Vec<u32>,
    resident: Vec<bool>,
    /// Next uses of resident experts.
    times: TimeSet,
    /// Resident experts never used again, and each one's position in that list.
    never: Vec<u32>,
    never_pos: Vec<u32>,
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
        let times = TimeSet::new(future.len());
        Belady {
            future,
            last: vec![NEVER; n],
            next_use: vec![NEVER; n],
            resident: vec![false; n],
            times,
            never: Vec::new(),
            never_pos: vec![NEVER; n],
        }
    }

    /// The first use of `idx` at access index `>= t`, or [`NEVER`]. Walks the expert's chain of
    /// accesses from the last one known to be past; when the accesses follow the future, that
    /// is one step.
    #[inline]
    fn next_use_from(&mut self, idx: usize, t: u64) -> u32 {
        let f = &*self.future;
        let l = self.last[idx];
        let mut p = if l == NEVER { f.first[idx] } else { f.next_after[l as usize] };
        while p != NEVER && (p as u64) < t {
            self.last[idx] = p;
            p = f.next_after[p as usize];
        }
        p
    }

    /// Takes resident `idx` out of the ordering.
    #[inline]
    fn unlink(&mut self, idx: usize) {
        let n = self.next_use[idx];
        if n != NEVER {
            self.times.remove(n as usize);
        } else {
            let p = self.never_pos[idx];
            if p != NEVER {
                let last = self.never.pop().unwrap_or(idx as u32);
                if last as usize != idx {
                    self.never[p as usize] = last;
                    self.never_pos[last as usize] = p;
                }
                self.never_pos[idx] = NEVER;
            }
        }
    }

    /// Puts resident `idx` into the ordering with next use `n`.
    #[inline]
    fn link(&mut self, idx: usize, n: u32) {
        self.next_use[idx] = n;
        if n != NEVER {
            self.times.insert(n as usize);
        } else {
            self.never_pos[idx] = self.never.len() as u32;
            self.never.push(idx as u32);
        }
    }
}

impl Policy for Belady {
    fn name(&self) -> &'static str {
        "belady"
    }
    #[inline]
    fn on_access(&mut self, idx: usize, t: u64, resident: bool) {
        let f = &*self.future;
        // Fast path: this access is the future's access number t.
        let n = if f.key_at.get(t as usize) == Some(&(idx as u32)) {
            self.last[idx] = t as u32;
            f.next_after[t as usize]
        } else {
            self.next_use_from(idx, t + 1)
        };
        if resident && self.resident[idx] {
            self.unlink(idx);
            self.link(idx, n);
        }
    }
    fn on_insert(&mut self, idx: usize, now: u64) {
        let n = self.next_use_from(idx, now);
        if std::mem::replace(&mut self.resident[idx], true) {
            self.unlink(idx);
        }
        self.link(idx, n);
    }
    fn on_remove(&mut self, idx: usize) {
        if std::mem::take(&mut self.resident[idx]) {
            self.unlink(idx);
            self.next_use[idx] = NEVER;
        }
    }
    fn victim(&mut self, _now: u64, evictable: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        // Never used again: any of them is optimal.
        if let Some(&i) = self.never.iter().rev().find(|&&i| evictable(i as usize)) {
            return Some(i as usize);
        }
        // Otherwise the farthest next use. Entries are exact for every resident expert as long
        // as the accesses follow `future`: a next use only changes when it is reached.
        let mut p = self.times.prev(usize::MAX)?;
        loop {
            let idx = self.future.key_at[p] as usize;
            if evictable(idx) {
                return Some(idx);
            }
            p = self.times.prev(p.checked_sub(1)?)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    #[test]
    fn time_set_agrees_with_a_btree_set() {
        let n = 300_000; // three levels in use
        let mut s = TimeSet::new(n);
        let mut model = std::collections::BTreeSet::new();
        let mut r = SplitMix64::new(1);
        for _ in 0..20_000 {
            let p = if r.below(2) == 0 { r.below(n as u64) } else { r.below(200) * 1000 } as usize;
            if r.below(3) == 0 {
                s.remove(p);
                model.remove(&p);
            } else {
                s.insert(p);
                model.insert(p);
            }
            let q = r.below(n as u64) as usize;
            assert_eq!(s.prev(q), model.range(..=q).next_back().copied(), "prev({q})");
        }
        assert_eq!(s.prev(usize::MAX), model.iter().next_back().copied());
    }
}
