//! Timing of one block forward (`bench block`, `benches/block.rs`) and the host memcpy
//! bandwidth it is held against.

use std::time::Instant;

use serde::Serialize;

use super::{BlockInput, forward};
use crate::backend::Backend;
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::routing::RoutingPlan;
use crate::spec::{BlockSpec, ModelSpec};

/// Result of timing one block forward.
#[derive(Debug, Clone, Serialize)]
pub struct BlockBench {
    /// Tokens per call.
    pub tokens: usize,
    /// Median wall time of one forward, milliseconds.
    pub median_ms: f64,
    /// Useful floating-point work (router + experts + shared expert) per second, 10⁹.
    pub gflops: f64,
    /// Bytes of the experts actually used, per second, 10⁹.
    pub weight_gbps: f64,
    /// Bytes of the experts used in one call.
    pub weight_bytes: u64,
    /// Timed iterations.
    pub iters: usize,
}

/// A deterministic synthetic input: standard-normal hidden states, token ids uniform over the
/// vocabulary and the model's first domain for RRE blocks.
pub struct SyntheticInput {
    /// `[tokens × hidden]`.
    pub hidden: Vec<f32>,
    /// Token ids (RRE).
    pub token_ids: Vec<i64>,
    /// Domains (RRE).
    pub domains: Vec<i64>,
}

impl SyntheticInput {
    /// Draws `tokens` tokens for `block` from `seed`.
    pub fn new(spec: &ModelSpec, tokens: usize, seed: u64) -> SyntheticInput {
        let mut rng = SplitMix64::new(seed);
        let hidden = (0..tokens * spec.hidden_size).map(|_| rng.normal() as f32).collect();
        let vocab = spec.vocab_size.unwrap_or(1).max(1) as u64;
        let token_ids = (0..tokens).map(|_| rng.below(vocab) as i64).collect();
        let domain = spec.domain_ids.as_ref().and_then(|d| d.first().copied()).unwrap_or(0);
        SyntheticInput { hidden, token_ids, domains: vec![domain as i64; tokens] }
    }

    /// The block input (one sequence).
    pub fn input(&self, tokens: usize) -> BlockInput<'_> {
        BlockInput {
            hidden: &self.hidden,
            num_tokens: tokens,
            seq_len: tokens.max(1),
            token_ids: Some(&self.token_ids),
            domains: Some(&self.domains),
        }
    }
}

/// Floating-point operations of one forward with `plan` (2 per multiply-add).
pub fn block_flops(spec: &ModelSpec, block: &BlockSpec, plan: &RoutingPlan) -> f64 {
    let (h, f) = (spec.hidden_size as f64, block.ffn_dim as f64);
    let mats = if block.ffn.is_glu() { 3.0 } else { 2.0 };
    let routed: usize = plan.per_expert.iter().map(|b| b.tokens.len()).sum();
    let n = plan.num_tokens as f64;
    let router = if block.router.is_rre() { 0.0 } else { 2.0 * n * h * block.num_experts() as f64 };
    let shared = block.shared.as_ref().map_or(0.0, |s| 2.0 * n * 3.0 * h * s.ffn_dim as f64);
    router + 2.0 * routed as f64 * mats * h * f + shared
}

/// Bytes of the experts `plan` uses (plus the shared expert).
pub fn block_weight_bytes(block: &BlockSpec, plan: &RoutingPlan) -> u64 {
    plan.per_expert.len() as u64 * block.expert_bytes + block.shared_expert_bytes
}

/// Times `iters` forwards of `block` at `tokens` tokens after `warmup` untimed ones; reports
/// the median.
pub fn bench_block(
    ckpt: &Checkpoint,
    spec: &ModelSpec,
    block: &BlockSpec,
    backend: &dyn Backend,
    tokens: usize,
    warmup: usize,
    iters: usize,
) -> Result<BlockBench> {
    if tokens == 0 || iters == 0 {
        return Err(Error::InvalidOption("--tokens and --iters must be positive".into()));
    }
    let data = SyntheticInput::new(spec, tokens, 0x5EED);
    let input = data.input(tokens);
    let mut plan = None;
    for _ in 0..warmup {
        plan = Some(forward(ckpt, spec, block, backend, &input)?.plan);
    }
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t0 = Instant::now();
        let out = forward(ckpt, spec, block, backend, &input)?;
        times.push(t0.elapsed().as_secs_f64());
        plan = Some(out.plan);
    }
    let plan = plan.unwrap_or_default();
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let bytes = block_weight_bytes(block, &plan);
    Ok(BlockBench {
        tokens,
        median_ms: median * 1e3,
        gflops: block_flops(spec, block, &plan) / median / 1e9,
        weight_gbps: bytes as f64 / median / 1e9,
        weight_bytes: bytes,
        iters,
    })
}

/// This machine's single-threaded memcpy bandwidth in GB/s (10⁹ bytes copied per second),
/// best of `reps` copies of a `bytes` buffer (pages touched first).
pub fn memcpy_gbps(bytes: usize, reps: usize) -> f64 {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        dst.copy_from_slice(&src);
        best = best.min(t0.elapsed().as_secs_f64());
        std::hint::black_box(&dst);
    }
    bytes as f64 / best / 1e9
}
