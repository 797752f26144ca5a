//! What a generated model holds: the list of tensors (name, dtype, shape) and how each one's
//! values are drawn. Values are produced in fixed-size chunks, each from its own SplitMix64
//! stream derived from (seed, tensor name, chunk index), so any chunk can be made on any thread
//! in any order with identical results.

use crate::dtype::{DType, encode_from_f32};
use crate::rng::SplitMix64;
use crate::routing::rre::build_map;
use crate::spec::Family;

use super::{GenOptions, tag};

/// Elements per value chunk (the unit of determinism and of parallel work).
pub const CHUNK_ELEMS: usize = 1 << 16;

/// Largest scale of the down projection relative to `1/sqrt(ffn)`. With up/gate drawn at
/// `1/sqrt(hidden)`, a unit-RMS input gives O(1) pre-activations; the down projection is then
/// scaled by `min(DOWN_SCALE, 1/sqrt(2·layers))`, GPT-2's residual scaling (Radford et al.
/// 2019: residual-path weights × 1/√N), so that `h ← h + block(h)` stays O(1) through every
/// block of the model even though a GLU block grows faster than linearly with its input.
const DOWN_SCALE: f64 = 0.5;

/// Standard deviation of expert biases (small: they shift, not dominate, the activations).
const BIAS_STD: f64 = 0.02;

/// How a tensor's values are drawn.
#[derive(Debug, Clone, PartialEq)]
pub enum Fill {
    /// Uniform with mean 0 and this standard deviation (uniform rather than normal: it needs
    /// one 32-bit draw per value, which keeps multi-GB presets quick to write, and only the
    /// variance matters for keeping activations finite).
    Uniform {
        /// Standard deviation.
        std: f64,
    },
    /// A router `[experts, hidden]`: uniform rows of standard deviation `std`, row `e` scaled
    /// by `row_scale[e]` (the skew that makes some experts popular).
    Router {
        /// Standard deviation before scaling.
        std: f64,
        /// Per-expert scale.
        row_scale: Vec<f64>,
    },
    /// An RRE map `[vocab]` i32, `build_map(vocab, k, seed)`.
    RreMap {
        /// Experts per domain.
        k: usize,
        /// The map's Fisher–Yates seed.
        seed: u64,
    },
}

/// One tensor of a generated model.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorPlan {
    /// Tensor name.
    pub name: String,
    /// Stored dtype.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
    /// How its values are drawn.
    pub fill: Fill,
    /// Seed of its value streams, derived from the model seed and the name.
    pub seed: u64,
}

impl TensorPlan {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes on disk.
    pub fn byte_len(&self) -> u64 {
        self.numel() as u64 * self.dtype.size() as u64
    }

    /// Number of value chunks.
    pub fn chunks(&self) -> usize {
        self.numel().div_ceil(CHUNK_ELEMS)
    }

    /// The encoded bytes of chunk `c` (elements `c·CHUNK_ELEMS ..`).
    pub fn chunk_bytes(&self, c: usize) -> Vec<u8> {
        let start = c * CHUNK_ELEMS;
        let n = CHUNK_ELEMS.min(self.numel() - start);
        match &self.fill {
            Fill::RreMap { k, seed } => {
                // Maps are small (vocab entries); build the whole map and cut the chunk.
                let map = build_map(self.numel(), *k, *seed);
                map[start..start + n].iter().flat_map(|v| v.to_le_bytes()).collect()
            }
            Fill::Uniform { std } => {
                encode_from_f32(&self.dtype, &self.uniform(c, n, *std, |_| 1.0))
            }
            Fill::Router { std, row_scale } => {
                let cols = self.shape.last().copied().unwrap_or(1).max(1);
                let vals = self.uniform(c, n, *std, |i| row_scale[(start + i) / cols]);
                encode_from_f32(&self.dtype, &vals)
            }
        }
    }

