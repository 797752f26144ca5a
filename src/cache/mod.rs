//! The expert cache: which experts are resident, in which of a fixed number of equal slots, and
//! whom to evict (policies in [`policy`], Belady's bound in `belady.rs`). It knows nothing of
//! devices or of how bytes move; the engine and the simulator drive the same code.
//!
//! Experts are addressed on the hot path by a dense index (block offset + expert, see
//! [`KeyIndex`]) rather than by hashing, so an access costs a few array reads.

mod belady;
pub mod budget;
mod lfu;
mod list;
pub mod policy;

use serde::{Deserialize, Serialize};

pub use belady::{Belady, FutureIndex};
pub use budget::parse_budget;
pub use lfu::Lfu;
pub use policy::{Lru, Policy, PolicyInit, PolicyKind, Static, make_policy};

use crate::{Error, Result};

/// One expert of one MoE block.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExpertKey {
    /// MoE block index (0-based, in execution order).
    pub block: u32,
    /// Expert index within the block.
    pub expert: u32,
}

impl ExpertKey {
    /// The key of `expert` in `block`.
    pub fn new(block: u32, expert: u32) -> Self {
        ExpertKey { block, expert }
    }
}

/// Maps [`ExpertKey`]s to dense indices `0..len` (block offsets + expert) and back.
#[derive(Debug, Clone, Default)]
pub struct KeyIndex {
    /// `offsets[b]` is the dense index of expert 0 of block `b`; one extra entry at the end.
    offsets: Vec<u32>,
    /// The block of each dense index (for the way back).
    block_of: Vec<u32>,
}

impl KeyIndex {
    /// The index of a model with `experts_per_block[b]` experts in block `b`.
    pub fn new(experts_per_block: &[usize]) -> Self {
        let mut offsets = Vec::with_capacity(experts_per_block.len() + 1);
        let mut block_of = Vec::new();
        let mut acc = 0u32;
        for (b, &n) in experts_per_block.iter().enumerate() {
            offsets.push(acc);
            acc += n as u32;
            block_of.extend(std::iter::repeat_n(b as u32, n));
        }
        offsets.push(acc);
        KeyIndex { offsets, block_of }
    }

    /// Total number of experts.
    pub fn len(&self) -> usize {
        self.block_of.len()
    }

    /// Whether the model has no experts at all.
    pub fn is_empty(&self) -> bool {
        self.block_of.is_empty()
    }

    /// Number of blocks.
    pub fn num_blocks(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Number of experts of `block` (0 for an unknown block).
    pub fn experts_in(&self, block: u32) -> usize {
        let b = block as usize;
        if b + 1 < self.offsets.len() {
            (self.offsets[b + 1] - self.offsets[b]) as usize
        } else {
            0
        }
    }

    /// The dense index of `key`, or `None` if the model has no such expert.
    #[inline]
    pub fn index(&self, key: ExpertKey) -> Option<usize> {
        let b = key.block as usize;
        let lo = *self.offsets.get(b)?;
        let hi = *self.offsets.get(b + 1)?;
        let i = lo.checked_add(key.expert)?;
        (i < hi).then_some(i as usize)
    }

    /// The key of dense index `idx` (`idx < len()`).
    #[inline]
    pub fn key(&self, idx: usize) -> ExpertKey {
        let b = self.block_of[idx];
        ExpertKey { block: b, expert: idx as u32 - self.offsets[b as usize] }
    }
}

/// Where [`ExpertCache::insert`] put an expert.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The slot now holding the expert.
    pub slot: usize,
    /// The expert evicted to make room, if any.
    pub evicted: Option<ExpertKey>,
}

/// Marks "no slot" / "no expert" in the dense tables.
const NONE: u32 = u32::MAX;

/// A fixed number of equal slots holding experts, with an eviction policy and hit/miss counts.
pub struct ExpertCache {
    index: KeyIndex,
    /// Per dense index: its slot, or `NONE`.
    slot_of: Vec<u32>,
    /// Per slot: its dense index, or `NONE`.
    held: Vec<u32>,
    /// Free slots, popped from the end (lowest slot numbers are handed out first).
    free: Vec<u32>,
    policy: Box<dyn Policy>,
    hits: u64,
    misses: u64,
    clock: u64,
}

impl std::fmt::Debug for ExpertCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpertCache")
            .field("policy", &self.policy.name())
            .field("slots", &self.held.len())
            .field("resident", &self.len())
            .field("hits", &self.hits)
            .field("misses", &self.misses)
            .field("clock", &self.clock)
            .finish()
    }
}

impl ExpertCache {
    /// An empty cache of `num_slots` slots for a model with `experts_per_block[b]` experts in
    /// block `b`, evicting with `policy` (built for the same shape, see [`make_policy`]).
    pub fn new(num_slots: usize, experts_per_block: &[usize], policy: Box<dyn Policy>) -> Self {
        let index = KeyIndex::new(experts_per_block);
        ExpertCache {
            slot_of: vec![NONE; index.len()],
            held: vec![NONE; num_slots],
            free: (0..num_slots as u32).rev().collect(),
            index,
            policy,
            hits: 0,
            misses: 0,
            clock: 0,
        }
    }

    /// The key ↔ dense index map of this cache's model.
    pub fn key_index(&self) -> &KeyIndex {
        &self.index
    }

    /// The policy's name.
    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    /// Experts the policy never evicts (Static's pinned set; empty for the others).
    pub fn pinned(&self) -> &[ExpertKey] {
        self.policy.pinned()
    }

