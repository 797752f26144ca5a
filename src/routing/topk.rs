//! Learned top-k routers that pick k experts per token independently of other tokens:
//! softmax top-k (Mixtral, Qwen2/3-MoE) and DeepSeek-V3's grouped sigmoid.

use super::RoutingPlan;

/// In-place numerically stable softmax in f32 (max subtracted, as torch does).
pub fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

/// Indices of the `k` largest values of `row`, largest first; ties go to the lower index
/// (the order torch.topk returns on CPU for equal values).
pub fn top_k_indices(row: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    // A stable sort by descending value keeps equal values in ascending index order.
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    idx.truncate(k);
    idx
}

/// Softmax top-k over `logits [num_tokens × num_experts]`, as transformers'
/// MixtralSparseMoeBlock / Qwen2MoeSparseMoeBlock: f32 softmax over all experts, top-k, and when
/// `renormalize` the k weights divided by their sum.
pub fn softmax_top_k(
    logits: &[f32],
    num_tokens: usize,
    num_experts: usize,
    k: usize,
    renormalize: bool,
) -> RoutingPlan {
    let mut ids = Vec::with_capacity(num_tokens * k);
    let mut weights = Vec::with_capacity(num_tokens * k);
    let mut probs = vec![0.0f32; num_experts];
    for t in 0..num_tokens {
        probs.copy_from_slice(&logits[t * num_experts..(t + 1) * num_experts]);
        softmax_in_place(&mut probs);
        let top = top_k_indices(&probs, k);
        let sum: f32 = top.iter().map(|&e| probs[e]).sum();
        for &e in &top {
            ids.push(e as i32);
            weights.push(if renormalize { probs[e] / sum } else { probs[e] });
        }
    }
    RoutingPlan::from_assignments(num_tokens, k, num_experts, ids, weights)
}

/// Parameters of DeepSeek-V3's grouped sigmoid router.
#[derive(Debug, Clone, Copy)]
pub struct GroupedSigmoidParams {
    /// Experts per token.
    pub top_k: usize,
    /// Number of expert groups (must divide the expert count).
    pub n_group: usize,
    /// Groups kept per token.
    pub topk_group: usize,
    /// Divide the k weights by their sum (+1e-20).
    pub renormalize: bool,
    /// Final weight multiplier.
    pub routed_scaling_factor: f32,
}

