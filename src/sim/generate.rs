//! Synthetic routing traces: Zipf expert popularity, temporal locality (a token's experts repeat
//! from step to step), per-layer correlation (a token's expert in one block predicts its expert
//! in the next), and PanGu-Σ RRE (domains and token-id streams). Deterministic from the seed.
//!
//! Each of the `batch` tokens of a step is the next token of its own sequence, so locality is
//! per sequence: with probability `locality` a token keeps its sequence's previous choice at
//! that block; otherwise, with probability `layer_corr`, it takes the image of its own choice in
//! the previous block (a fixed rank-preserving map, so popularity is unchanged); otherwise it
//! draws from the block's Zipf distribution (popularity ranks are shuffled per block).

use super::shapes::ModelShape;
use super::trace::{BlockRecord, TRACE_VERSION, TraceHeader};
use crate::rng::SplitMix64;
use crate::routing::rre::build_map;
use crate::{Error, Result};

/// PanGu-Σ RRE routing for generated traces: expert = domain · K + map_b[token id], K = experts
/// per block / domains, map_b as the crate's RRE map, top-1.
#[derive(Debug, Clone, PartialEq)]
pub struct RreGen {
    /// Number of domains (each sequence belongs to one, drawn uniformly).
    pub domains: usize,
    /// Vocabulary size of the token-id stream.
    pub vocab: usize,
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenConfig {
    /// Model shape.
    pub shape: ModelShape,
    /// Decode steps.
    pub steps: u64,
    /// Tokens per step (one per sequence).
    pub batch: usize,
    /// Seed.
    pub seed: u64,
    /// Zipf exponent of expert popularity (of token ids with RRE); 0 = uniform.
    pub zipf: f64,
    /// Probability that a token repeats its sequence's previous choice (expert, or token id
    /// with RRE).
    pub locality: f64,
    /// Probability that a token's expert follows from its expert in the previous block
    /// (ignored with RRE, whose routing is fixed by the token id).
    pub layer_corr: f64,
    /// RRE routing instead of learned-router-like draws.
    pub rre: Option<RreGen>,
}

impl GenConfig {
    /// The header of the trace this config generates.
    pub fn header(&self) -> TraceHeader {
        TraceHeader {
            version: TRACE_VERSION,
            model: Some(self.shape.name.clone()),
            blocks: self.shape.blocks(),
            experts_per_block: self.shape.experts_per_block.clone(),
            expert_bytes: self.shape.expert_bytes.clone(),
            hidden_size: self.shape.hidden_size,
            top_k: Some(self.top_k()),
            tokens_per_step: Some(self.batch),
        }
    }

    fn top_k(&self) -> usize {
        if self.rre.is_some() { 1 } else { self.shape.top_k }
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidOption(m));
        for (name, p) in [("locality", self.locality), ("layer-corr", self.layer_corr)] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("--{name} {p} must lie in [0, 1]"));
            }
        }
        if !self.zipf.is_finite() || self.zipf < 0.0 {
            return bad(format!("--zipf {} must be ≥ 0", self.zipf));
        }
        if self.batch == 0 {
            return bad("--batch must be ≥ 1".into());
        }
        if let Some(r) = &self.rre {
            if r.domains == 0 || r.vocab == 0 {
                return bad("--rre-domains and --vocab must be ≥ 1".into());
            }
            if let Some(&n) = self.shape.experts_per_block.iter().find(|&&n| n % r.domains != 0) {
                return bad(format!(
                    "RRE: {n} experts per block do not split into {} domains",
                    r.domains
                ));
            }
        }
        Ok(())
    }
}

/// A Zipf distribution over `0..n` (rank r has weight 1/(r+1)^s), sampled by binary search.
#[derive(Debug, Clone)]
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (0..n)
            .map(|r| {
                acc += 1.0 / ((r + 1) as f64).powf(s);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }

    #[inline]
    fn sample(&self, rng: &mut SplitMix64) -> usize {
        let u = rng.next_f64();
        self.cdf.partition_point(|&c| c <= u).min(self.cdf.len() - 1)
    }
}

fn shuffled(n: usize, rng: &mut SplitMix64) -> Vec<u32> {
    let mut p: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        p.swap(i, rng.below(i as u64 + 1) as usize);
    }
    p
}

/// Generates the records of a trace one block execution at a time.
pub struct Generator {
    cfg: GenConfig,
    rng: SplitMix64,
    k: usize,
    /// Per block: expert of each popularity rank, and rank of each expert.
    by_rank: Vec<Vec<u32>>,
    rank_of: Vec<Vec<u32>>,
    zipf: Vec<Zipf>,
    /// Per token, per block, its k choices of the previous step (`u32::MAX` before step 0).
    prev: Vec<u32>,
    /// RRE: per block map, per token domain and current token id, token-id Zipf.
    rre_maps: Vec<Vec<i32>>,
    domain: Vec<u32>,
    token_id: Vec<u32>,
    token_zipf: Option<Zipf>,
    token_perm: Vec<u32>,
    counts: Vec<u32>,
    step: u64,
    block: usize,
    header: TraceHeader,
}

