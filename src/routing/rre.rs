//! PanGu-Σ Random Routed Experts: the token → expert-in-domain map.

use crate::rng::SplitMix64;

/// The balanced RRE map for a vocabulary of `vocab` ids over `k` experts per domain:
/// a SplitMix64 Fisher–Yates permutation `perm` of `0..vocab` (seeded with `seed`), then
/// `map[perm[r]] = r mod k`. Each expert receives ⌊vocab/k⌋ or ⌈vocab/k⌉ ids.
pub fn build_map(vocab: usize, k: usize, seed: u64) -> Vec<i32> {
    let mut perm: Vec<usize> = (0..vocab).collect();
    let mut rng = SplitMix64::new(seed);
    for i in (1..vocab).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        perm.swap(i, j);
    }
    let mut map = vec![0i32; vocab];
    for (r, &t) in perm.iter().enumerate() {
        map[t] = (r % k.max(1)) as i32;
    }
    map
}
