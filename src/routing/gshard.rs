//! GShard / GLaM top-2 routing with the deterministic ('all') second expert and optional
//! expert capacity, as transformers' NllbMoeTop2Router.route_tokens (its runnable reference).

use super::{Capacity, RoutingPlan};
use crate::routing::topk::softmax_in_place;

/// Options of the GShard top-2 router.
#[derive(Debug, Clone, Copy)]
pub struct GShardParams {
    /// Expert capacity, if any (counted over every token of the call).
    pub capacity: Option<Capacity>,
    /// Normalise g1/(g1+g2) before dropping (else after, over the kept assignments).
    pub normalize_before_dropping: bool,
    /// Place tokens in order of their top probability instead of token order.
    pub batch_prioritized: bool,
}

/// Routes `logits [num_tokens × num_experts]`:
///
/// * first choice = argmax of the softmax probabilities; second = argmax of the logits with
///   the first masked (ties → lower index, as torch.argmax);
/// * positions: every first choice is counted per expert (in token order, or in descending
///   top-probability order when `batch_prioritized`) before any second choice
///   (`locations2 += number of first choices of the expert`); an assignment is kept iff its
///   position < capacity;
/// * weights g1/(g1+g2), g2/(g1+g2) with the denominator clamped at `f32::EPSILON`, computed
///   before dropping or from the kept assignments only (a dropped assignment counts 0).
///
/// Dropped assignments get expert −1 and weight 0.
pub fn gshard_top2(
    logits: &[f32],
    num_tokens: usize,
    num_experts: usize,
    p: GShardParams,
) -> RoutingPlan {
    let e_n = num_experts;
    let mut first = vec![0usize; num_tokens];
    let mut second = vec![0usize; num_tokens];
    let mut p1 = vec![0f32; num_tokens];
    let mut p2 = vec![0f32; num_tokens];
    let mut probs = vec![0f32; e_n];
    for t in 0..num_tokens {
        let row = &logits[t * e_n..(t + 1) * e_n];
        probs.copy_from_slice(row);
        softmax_in_place(&mut probs);
        let a = argmax(&probs, None);
        let b = argmax(row, Some(a));
        first[t] = a;
        second[t] = b;
        p1[t] = probs[a];
        p2[t] = probs[b];
    }
    // Order in which tokens claim expert slots.
    let mut order: Vec<usize> = (0..num_tokens).collect();
    if p.batch_prioritized {
        // importance = -max prob, argsort ascending → descending top probability; a stable
        // sort keeps token order among equal probabilities.
        order.sort_by(|&x, &y| p1[y].total_cmp(&p1[x]));
    }
    let capacity = p.capacity.map(|c| c.for_call(num_tokens, e_n));
    let mut keep1 = vec![true; num_tokens];
    let mut keep2 = vec![true; num_tokens];
    if let Some(cap) = capacity {
        let mut count1 = vec![0usize; e_n];
        for &t in &order {
            keep1[t] = count1[first[t]] < cap;
            count1[first[t]] += 1;
        }
        // Second choices start after all first choices of the expert (kept or not).
        let mut count2 = count1;
        for &t in &order {
            keep2[t] = count2[second[t]] < cap;
            count2[second[t]] += 1;
        }
    }
    let mut ids = Vec::with_capacity(num_tokens * 2);
    let mut weights = Vec::with_capacity(num_tokens * 2);
    for t in 0..num_tokens {
        let (g1, g2) = if p.normalize_before_dropping {
            normalise(p1[t], p2[t])
        } else {
            normalise(if keep1[t] { p1[t] } else { 0.0 }, if keep2[t] { p2[t] } else { 0.0 })
        };
        for (keep, e, g) in [(keep1[t], first[t], g1), (keep2[t], second[t], g2)] {
            ids.push(if keep { e as i32 } else { -1 });
            weights.push(if keep { g } else { 0.0 });
        }
    }
    RoutingPlan::from_assignments(num_tokens, 2, e_n, ids, weights)
}

/// `(a, b) / max(a + b, eps)` as NllbMoeTop2Router.normalize_router_probabilities.
fn normalise(a: f32, b: f32) -> (f32, f32) {
    let d = (a + b).max(f32::EPSILON);
    (a / d, b / d)
}

