//! The host-side stand-in for device memory: a fixed set of equal slots carved from the budget.
//! Copy workers write a slot under its write lock; compute reads it under the read lock, so a
//! slot is never read while being filled. Which expert owns which slot is the cache's business.

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// One slot's bytes, 64-byte aligned (backed by `u64`s, so any float dtype can be viewed).
#[derive(Debug)]
pub struct SlotBuf {
    words: Vec<u64>,
    len: usize,
}

impl SlotBuf {
    fn new(bytes: usize) -> SlotBuf {
        SlotBuf { words: vec![0u64; bytes.div_ceil(8)], len: 0 }
    }

    /// The valid bytes (what the last copy wrote).
    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }

    /// The whole buffer for writing, and sets the valid length to `len`.
    ///
    /// # Panics
    /// If `len` exceeds the slot size (the engine sizes slots for the largest expert).
    pub fn fill(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.words.len() * 8, "expert of {len} bytes does not fit its slot");
        self.len = len;
        &mut bytemuck::cast_slice_mut(&mut self.words)[..len]
    }
}

/// A fixed set of equal slots.
#[derive(Debug)]
pub struct SlotArena {
    slots: Vec<RwLock<SlotBuf>>,
    slot_bytes: usize,
}

impl SlotArena {
    /// `num_slots` slots of `slot_bytes` each (allocated now: the arena is the budget).
    pub fn new(num_slots: usize, slot_bytes: usize) -> SlotArena {
        SlotArena {
            slots: (0..num_slots).map(|_| RwLock::new(SlotBuf::new(slot_bytes))).collect(),
            slot_bytes,
        }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes per slot.
    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// Reads slot `i` (blocks while a copy into it is in progress).
    pub fn read(&self, i: usize) -> RwLockReadGuard<'_, SlotBuf> {
        self.slots[i].read()
    }

    /// Writes slot `i`.
    pub fn write(&self, i: usize) -> RwLockWriteGuard<'_, SlotBuf> {
        self.slots[i].write()
    }
}