    /// One use of `key` by a block after routing; advances the logical clock (the access index
    /// that Belady's future is indexed by). Returns whether it was resident (a hit) and counts
    /// hits and misses. A miss does not insert: the caller fetches and calls [`Self::insert`].
    ///
    /// # Panics
    /// If `key` is outside the shape given to [`ExpertCache::new`] (callers validate keys that
    /// come from users, e.g. the simulator checks every trace line against its header).
    #[inline]
    pub fn access(&mut self, key: ExpertKey) -> bool {
        let Some(idx) = self.index.index(key) else {
            panic!("expert {} of block {} is outside the cache's model", key.expert, key.block)
        };
        self.access_index(idx)
    }

    /// [`Self::access`] by dense index (`idx < key_index().len()`).
    #[inline]
    pub fn access_index(&mut self, idx: usize) -> bool {
        let hit = self.slot_of[idx] != NONE;
        self.policy.on_access(idx, self.clock, hit);
        self.clock += 1;
        if hit {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
        hit
    }

    /// Whether `key` is resident.
    #[inline]
    pub fn contains(&self, key: ExpertKey) -> bool {
        self.slot_of(key).is_some()
    }

    /// The slot holding `key`, if resident.
    #[inline]
    pub fn slot_of(&self, key: ExpertKey) -> Option<usize> {
        let s = self.slot_of[self.index.index(key)?];
        (s != NONE).then_some(s as usize)
    }

    /// The slot holding dense index `idx`, if resident.
    #[inline]
    pub fn slot_of_index(&self, idx: usize) -> Option<usize> {
        let s = *self.slot_of.get(idx)?;
        (s != NONE).then_some(s as usize)
    }

    /// Places `key` in a free slot, or evicts a victim chosen by the policy among resident keys
    /// for which `evictable(k)` is true. Returns the slot and the evicted key. Inserting a
    /// resident key returns its slot and evicts nothing. Does not advance the clock (prefetches
    /// happen between accesses).
    ///
    /// Fails with [`Error::CacheFull`] when every resident key is refused by `evictable` or by
    /// the policy (Static's pinned keys), and with [`Error::InvalidInput`] for a key outside the
    /// model.
    pub fn insert(
        &mut self,
        key: ExpertKey,
        evictable: &dyn Fn(ExpertKey) -> bool,
    ) -> Result<Placement> {
        let idx = self.index.index(key).ok_or_else(|| {
            Error::input(format!(
                "expert {} of block {} is outside the cache's model",
                key.expert, key.block
            ))
        })?;
        // The key map moves out for the call so that the test can borrow it (moving two Vecs).
        let index = std::mem::take(&mut self.index);
        let placed = self.place(idx, &mut |i| evictable(index.key(i)));
        self.index = index;
        self.placement(placed).ok_or(Error::CacheFull {
            block: key.block,
            expert: key.expert,
            slots: self.held.len(),
        })
    }

    /// [`Self::insert`] by dense index with a dense-index test; `None` when no slot can be
    /// freed. The simulator's hot path.
    pub fn insert_index(
        &mut self,
        idx: usize,
        evictable: &mut dyn FnMut(usize) -> bool,
    ) -> Option<Placement> {
        let placed = self.place(idx, evictable);
        self.placement(placed)
    }

    fn placement(&self, placed: Option<(usize, Option<usize>)>) -> Option<Placement> {
        placed.map(|(slot, victim)| Placement { slot, evicted: victim.map(|v| self.index.key(v)) })
    }

    /// Finds `idx` a slot (evicting if needed); returns the slot and the evicted dense index.
    /// Uses no key map, so that [`Self::insert`] can lend it to the caller's test.
    fn place(
        &mut self,
        idx: usize,
        evictable: &mut dyn FnMut(usize) -> bool,
    ) -> Option<(usize, Option<usize>)> {
        let s = self.slot_of[idx];
        if s != NONE {
            return Some((s as usize, None));
        }
        let (slot, evicted) = match self.free.pop() {
            Some(slot) => (slot, None),
            None => {
                let slot_of = &self.slot_of;
                let victim = self
                    .policy
                    .victim(self.clock, &mut |i| slot_of[i] != NONE && i != idx && evictable(i))?;
                let slot = self.slot_of[victim];
                debug_assert!(
                    slot != NONE,
                    "policy {} chose a non-resident victim",
                    self.policy.name()
                );
                self.slot_of[victim] = NONE;
                self.policy.on_remove(victim);
                (slot, Some(victim))
            }
        };
        self.slot_of[idx] = slot;
        self.held[slot as usize] = idx as u32;
        self.policy.on_insert(idx, self.clock);
        Some((slot as usize, evicted))
    }

    /// Evicts `key` if resident and returns the slot it freed.
    pub fn remove(&mut self, key: ExpertKey) -> Option<usize> {
        let idx = self.index.index(key)?;
        let s = self.slot_of[idx];
        if s == NONE {
            return None;
        }
        self.slot_of[idx] = NONE;
        self.held[s as usize] = NONE;
        self.free.push(s);
        self.policy.on_remove(idx);
        Some(s as usize)
    }

    /// Number of slots.
    pub fn num_slots(&self) -> usize {
        self.held.len()
    }

    /// Number of resident experts.
    pub fn len(&self) -> usize {
        self.held.len() - self.free.len()
    }

    /// Whether no expert is resident.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Accesses that found their expert resident.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Accesses that did not.
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// Number of accesses so far (the index the next access will have).
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// Resident experts and their slots, in slot order.
    pub fn resident(&self) -> impl Iterator<Item = (ExpertKey, usize)> + '_ {
        self.held
            .iter()
            .enumerate()
            .filter(|(_, i)| **i != NONE)
            .map(|(s, &i)| (self.index.key(i as usize), s))
    }
}
