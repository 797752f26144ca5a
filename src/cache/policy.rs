//! Eviction policies behind one trait: LRU, LFU, Static (pinned set + LRU) and Belady (offline
//! optimum). Policies see dense expert indices (see [`KeyIndex`]) and the cache's logical clock;
//! they keep their own ordered view of the resident set through the insert/remove hooks.

use std::fmt;
use std::str::FromStr;

use super::belady::Belady;
use super::lfu::Lfu;
use super::list::RecencyList;
use super::{ExpertKey, KeyIndex};
use crate::{Error, Result};

/// An eviction policy. The cache calls the hooks in this order: [`Policy::on_access`] for every
/// use of an expert (hit or miss), [`Policy::on_insert`] when an expert becomes resident,
/// [`Policy::on_remove`] when it leaves, and [`Policy::victim`] to choose whom to evict.
///
/// Indices are dense ([`KeyIndex::index`]); `t` is the cache's logical clock: the access hook
/// gets the index of that access (0, 1, 2, …), the insert hook gets the number of accesses made
/// so far (inserts, e.g. prefetches, happen between accesses and do not advance the clock).
pub trait Policy: Send {
    /// The policy's name as the CLI spells it (`"lru"`, …).
    fn name(&self) -> &'static str;
    /// `idx` is used by a block at access number `t`; `resident` says whether it was a hit.
    fn on_access(&mut self, idx: usize, t: u64, resident: bool);
    /// `idx` became resident at clock `now`.
    fn on_insert(&mut self, idx: usize, now: u64);
    /// `idx` stopped being resident.
    fn on_remove(&mut self, idx: usize);
    /// The resident index to evict at clock `now` among those for which `evictable` is true,
    /// or `None` when every resident index is refused.
    fn victim(&mut self, now: u64, evictable: &mut dyn FnMut(usize) -> bool) -> Option<usize>;
    /// Experts this policy never evicts (Static's pinned set); a caller may load them up front.
    fn pinned(&self) -> &[ExpertKey] {
        &[]
    }
}

/// The policies the crate offers.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// Least recently used (accessed or inserted).
    Lru,
    /// Least frequently used; counts survive eviction; ties go to the least recent.
    Lfu,
    /// A pinned set that is never evicted; the other slots are managed LRU.
    Static,
    /// Belady's MIN: evict the expert whose next use is farthest (needs the future).
    Belady,
}

impl PolicyKind {
    /// Every policy, in the order tables print them.
    pub const ALL: [PolicyKind; 4] =
        [PolicyKind::Lru, PolicyKind::Lfu, PolicyKind::Static, PolicyKind::Belady];

    /// The CLI name.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Lru => "lru",
            PolicyKind::Lfu => "lfu",
            PolicyKind::Static => "static",
            PolicyKind::Belady => "belady",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PolicyKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        PolicyKind::ALL.into_iter().find(|k| k.as_str() == t).ok_or_else(|| {
            Error::InvalidOption(format!("unknown policy {s:?} (valid: lru, lfu, static, belady)"))
        })
    }
}

/// Everything a policy may need at construction.
#[derive(Debug, Clone, Default)]
pub struct PolicyInit {
    /// Number of experts in each block (the key space).
    pub experts_per_block: Vec<usize>,
    /// Belady: the whole access sequence, in the order [`super::ExpertCache::access`] will see it.
    pub future: Option<Vec<ExpertKey>>,
    /// Static: the experts to pin (at most the number of slots).
    pub pinned: Option<Vec<ExpertKey>>,
}

/// Builds a policy for a cache of `num_slots` slots.
pub fn make_policy(
    kind: PolicyKind,
    init: PolicyInit,
    num_slots: usize,
) -> Result<Box<dyn Policy>> {
    let index = KeyIndex::new(&init.experts_per_block);
    let to_dense = |keys: &[ExpertKey], what: &str| -> Result<Vec<u32>> {
        keys.iter()
            .map(|&k| {
                index.index(k).map(|i| i as u32).ok_or_else(|| {
                    Error::InvalidOption(format!(
                        "{what} names expert {} of block {}, outside the model",
                        k.expert, k.block
                    ))
                })
            })
            .collect()
    };
    Ok(match kind {
        PolicyKind::Lru => Box::new(Lru::new(index.len())),
        PolicyKind::Lfu => Box::new(Lfu::new(index.len())),
        PolicyKind::Static => {
            let pinned = init.pinned.ok_or_else(|| {
                Error::InvalidOption(
                    "static needs the pinned set (the most frequent experts of a warm-up or a trace)"
                        .into(),
                )
            })?;
            let dense = to_dense(&pinned, "the static pinned set")?;
            if pinned.len() > num_slots {
                return Err(Error::InvalidOption(format!(
                    "static pins {} experts but the cache has only {num_slots} slots",
                    pinned.len()
                )));
            }
            Box::new(Static::new(index.len(), pinned, &dense))
        }
        PolicyKind::Belady => {
            let future = init.future.ok_or_else(|| {
                Error::InvalidOption(
                    "belady needs the future access sequence (a trace or a recorded first pass)"
                        .into(),
                )
            })?;
            let dense = to_dense(&future, "the belady future")?;
            Box::new(Belady::from_indices(index.len(), &dense)?)
        }
    })
}

/// Least recently used: the victim is the resident expert accessed or inserted longest ago.
#[derive(Debug, Clone)]
pub struct Lru {
    order: RecencyList,
}

impl Lru {
    /// An LRU policy over `num_keys` dense indices.
    pub fn new(num_keys: usize) -> Self {
        Lru { order: RecencyList::new(num_keys) }
    }
}

impl Policy for Lru {
    fn name(&self) -> &'static str {
        "lru"
    }
    #[inline]
    fn on_access(&mut self, idx: usize, _t: u64, resident: bool) {
        if resident {
            self.order.push_back(idx);
        }
    }
    fn on_insert(&mut self, idx: usize, _now: u64) {
        self.order.push_back(idx);
    }
    fn on_remove(&mut self, idx: usize) {
        self.order.remove(idx);
    }
    fn victim(&mut self, _now: u64, evictable: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        self.order.first_matching(evictable)
    }
}

/// Static: pinned experts are never evicted (once loaded they stay); every other resident
/// expert is managed LRU in the remaining slots.
#[derive(Debug, Clone)]
pub struct Static {
    is_pinned: Vec<bool>,
    pinned: Vec<ExpertKey>,
    others: RecencyList,
}

impl Static {
    /// A static policy over `num_keys` dense indices; `dense` are the indices of `pinned`.
    pub fn new(num_keys: usize, pinned: Vec<ExpertKey>, dense: &[u32]) -> Self {
        let mut is_pinned = vec![false; num_keys];
        for &i in dense {
            is_pinned[i as usize] = true;
        }
        Static { is_pinned, pinned, others: RecencyList::new(num_keys) }
    }
}

impl Policy for Static {
    fn name(&self) -> &'static str {
        "static"
    }
    #[inline]
    fn on_access(&mut self, idx: usize, _t: u64, resident: bool) {
        if resident && !self.is_pinned[idx] {
            self.others.push_back(idx);
        }
    }
    fn on_insert(&mut self, idx: usize, _now: u64) {
        if !self.is_pinned[idx] {
            self.others.push_back(idx);
        }
    }
    fn on_remove(&mut self, idx: usize) {
        self.others.remove(idx);
    }
    fn victim(&mut self, _now: u64, evictable: &mut dyn FnMut(usize) -> bool) -> Option<usize> {
        self.others.first_matching(evictable)
    }
    fn pinned(&self) -> &[ExpertKey] {
        &self.pinned
    }
}