    /// `n` uniform values of standard deviation `std × scale(i)` from chunk `c`'s stream.
    fn uniform(&self, c: usize, n: usize, std: f64, scale: impl Fn(usize) -> f64) -> Vec<f32> {
        // Uniform on [-a, a] has variance a²/3.
        let a = std * 3f64.sqrt();
        let mut rng = SplitMix64::new(SplitMix64::derive(self.seed, c as u64));
        let mut out = Vec::with_capacity(n);
        let mut i = 0;
        while i < n {
            let bits = rng.next_u64();
            for half in [bits >> 40, (bits >> 8) & 0xFF_FFFF] {
                if i < n {
                    // 24 random bits → uniform in [0, 1), exactly representable in f32/f64.
                    let u = half as f64 * (1.0 / (1u64 << 24) as f64);
                    out.push(((2.0 * u - 1.0) * a * scale(i)) as f32);
                    i += 1;
                }
            }
        }
        out
    }
}

/// The tensors of the model `opts` describes, in file order: every RRE map first (i32, so that
/// they stay 4-byte aligned ahead of any 2-byte tensor), then block by block the router and
/// each expert's tensors together (an expert's bytes are contiguous, so a transfer can move one
/// expert with few, adjacent copies).
pub fn plan_tensors(opts: &GenOptions) -> Vec<TensorPlan> {
    let mut plan = Vec::new();
    let named = |name: String, dtype: DType, shape: Vec<usize>, fill: Fill| TensorPlan {
        seed: SplitMix64::derive(opts.seed, tag(&name)),
        name,
        dtype,
        shape,
        fill,
    };
    let (h, f) = (opts.hidden, opts.ffn);
    let e_total = opts.experts_per_block();
    let rre = opts.family == Family::PanguSigma;
    if rre {
        let map_seed = opts.resolved_map_seed();
        for l in 0..opts.layers {
            let name = format!("{}.rre_map", crate::spec::native_block_prefix(l));
            let fill =
                Fill::RreMap { k: opts.experts, seed: SplitMix64::derive(map_seed, l as u64) };
            plan.push(named(name, DType::I32, vec![opts.vocab], fill));
        }
    }
    let w = |fan_in: usize| 1.0 / (fan_in as f64).sqrt();
    let down_scale = DOWN_SCALE.min(1.0 / (2.0 * opts.layers as f64).sqrt());
    for l in 0..opts.layers {
        let p = crate::spec::native_block_prefix(l);
        if !rre {
            let fill = Fill::Router { std: w(h), row_scale: router_row_scale(opts, l) };
            plan.push(named(
                format!("{p}.router.weight"),
                opts.dtype.clone(),
                vec![e_total, h],
                fill,
            ));
        }
        for e in 0..e_total {
            let t = crate::spec::native_expert_tensors(&p, e, opts.expert_ffn, opts.expert_bias);
            if let Some(g) = t.gate {
                plan.push(named(g, opts.dtype.clone(), vec![f, h], Fill::Uniform { std: w(h) }));
            }
            plan.push(named(t.up, opts.dtype.clone(), vec![f, h], Fill::Uniform { std: w(h) }));
            let down = Fill::Uniform { std: down_scale * w(f) };
            plan.push(named(t.down, opts.dtype.clone(), vec![h, f], down));
            let bias = Fill::Uniform { std: BIAS_STD };
            if let Some(b) = t.up_bias {
                plan.push(named(b, opts.dtype.clone(), vec![f], bias.clone()));
            }
            if let Some(b) = t.down_bias {
                plan.push(named(b, opts.dtype.clone(), vec![h], bias));
            }
        }
    }
    plan
}

/// Per-expert router row scales of block `layer`: a seeded ranking of the experts (so the
/// popular ones differ from block to block, as in trained models) and scale
/// `exp(-skew · rank / (E − 1))`. A row with a larger norm gives logits of larger spread, so its
/// expert lands in the top-2 more often.
fn router_row_scale(opts: &GenOptions, layer: usize) -> Vec<f64> {
    let e = opts.experts_per_block();
    let mut rank: Vec<usize> = (0..e).collect();
    let mut rng = SplitMix64::new(SplitMix64::derive(opts.seed, tag("popularity") ^ layer as u64));
    for i in (1..e).rev() {
        rank.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let denom = (e.max(2) - 1) as f64;
    rank.iter().map(|&r| (-opts.router_skew * r as f64 / denom).exp()).collect()
}