/// Index of the largest value (first on ties), skipping `except`.
fn argmax(row: &[f32], except: Option<usize>) -> usize {
    let mut best = usize::MAX;
    for (i, &v) in row.iter().enumerate() {
        if Some(i) == except {
            continue;
        }
        if best == usize::MAX || v > row[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ln(v: &[f32]) -> Vec<f32> {
        v.iter().map(|x| x.ln()).collect()
    }

    const NO_CAP: GShardParams =
        GShardParams { capacity: None, normalize_before_dropping: false, batch_prioritized: false };

    #[test]
    fn top2_weights_normalised() {
        let l = ln(&[0.1, 0.2, 0.3, 0.4]);
        let plan = gshard_top2(&l, 1, 4, NO_CAP);
        assert_eq!(plan.expert_ids, vec![3, 2]);
        assert!((plan.weights[0] - 4.0 / 7.0).abs() < 1e-6);
        assert!((plan.weights[1] - 3.0 / 7.0).abs() < 1e-6);
    }

    #[test]
    fn ties_pick_lower_index() {
        let plan = gshard_top2(&[1.0, 1.0, 1.0], 1, 3, NO_CAP);
        assert_eq!(plan.expert_ids, vec![0, 1]);
    }

    /// 3 tokens, all preferring expert 0 then expert 1, capacity 2.
    fn crowded() -> Vec<f32> {
        let mut l = Vec::new();
        for probs in [[0.5f32, 0.3, 0.2], [0.6, 0.3, 0.1], [0.7, 0.2, 0.1]] {
            l.extend(ln(&probs));
        }
        l
    }

    #[test]
    fn capacity_places_first_choices_before_second() {
        let p = GShardParams { capacity: Some(Capacity::Fixed(2)), ..NO_CAP };
        let plan = gshard_top2(&crowded(), 3, 3, p);
        // Expert 0: tokens 0, 1 fit, token 2's first choice dropped. Expert 1 had no first
        // choices: second choices of tokens 0 and 1 fit, token 2's dropped.
        assert_eq!(plan.expert_ids, vec![0, 1, 0, 1, -1, -1]);
        // Normalised after dropping: token 2 keeps nothing, weights 0.
        assert_eq!(&plan.weights[4..], &[0.0, 0.0]);
        assert!((plan.weights[0] - 0.5 / 0.8).abs() < 1e-6);
    }

    #[test]
    fn batch_prioritized_order() {
        let p =
            GShardParams { capacity: Some(Capacity::Fixed(2)), batch_prioritized: true, ..NO_CAP };
        let plan = gshard_top2(&crowded(), 3, 3, p);
        // Tokens ranked 2, 1, 0 by top probability: token 0 loses both.
        assert_eq!(plan.expert_ids, vec![-1, -1, 0, 1, 0, 1]);
    }

    #[test]
    fn normalise_before_vs_after_dropping() {
        // Capacity 1 over two tokens that both prefer expert 0: token 1's first choice is
        // dropped; the second choices (experts 1 and 2) each take their expert's only slot.
        let mut l = ln(&[0.6, 0.3, 0.1]);
        l.extend(ln(&[0.5, 0.1, 0.4]));
        let before = GShardParams {
            capacity: Some(Capacity::Fixed(1)),
            normalize_before_dropping: true,
            ..NO_CAP
        };
        let plan = gshard_top2(&l, 2, 3, before);
        // Token 1: first (0) dropped, second (2) kept with weight 0.4/0.9 (before dropping).
        assert_eq!(plan.expert_ids, vec![0, 1, -1, 2]);
        assert!((plan.weights[3] - 0.4 / 0.9).abs() < 1e-6);
        let after = GShardParams { normalize_before_dropping: false, ..before };
        let plan = gshard_top2(&l, 2, 3, after);
        // After dropping: its only kept assignment gets weight 1.
        assert!((plan.weights[3] - 1.0).abs() < 1e-6);
        assert!((plan.weights[0] - 0.6 / 0.9).abs() < 1e-6);
    }

    #[test]
    fn fraction_capacity_counts_the_call() {
        let p = GShardParams { capacity: Some(Capacity::Fraction(0.5)), ..NO_CAP };
        // ceil(0.5 × 3) = 2: same as Fixed(2).
        let plan = gshard_top2(&crowded(), 3, 3, p);
        assert_eq!(plan.expert_ids, vec![0, 1, 0, 1, -1, -1]);
    }
}