impl Generator {
    /// A generator for `cfg` (validated).
    pub fn new(cfg: GenConfig) -> Result<Self> {
        cfg.validate()?;
        let k = cfg.top_k();
        let blocks = cfg.shape.blocks();
        let mut setup = SplitMix64::new(SplitMix64::derive(cfg.seed, 0x5EED));
        let by_rank: Vec<Vec<u32>> =
            cfg.shape.experts_per_block.iter().map(|&n| shuffled(n, &mut setup)).collect();
        let rank_of = by_rank
            .iter()
            .map(|p| {
                let mut r = vec![0u32; p.len()];
                for (rank, &e) in p.iter().enumerate() {
                    r[e as usize] = rank as u32;
                }
                r
            })
            .collect();
        let zipf = cfg.shape.experts_per_block.iter().map(|&n| Zipf::new(n, cfg.zipf)).collect();
        let (mut rre_maps, mut domain, mut token_id, mut token_zipf, mut token_perm) =
            (Vec::new(), Vec::new(), Vec::new(), None, Vec::new());
        if let Some(r) = &cfg.rre {
            rre_maps = cfg
                .shape
                .experts_per_block
                .iter()
                .enumerate()
                .map(|(b, &n)| {
                    build_map(r.vocab, n / r.domains, SplitMix64::derive(cfg.seed, b as u64))
                })
                .collect();
            domain = (0..cfg.batch).map(|_| setup.below(r.domains as u64) as u32).collect();
            token_id = vec![u32::MAX; cfg.batch];
            token_zipf = Some(Zipf::new(r.vocab, cfg.zipf));
            token_perm = shuffled(r.vocab, &mut setup);
        }
        let widest = cfg.shape.experts_per_block.iter().copied().max().unwrap_or(0);
        Ok(Generator {
            rng: SplitMix64::new(SplitMix64::derive(cfg.seed, 0x7ACE)),
            prev: vec![u32::MAX; cfg.batch * blocks * k],
            k,
            by_rank,
            rank_of,
            zipf,
            rre_maps,
            domain,
            token_id,
            token_zipf,
            token_perm,
            counts: vec![0; widest],
            step: 0,
            block: 0,
            header: cfg.header(),
            cfg,
        })
    }

    /// The trace header.
    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    /// Writes the next record into `rec`; `false` after the last step.
    pub fn next_into(&mut self, rec: &mut BlockRecord) -> bool {
        if self.step >= self.cfg.steps {
            return false;
        }
        let b = self.block;
        if b == 0 && self.cfg.rre.is_some() {
            self.next_token_ids();
        }
        let n = self.cfg.shape.experts_per_block[b];
        let blocks = self.cfg.shape.blocks();
        for j in 0..self.cfg.batch {
            for slot in 0..self.k {
                let e = match &self.cfg.rre {
                    Some(r) => {
                        let kk = n / r.domains;
                        let t = self.token_id[j] as usize;
                        self.domain[j] * kk as u32 + self.rre_maps[b][t] as u32
                    }
                    None => self.draw(j, b, slot),
                };
                self.prev[(j * blocks + b) * self.k + slot] = e;
                self.counts[e as usize] += 1;
            }
        }
        rec.step = self.step;
        rec.block = b as u32;
        rec.experts.clear();
        for (e, c) in self.counts[..n].iter_mut().enumerate() {
            if *c > 0 {
                rec.experts.push((e as u32, *c));
                *c = 0;
            }
        }
        self.block += 1;
        if self.block == blocks {
            self.block = 0;
            self.step += 1;
        }
        true
    }

    /// Expert for token `j`, block `b`, choice `slot`, distinct from the token's earlier slots.
    fn draw(&mut self, j: usize, b: usize, slot: usize) -> u32 {
        let blocks = self.cfg.shape.blocks();
        let base = (j * blocks + b) * self.k;
        let n = self.cfg.shape.experts_per_block[b];
        let prev_step = self.prev[base + slot];
        let mut e = if prev_step != u32::MAX && self.rng.next_f64() < self.cfg.locality {
            prev_step
        } else if b > 0 && self.rng.next_f64() < self.cfg.layer_corr {
            // This step's choice of the same slot in the previous block, mapped by rank.
            let above = self.prev[(j * blocks + b - 1) * self.k + slot];
            let rank = self.rank_of[b - 1][above as usize] as usize;
            let m = self.cfg.shape.experts_per_block[b - 1];
            self.by_rank[b][rank * n / m]
        } else {
            self.by_rank[b][self.zipf[b].sample(&mut self.rng)]
        };
        // Earlier slots of this token at this block were already overwritten with this step's.
        let taken = |e: u32, prev: &[u32]| prev[base..base + slot].contains(&e);
        let mut tries = 0;
        while taken(e, &self.prev) {
            e = if tries < 64 {
                self.by_rank[b][self.zipf[b].sample(&mut self.rng)]
            } else {
                (e + 1) % n as u32
            };
            tries += 1;
        }
        e
    }

    /// RRE: each sequence's next token id (repeat with probability `locality`).
    fn next_token_ids(&mut self) {
        let Some(z) = &self.token_zipf else { return };
        for t in self.token_id.iter_mut() {
            if *t == u32::MAX || self.rng.next_f64() >= self.cfg.locality {
                *t = self.token_perm[z.sample(&mut self.rng)];
            }
        }
    }
}

impl Iterator for Generator {
    type Item = BlockRecord;
    fn next(&mut self) -> Option<BlockRecord> {
        let mut rec = BlockRecord::default();
        self.next_into(&mut rec).then_some(rec)
    }
}
