//! PanGu-Σ Random Routed Experts: the token → expert-in-domain map, and routing by token id
//! and domain (no gate, weight 1, no capacity).

use super::RoutingPlan;
use crate::error::{Error, Result};
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

/// The domains a model holds and how a caller's domain id maps to the model's local domain.
#[derive(Debug, Clone, Copy)]
pub struct Domains<'a> {
    /// Number of domain groups in the model.
    pub num_domains: usize,
    /// Original ids of the model's domains (a model made by `extract`); `None` = `0..num_domains`.
    pub ids: Option<&'a [usize]>,
}

impl Domains<'_> {
    /// The local index of original domain `d`, or an error naming it.
    pub fn local(&self, d: i64) -> Result<usize> {
        match self.ids {
            None => {
                if d < 0 || d as u64 >= self.num_domains as u64 {
                    return Err(Error::input(format!(
                        "domain {d} is outside this model's domains 0..{}",
                        self.num_domains
                    )));
                }
                Ok(d as usize)
            }
            Some(ids) => ids.iter().position(|&x| x as i64 == d).ok_or_else(|| {
                Error::input(format!(
                    "domain {d} is not in this model (it holds domain(s) {ids:?}, e.g. a sub-model made by `extract`)"
                ))
            }),
        }
    }
}

/// Routes tokens: token `i` with id `t` in (original) domain `d` goes to expert
/// `local(d)·K + map[t]`, weight 1. Token ids outside `0..map.len()` and unknown domains are
/// `Error::InvalidInput` naming the value.
pub fn route(
    token_ids: &[i64],
    domains: &[i64],
    map: &[i64],
    experts_per_domain: usize,
    dom: Domains<'_>,
) -> Result<RoutingPlan> {
    if token_ids.len() != domains.len() {
        return Err(Error::input(format!(
            "{} token ids but {} domains (one per token expected)",
            token_ids.len(),
            domains.len()
        )));
    }
    let k = experts_per_domain;
    let mut ids = Vec::with_capacity(token_ids.len());
    for (i, (&t, &d)) in token_ids.iter().zip(domains).enumerate() {
        let local = dom.local(d)?;
        if t < 0 || t as u64 >= map.len() as u64 {
            return Err(Error::input(format!(
                "token id {t} (token {i}) is outside the vocabulary 0..{}",
                map.len()
            )));
        }
        let m = map[t as usize];
        if m < 0 || m as u64 >= k as u64 {
            return Err(Error::input(format!(
                "RRE map entry {m} for token id {t} is outside 0..{k} (corrupt map)"
            )));
        }
        ids.push((local * k) as i32 + m as i32);
    }
    let n = token_ids.len();
    Ok(RoutingPlan::from_assignments(n, 1, dom.num_domains * k, ids, vec![1.0; n]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_domain_and_map() {
        let map = [1i64, 0, 1];
        let dom = Domains { num_domains: 2, ids: None };
        let plan = route(&[0, 1, 2], &[1, 1, 0], &map, 2, dom).unwrap();
        assert_eq!(plan.expert_ids, vec![3, 2, 1]);
        assert_eq!(plan.weights, vec![1.0; 3]);
        assert!(route(&[3], &[0], &map, 2, dom).is_err());
        assert!(route(&[-1], &[0], &map, 2, dom).is_err());
        assert!(route(&[0], &[2], &map, 2, dom).is_err());
    }

    #[test]
    fn extracted_model_maps_original_domain() {
        let map = [1i64, 0];
        let ids = [5usize];
        let dom = Domains { num_domains: 1, ids: Some(&ids) };
        let plan = route(&[0, 1], &[5, 5], &map, 2, dom).unwrap();
        assert_eq!(plan.expert_ids, vec![1, 0]);
        let err = route(&[0], &[0], &map, 2, dom).unwrap_err().to_string();
        assert!(err.contains("domain 0"), "{err}");
    }
}
