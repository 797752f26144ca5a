//! LFU with O(1) hits: resident experts sit in per-count recency lists (bucket `c` holds the
//! experts used `c` times, least recent first), and a two-level occupancy bitmap finds the
//! lowest non-empty count. Counts survive eviction, so an expert can re-enter at any count;
//! because it re-enters at the tail of its bucket, bucket order is always "least recently
//! accessed or inserted first", which is LFU's tie-break.
//!
//! A heap keyed by (count, recency) gives the same order, but LFU's victims sit next to the
//! freshly inserted, protected experts of the current block, so every eviction had to search
//! past them; here the search steps along a list instead.

use super::policy::Policy;

const NIL: u32 = u32::MAX;

/// Least frequently used (ties: least recently accessed or inserted).
#[derive(Debug, Clone)]
pub struct Lfu {
    counts: Vec<u32>,
    /// Per expert: (previous, next) in its bucket; one cache line serves both.
    links: Vec<[u32; 2]>,
    /// Per count: (first, last) resident expert with that count.
    ends: Vec<[u32; 2]>,
    /// Bit `c` set: bucket `c` is non-empty; `summary` bit `w` set: `bits[w] != 0`.
    bits: Vec<u64>,
    summary: Vec<u64>,
}

impl Lfu {
    /// An LFU policy over `num_keys` dense indices.
    pub fn new(num_keys: usize) -> Self {
        Lfu {
            counts: vec![0; num_keys],
            links: vec![[NIL; 2]; num_keys],
            ends: Vec::new(),
            bits: Vec::new(),
            summary: Vec::new(),
        }
    }

    #[inline]
    fn push(&mut self, idx: usize) {
        let c = self.counts[idx] as usize;
        if c >= self.ends.len() {
            let n = (c + 1).next_power_of_two().max(64);
            self.ends.resize(n, [NIL; 2]);
            self.bits.resize(n / 64, 0);
            self.summary.resize(n.div_ceil(64 * 64), 0);
        }
        let t = self.ends[c][1];
        self.links[idx] = [t, NIL];
        if t == NIL {
            self.ends[c][0] = idx as u32;
            self.bits[c / 64] |= 1 << (c % 64);
            self.summary[c / 4096] |= 1 << ((c / 64) % 64);
        } else {
            self.links[t as usize][1] = idx as u32;
        }
        self.ends[c][1] = idx as u32;
    }

    #[inline]
    fn unlink(&mut self, idx: usize) {
        let c = self.counts[idx] as usize;
        let [p, n] = self.links[idx];
        if p == NIL {
            self.ends[c][0] = n;
        } else {
            self.links[p as usize][1] = n;
        }
        if n == NIL {
            self.ends[c][1] = p;
        } else {
            self.links[n as usize][0] = p;
        }
        if self.ends[c][0] == NIL {
            self.bits[c / 64] &= !(1 << (c % 64));
            if self.bits[c / 64] == 0 {
                self.summary[c / 4096] &= !(1 << ((c / 64) % 64));
            }
        }
        self.links[idx] = [NIL; 2];
    }

    /// Whether `idx` is linked (resident): linked entries have a neighbour or head a bucket.
    #[inline]
    fn linked(&self, idx: usize) -> bool {
        self.links[idx][0] != NIL
            || self.ends.get(self.counts[idx] as usize).is_some_and(|e| e[0] == idx as u32)
    }

    /// The lowest non-empty count `>= from`.
    fn next_count(&self, from: usize) -> Option<usize> {
        let mut w = from / 64;
        if w >= self.bits.len() {
            return None;
        }
        let first = self.bits[w] & (!0u64 << (from % 64));
        if first != 0 {
            return Some(w * 64 + first.trailing_zeros() as usize);
        }
        // Find the next non-empty word through the summary.
        w += 1;
        let mut s = w / 64;
        if s >= self.summary.len() {
            return None;
        }
        let mut word =
            if w % 64 == 0 { self.summary[s] } else { self.summary[s] & (!0u64 << (w % 64)) };
        loop {
            if word != 0 {
                let wi = s * 64 + word.trailing_zeros() as usize;
                return Some(wi * 64 + self.bits[wi].trailing_zeros() as usize);
            }
            s += 1;
            if s >= self.summary.len() {
                return None;
            }
            word = self.summary[s];
        }
    }
}

impl Policy for Lfu {
    fn name(&self) -> &'static str {
        "lfu"
    }
    #[inline]
    fn on_access(&mut self, idx: usize, _t: u64, resident: bool) {
        if resident {
            self.unlink(idx);
            self.counts[idx] = self.counts[idx].saturating_add(1);
            self.push(idx);
        } else {
            self.counts[idx] = self.counts[idx].saturating_add(1);
        }
    }
    fn on_insert(&mut self, idx: usize, _now: u64) {
        if self.linked(idx) {
            self.unlink(idx);
        }
        self.push(idx);
    }
    fn on_remove(&mut self, idx: usize) {
        if self.linked(idx) {
            self.unlink(idx);
        }
    }
    fn victim(&mut self, _now: u64, evictable: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        let mut c = self.next_count(0)?;
        loop {
            let mut i = self.ends[c][0];
            while i != NIL {
                if evictable(i as usize) {
                    return Some(i as usize);
                }
                i = self.links[i as usize][1];
            }
            c = self.next_count(c + 1)?;
        }
    }
}
