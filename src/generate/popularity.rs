//! A self-check of a model's routing: routes a seeded sample batch through every block's router
//! on its own (random unit-variance hidden states for learned routers, random token ids and
//! domains for RRE) and counts how often each expert is chosen. It shows whether a generated
//! model's routing is skewed enough for an expert cache to matter. The routers here are the
//! plain textbook forms (softmax, top-k, renormalised weights; no capacity), not the exact
//! per-family routers of `crate::routing`.

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::routing::RouterSpec;
use crate::spec::ModelSpec;

/// Expert choices of one block over a sample batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockPopularity {
    /// The block's checkpoint prefix.
    pub prefix: String,
    /// Times each expert was chosen.
    pub counts: Vec<u64>,
    /// Per token, its chosen experts with their combine weights, best first.
    pub choices: Vec<Vec<(usize, f32)>>,
}

impl BlockPopularity {
    /// Total assignments (tokens × k).
    pub fn assignments(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Share of all assignments taken by the `n` most chosen experts.
    pub fn top_share(&self, n: usize) -> f64 {
        let mut c = self.counts.clone();
        c.sort_unstable_by(|a, b| b.cmp(a));
        let total = self.assignments().max(1);
        c.iter().take(n).sum::<u64>() as f64 / total as f64
    }

    /// Experts never chosen in the sample.
    pub fn unused(&self) -> usize {
        self.counts.iter().filter(|&&c| c == 0).count()
    }
}

/// Routes `tokens` sample tokens (seeded by `seed`) through every block of `spec`.
pub fn sample_popularity(
    ckpt: &Checkpoint,
    spec: &ModelSpec,
    tokens: usize,
    seed: u64,
) -> Result<Vec<BlockPopularity>> {
    let h = spec.hidden_size;
    let mut out = Vec::with_capacity(spec.blocks.len());
    for block in &spec.blocks {
        let e = block.num_experts();
        let mut rng = SplitMix64::new(SplitMix64::derive(seed, block.index as u64));
        let mut counts = vec![0u64; e];
        let mut choices = Vec::with_capacity(tokens);
        if let RouterSpec::Rre { num_domains, experts_per_domain: k, vocab_size } = block.router {
            let name = block.rre_map.as_deref().unwrap_or_default();
            let map = ckpt.tensor(name)?.to_i64()?;
            for _ in 0..tokens {
                let t = rng.below(vocab_size as u64) as usize;
                let d = rng.below(num_domains as u64) as usize;
                let m = map.get(t).copied().unwrap_or(-1);
                if m < 0 || m as usize >= k {
                    return Err(Error::input(format!(
                        "{name}: entry {t} = {m} is outside 0..{k} experts per domain"
                    )));
                }
                let x = d * k + m as usize;
                counts[x] += 1;
                choices.push(vec![(x, 1.0)]);
            }
        } else {
            let Some(name) = block.router_weight.as_deref() else {
                return Err(Error::input(format!("block {} has no router weight", block.prefix)));
            };
            let w = ckpt.tensor(name)?.to_f32()?;
            let k = block.router.top_k().min(e);
            let mut x = vec![0f32; h];
            for _ in 0..tokens {
                x.iter_mut().for_each(|v| *v = rng.normal() as f32);
                let logits: Vec<f32> = w
                    .chunks_exact(h)
                    .map(|row| row.iter().zip(&x).map(|(a, b)| a * b).sum())
                    .collect();
                let top = softmax_top_k(&logits, k);
                for &(x, _) in &top {
                    counts[x] += 1;
                }
                choices.push(top);
            }
        }
        out.push(BlockPopularity { prefix: block.prefix.clone(), counts, choices });
    }
    Ok(out)
}

/// Softmax over `logits` (max-subtracted, f32 as transformers routers), the `k` largest
/// probabilities (ties to the lower index), renormalised to sum to 1.
pub fn softmax_top_k(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let probs: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    idx.truncate(k);
    let sum: f32 = idx.iter().map(|&i| probs[i]).sum();
    idx.into_iter().map(|i| (i, probs[i] / sum.max(f32::MIN_POSITIVE))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top2_renormalises() {
        let t = softmax_top_k(&[0.0, 2.0, 1.0, 2.0], 2);
        assert_eq!(t[0].0, 1);
        assert_eq!(t[1].0, 3);
        assert!((t[0].1 - 0.5).abs() < 1e-6 && (t[1].1 - 0.5).abs() < 1e-6);
    }
}
