//! An indexed binary min-heap over dense expert indices: the ordered structure behind LFU and
//! Belady, with O(log n) key updates and a "smallest entry passing a test" search that skips the
//! few protected experts without popping anything.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Marks an index that is not in the heap.
const ABSENT: u32 = u32::MAX;

/// A binary min-heap of `(priority, index)` with a position table so that any index's priority
/// can be changed or removed in O(log n).
#[derive(Debug, Clone)]
pub(crate) struct IndexedHeap<K> {
    heap: Vec<(K, u32)>,
    pos: Vec<u32>,
    /// Scratch for [`IndexedHeap::min_matching`], kept to avoid an allocation per search.
    frontier: BinaryHeap<Reverse<(K, u32)>>,
}

impl<K: Ord + Copy> IndexedHeap<K> {
    /// An empty heap for indices `0..capacity`.
    pub(crate) fn new(capacity: usize) -> Self {
        IndexedHeap { heap: Vec::new(), pos: vec![ABSENT; capacity], frontier: BinaryHeap::new() }
    }

    /// Inserts `idx` with `key`, or changes its key if present.
    pub(crate) fn set(&mut self, idx: usize, key: K) {
        let p = self.pos[idx];
        if p == ABSENT {
            let p = self.heap.len();
            self.heap.push((key, idx as u32));
            self.pos[idx] = p as u32;
            self.sift_up(p);
        } else {
            let p = p as usize;
            let old = self.heap[p].0;
            self.heap[p].0 = key;
            if key < old {
                self.sift_up(p);
            } else {
                self.sift_down(p);
            }
        }
    }

    /// Removes `idx` if present.
    pub(crate) fn remove(&mut self, idx: usize) {
        let p = self.pos[idx];
        if p == ABSENT {
            return;
        }
        let p = p as usize;
        self.pos[idx] = ABSENT;
        let last = self.heap.len() - 1;
        if p != last {
            self.heap.swap(p, last);
            self.heap.pop();
            self.pos[self.heap[p].1 as usize] = p as u32;
            // The moved entry may belong above or below its new place.
            let moved = self.heap[p].1 as usize;
            self.sift_up(p);
            self.sift_down(self.pos[moved] as usize);
        } else {
            self.heap.pop();
        }
    }

    /// The index with the smallest key among those for which `ok` is true. Explores the heap in
    /// key order from the root, so the cost grows only with the number of rejected entries.
    pub(crate) fn min_matching(&mut self, ok: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        let (_, root) = *self.heap.first()?;
        if ok(root as usize) {
            return Some(root as usize);
        }
        let mut frontier = std::mem::take(&mut self.frontier);
        frontier.clear();
        self.push_children(0, &mut frontier);
        let mut found = None;
        while let Some(Reverse((_, p))) = frontier.pop() {
            let idx = self.heap[p as usize].1 as usize;
            if ok(idx) {
                found = Some(idx);
                break;
            }
            self.push_children(p as usize, &mut frontier);
        }
        self.frontier = frontier;
        found
    }

    fn push_children(&self, p: usize, frontier: &mut BinaryHeap<Reverse<(K, u32)>>) {
        for c in [2 * p + 1, 2 * p + 2] {
            if let Some(&(k, _)) = self.heap.get(c) {
                frontier.push(Reverse((k, c as u32)));
            }
        }
    }

    fn sift_up(&mut self, mut p: usize) {
        while p > 0 {
            let parent = (p - 1) / 2;
            if self.heap[p].0 < self.heap[parent].0 {
                self.swap(p, parent);
                p = parent;
            } else {
                break;
            }
        }
    }

    fn sift_down(&mut self, mut p: usize) {
        let n = self.heap.len();
        loop {
            let l = 2 * p + 1;
            if l >= n {
                break;
            }
            let r = l + 1;
            let c = if r < n && self.heap[r].0 < self.heap[l].0 { r } else { l };
            if self.heap[c].0 < self.heap[p].0 {
                self.swap(p, c);
                p = c;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pos[self.heap[a].1 as usize] = a as u32;
        self.pos[self.heap[b].1 as usize] = b as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    #[test]
    fn agrees_with_a_sorted_model_under_random_operations() {
        let n = 40;
        let mut h = IndexedHeap::new(n);
        let mut model: Vec<Option<u64>> = vec![None; n];
        let mut r = SplitMix64::new(3);
        for _ in 0..5000 {
            let i = r.below(n as u64) as usize;
            if r.below(3) == 0 {
                h.remove(i);
                model[i] = None;
            } else {
                let k = r.below(50);
                h.set(i, (k, i));
                model[i] = Some(k);
            }
            let want = model.iter().enumerate().filter_map(|(i, k)| k.map(|k| (k, i))).min();
            assert_eq!(h.min_matching(&mut |_| true), want.map(|w| w.1));
            // Reject even indices: the smallest odd one must come back.
            let want_odd = model
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 2 == 1)
                .filter_map(|(i, k)| k.map(|k| (k, i)))
                .min();
            assert_eq!(h.min_matching(&mut |i| i % 2 == 1), want_odd.map(|w| w.1));
        }
    }
}