/// DeepSeek-V3 routing, as transformers' DeepseekV3MoE.route_tokens_to_experts:
/// `s = sigmoid(logits)`; `c = s + bias` (choice only); group score = sum of the top-2 `c` of
/// each group; keep the `topk_group` best groups; the other experts' `c` set to 0.0
/// (`masked_fill(…, 0.0)`, so a kept expert with a negative biased score can lose to a masked
/// one, exactly as the reference); top-k of `c`; weights = unbiased `s` of the chosen experts,
/// divided by `sum + 1e-20` when renormalising, times `routed_scaling_factor`.
pub fn grouped_sigmoid(
    logits: &[f32],
    bias: Option<&[f32]>,
    num_tokens: usize,
    num_experts: usize,
    p: GroupedSigmoidParams,
) -> RoutingPlan {
    let k = p.top_k;
    let n_group = p.n_group.max(1);
    let per_group = num_experts / n_group;
    let mut ids = Vec::with_capacity(num_tokens * k);
    let mut weights = Vec::with_capacity(num_tokens * k);
    let mut scores = vec![0.0f32; num_experts];
    let mut choice = vec![0.0f32; num_experts];
    let mut group_scores = vec![0.0f32; n_group];
    for t in 0..num_tokens {
        let row = &logits[t * num_experts..(t + 1) * num_experts];
        for e in 0..num_experts {
            scores[e] = 1.0 / (1.0 + (-row[e]).exp());
            choice[e] = scores[e] + bias.map_or(0.0, |b| b[e]);
        }
        for (g, gs) in group_scores.iter_mut().enumerate() {
            let members = &choice[g * per_group..(g + 1) * per_group];
            *gs = top_k_indices(members, 2.min(per_group)).iter().map(|&i| members[i]).sum();
        }
        let kept = top_k_indices(&group_scores, p.topk_group);
        for g in 0..n_group {
            if !kept.contains(&g) {
                choice[g * per_group..(g + 1) * per_group].fill(0.0);
            }
        }
        let top = top_k_indices(&choice, k);
        let sum: f32 = top.iter().map(|&e| scores[e]).sum::<f32>() + 1e-20;
        for &e in &top {
            let w = if p.renormalize { scores[e] / sum } else { scores[e] };
            ids.push(e as i32);
            weights.push(w * p.routed_scaling_factor);
        }
    }
    RoutingPlan::from_assignments(num_tokens, k, num_experts, ids, weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_go_to_the_lower_index() {
        assert_eq!(top_k_indices(&[1.0, 3.0, 3.0, 0.5, 3.0], 2), vec![1, 2]);
    }

    #[test]
    fn softmax_top2_renormalised() {
        // logits ln(1), ln(2), ln(3), ln(4): probs 0.1, 0.2, 0.3, 0.4.
        let l: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|v| v.ln()).collect();
        let p = softmax_top_k(&l, 1, 4, 2, true);
        assert_eq!(p.expert_ids, vec![3, 2]);
        assert!((p.weights[0] - 4.0 / 7.0).abs() < 1e-6 && (p.weights[1] - 3.0 / 7.0).abs() < 1e-6);
        let q = softmax_top_k(&l, 1, 4, 2, false);
        assert!((q.weights[0] - 0.4).abs() < 1e-6 && (q.weights[1] - 0.3).abs() < 1e-6);
    }

    #[test]
    fn grouped_sigmoid_keeps_best_groups_and_uses_unbiased_weights() {
        // 4 experts in 2 groups; the bias pushes group 1 (experts 2, 3) ahead.
        let logits = [2.0f32, 1.9, 0.0, -0.1];
        let bias = [0.0f32, 0.0, 5.0, 5.0];
        let p = GroupedSigmoidParams {
            top_k: 2,
            n_group: 2,
            topk_group: 1,
            renormalize: false,
            routed_scaling_factor: 2.0,
        };
        let plan = grouped_sigmoid(&logits, Some(&bias), 1, 4, p);
        assert_eq!(plan.expert_ids, vec![2, 3]);
        let s = |x: f32| 1.0 / (1.0 + (-x).exp());
        assert!((plan.weights[0] - 2.0 * s(0.0)).abs() < 1e-6);
        assert!((plan.weights[1] - 2.0 * s(-0.1)).abs() < 1e-6);
        let plan = grouped_sigmoid(
            &logits,
            Some(&bias),
            1,
            4,
            GroupedSigmoidParams { renormalize: true, ..p },
        );
        assert!((plan.weights[0] + plan.weights[1] - 2.0).abs() < 1e-6);
    }

    #[test]
    fn grouped_sigmoid_masked_experts_score_zero() {
        // Kept group's biased scores are negative, so masked experts (0.0) win, as in the
        // reference's masked_fill(…, 0.0).
        let logits = [0.0f32, 0.0, 0.0, 0.0];
        let bias = [-0.4f32, -0.45, -2.0, -2.0];
        let p = GroupedSigmoidParams {
            top_k: 2,
            n_group: 2,
            topk_group: 1,
            renormalize: false,
            routed_scaling_factor: 1.0,
        };
        let plan = grouped_sigmoid(&logits, Some(&bias), 1, 4, p);
        // Group 0 kept with c = 0.1, 0.05; group 1 masked to 0.0 → top-2 = experts 0, 1.
        assert_eq!(plan.expert_ids, vec![0, 1]);
        let bias = [-0.6f32, -0.7, -2.0, -2.0];
        let plan = grouped_sigmoid(&logits, Some(&bias), 1, 4, p);
        // Group 0 kept with c = -0.1, -0.2 < 0.0 → masked experts 2 and 3 win.
        assert_eq!(plan.expert_ids, vec![2, 3]);
    }
}
