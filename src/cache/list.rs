//! An intrusive doubly-linked recency list over dense expert indices: O(1) touch, insert and
//! remove with no allocation, the structure behind LRU and the unpinned part of Static.

const NIL: u32 = u32::MAX;

/// Recency order of a set of dense indices, least recent at the front.
#[derive(Debug, Clone)]
pub(crate) struct RecencyList {
    prev: Vec<u32>,
    next: Vec<u32>,
    linked: Vec<bool>,
    head: u32,
    tail: u32,
}

impl RecencyList {
    /// An empty list for indices `0..capacity`.
    pub(crate) fn new(capacity: usize) -> Self {
        RecencyList {
            prev: vec![NIL; capacity],
            next: vec![NIL; capacity],
            linked: vec![false; capacity],
            head: NIL,
            tail: NIL,
        }
    }

    /// Whether `idx` is in the list.
    #[cfg(test)]
    pub(crate) fn contains(&self, idx: usize) -> bool {
        self.linked[idx]
    }

    /// Appends `idx` as the most recent (moving it if already present).
    #[inline]
    pub(crate) fn push_back(&mut self, idx: usize) {
        if self.linked[idx] {
            if self.tail == idx as u32 {
                return;
            }
            self.unlink(idx);
        }
        let i = idx as u32;
        self.prev[idx] = self.tail;
        self.next[idx] = NIL;
        if self.tail == NIL {
            self.head = i;
        } else {
            self.next[self.tail as usize] = i;
        }
        self.tail = i;
        self.linked[idx] = true;
    }

    /// Removes `idx` if present.
    #[inline]
    pub(crate) fn remove(&mut self, idx: usize) {
        if self.linked[idx] {
            self.unlink(idx);
        }
    }

    /// The least recent index for which `ok` is true.
    pub(crate) fn first_matching(&self, ok: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        let mut i = self.head;
        while i != NIL {
            if ok(i as usize) {
                return Some(i as usize);
            }
            i = self.next[i as usize];
        }
        None
    }

    #[inline]
    fn unlink(&mut self, idx: usize) {
        let (p, n) = (self.prev[idx], self.next[idx]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.linked[idx] = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_recency_order() {
        let mut l = RecencyList::new(5);
        for i in [0, 1, 2, 3] {
            l.push_back(i);
        }
        l.push_back(1); // 0 2 3 1
        l.remove(2); // 0 3 1
        assert_eq!(l.first_matching(&mut |_| true), Some(0));
        assert_eq!(l.first_matching(&mut |i| i != 0), Some(3));
        l.remove(0);
        l.remove(3);
        assert_eq!(l.first_matching(&mut |_| true), Some(1));
        l.remove(1);
        assert_eq!(l.first_matching(&mut |_| true), None);
        assert!(!l.contains(1));
    }
}
