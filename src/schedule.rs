//! Per-block scheduling, InfMoE's overlap generalised: after routing, fetch every missing
//! expert at once (largest token count first, so the copy that unblocks the most work lands
//! first), compute resident experts while misses arrive, then misses in the same order.
//! Pure decisions only; the engine carries them out.

use serde::Serialize;

/// The order in which a block's experts are fetched and computed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockSchedule {
    /// Experts already resident, computed first (ascending index).
    pub resident: Vec<usize>,
    /// Missing experts, fetched at once and computed in this order (descending token count,
    /// ties by ascending index).
    pub misses: Vec<usize>,
}

impl BlockSchedule {
    /// Orders `needed` (expert, token count) given which experts are resident.
    pub fn new(needed: &[(usize, usize)], is_resident: impl Fn(usize) -> bool) -> BlockSchedule {
        let mut resident: Vec<usize> = Vec::new();
        let mut misses: Vec<(usize, usize)> = Vec::new();
        for &(e, tokens) in needed {
            if is_resident(e) { resident.push(e) } else { misses.push((e, tokens)) }
        }
        resident.sort_unstable();
        misses.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        BlockSchedule { resident, misses: misses.into_iter().map(|(e, _)| e).collect() }
    }
}

/// What one block execution cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BlockRecord {
    /// Decode step (or prefill = 0 when a prefill ran first).
    pub step: usize,
    /// Block index.
    pub block: usize,
    /// Experts used.
    pub experts: usize,
    /// Of which resident when routed.
    pub hits: usize,
    /// Seconds computing (routing, experts, combine).
    pub compute_seconds: f64,
    /// Seconds waiting on copy fences.
    pub stall_seconds: f64,
    /// Bytes copied for this block's misses.
    pub bytes_moved: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_first_then_misses_by_descending_tokens() {
        let needed = [(0, 3), (1, 9), (2, 1), (3, 9), (4, 5)];
        let s = BlockSchedule::new(&needed, |e| e == 2 || e == 0);
        assert_eq!(s.resident, vec![0, 2]);
        assert_eq!(s.misses, vec![1, 3, 4]);
    }
}
