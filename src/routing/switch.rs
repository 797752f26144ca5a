//! Switch Transformers top-1 routing with a per-sequence expert capacity, as transformers'
//! SwitchTransformersTop1Router.

use super::RoutingPlan;
use crate::routing::topk::{softmax_in_place, top_k_indices};

/// Routes `logits [num_tokens × num_experts]` of `num_tokens / seq_len` sequences: expert =
/// argmax of the f32 softmax (ties → lower index), weight = that top probability. With a
/// capacity, the position of a token in its expert's queue is counted within its own
/// sequence (the reference's `cumsum` over the sequence dimension) and a token whose
/// position is ≥ capacity is dropped (expert −1).
///
/// Returns the plan (weight 0 where dropped) and every token's top probability, which the
/// combine needs for dropped tokens (see [`crate::block::combine`]).
pub fn switch_top1(
    logits: &[f32],
    num_tokens: usize,
    seq_len: usize,
    num_experts: usize,
    capacity: Option<usize>,
) -> (RoutingPlan, Vec<f32>) {
    let seq_len = seq_len.max(1);
    let mut ids = Vec::with_capacity(num_tokens);
    let mut weights = Vec::with_capacity(num_tokens);
    let mut top = Vec::with_capacity(num_tokens);
    let mut probs = vec![0f32; num_experts];
    let mut count = vec![0usize; num_experts];
    for t in 0..num_tokens {
        if t % seq_len == 0 {
            count.fill(0);
        }
        probs.copy_from_slice(&logits[t * num_experts..(t + 1) * num_experts]);
        softmax_in_place(&mut probs);
        let e = top_k_indices(&probs, 1)[0];
        let keep = capacity.is_none_or(|c| count[e] < c);
        count[e] += 1;
        ids.push(if keep { e as i32 } else { -1 });
        weights.push(if keep { probs[e] } else { 0.0 });
        top.push(probs[e]);
    }
    (RoutingPlan::from_assignments(num_tokens, 1, num_experts, ids, weights), top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_per_sequence() {
        // Two sequences of 3 tokens, every token prefers expert 1; capacity 2 per sequence.
        let row = [0.0f32, 2.0, 0.0];
        let logits: Vec<f32> = row.iter().copied().cycle().take(18).collect();
        let (plan, top) = switch_top1(&logits, 6, 3, 3, Some(2));
        assert_eq!(plan.expert_ids, vec![1, 1, -1, 1, 1, -1]);
        assert_eq!(plan.weights[2], 0.0);
        let p = 2f32.exp() / (2.0 + 2f32.exp());
        assert!((top[2] - p).abs() < 1e-6 && (plan.weights[0] - p).abs() < 1e-6);
        // Counted over the whole call instead, tokens 2..6 would all be dropped.
        let (plan, _) = switch_top1(&logits, 6, 6, 3, Some(2));
        assert_eq!(plan.expert_ids, vec![1, 1, -1, -1, -1, -1]);
    }
}
