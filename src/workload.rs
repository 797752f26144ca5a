//! The synthetic serving workload behind `run`, `bench decode` and the demo: decode steps of a
//! batch of sequences (or prefill chunks) through every MoE block, deterministic from a seed.
//!
//! Each sequence draws a token id per position; with probability `locality` it repeats its
//! previous token (temporal locality). A token's initial hidden state is a fixed function of
//! its id (seeded N(0,1)), so repeated tokens route alike through learned routers too, and
//! RRE models route by the ids directly. Each sequence has a fixed domain (RRE).

use std::time::Instant;

use crate::cache::ExpertKey;
use crate::engine::{Engine, EngineStats};
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::routing::RoutingPlan;

/// Vocabulary assumed when the model's config gives none.
const DEFAULT_VOCAB: usize = 32_000;

/// What `run` executes.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Forward steps.
    pub steps: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence per step: 1 for decode, T for a prefill of T tokens.
    pub tokens_per_step: usize,
    /// Seed of token ids, domains and hidden states.
    pub seed: u64,
    /// Probability that a sequence repeats its previous token.
    pub locality: f64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload { steps: 16, batch: 4, tokens_per_step: 1, seed: 0, locality: 0.5 }
    }
}

/// Receives every block execution of a run, in order (e.g. a trace writer).
pub trait RunObserver {
    /// Block `block` of step `step` ran with `plan`.
    fn on_block(&mut self, step: usize, block: usize, plan: &RoutingPlan) -> Result<()>;
}

/// The outcome of [`run`].
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// Stats of the run (the engine's counters over this run).
    pub stats: EngineStats,
    /// Final hidden states of the last step, `[batch, tokens_per_step, hidden]`.
    pub hidden: Vec<f32>,
    /// Shape of `hidden`.
    pub shape: [usize; 3],
    /// Every expert use in order (what Belady's future and the simulator replay).
    pub accesses: Vec<ExpertKey>,
}

/// Token ids and domains of each step, generated up front so that every engine configuration
/// sees exactly the same workload.
struct TokenStream {
    rng: SplitMix64,
    vocab: usize,
    locality: f64,
    last: Vec<i64>,
    domains: Vec<i64>,
}

impl TokenStream {
    fn new(w: &Workload, vocab: usize, domain_ids: &[usize]) -> TokenStream {
        let mut rng = SplitMix64::new(SplitMix64::derive(w.seed, 1));
        let domains = (0..w.batch)
            .map(|_| domain_ids[rng.below(domain_ids.len() as u64) as usize] as i64)
            .collect();
        TokenStream { rng, vocab, locality: w.locality, last: vec![-1; w.batch], domains }
    }

    /// Token ids for one step, `[batch, tokens]`.
    fn next(&mut self, tokens: usize) -> Vec<i64> {
        let mut ids = Vec::with_capacity(self.last.len() * tokens);
        for s in 0..self.last.len() {
            for _ in 0..tokens {
                let repeat = self.last[s] >= 0 && self.rng.next_f64() < self.locality;
                if !repeat {
                    self.last[s] = self.rng.below(self.vocab as u64) as i64;
                }
                ids.push(self.last[s]);
            }
        }
        ids
    }
}

/// The initial hidden state of token `id`: N(0,1) values seeded by (seed, id).
fn embed(seed: u64, id: i64, h: usize, out: &mut [f32]) {
    let mut r = SplitMix64::new(SplitMix64::derive(seed ^ 0xE3B0_C442, id as u64));
    for v in out.iter_mut().take(h) {
        *v = r.normal() as f32;
    }
}

/// Runs `w` on `engine`, reporting every block execution to `observer`.
pub fn run(
    engine: &Engine,
    w: &Workload,
    mut observer: Option<&mut dyn RunObserver>,
) -> Result<RunOutput> {
    if w.batch == 0 || w.tokens_per_step == 0 {
        return Err(Error::InvalidOption("batch and tokens per step must be positive".into()));
    }
    if !(0.0..=1.0).contains(&w.locality) {
        return Err(Error::InvalidOption(format!("locality {} must be in [0, 1]", w.locality)));
    }
    let spec = engine.spec();
    let h = spec.hidden_size;
    let vocab = spec.vocab_size.unwrap_or(DEFAULT_VOCAB).max(1);
    let domain_ids: Vec<usize> = match &spec.domain_ids {
        Some(ids) => ids.clone(),
        None => {
            let d = spec
                .blocks
                .iter()
                .find_map(|b| match b.router {
                    crate::routing::RouterSpec::Rre { num_domains, .. } => Some(num_domains),
                    _ => None,
                })
                .unwrap_or(1);
            (0..d).collect()
        }
    };
    let mut stream = TokenStream::new(w, vocab, &domain_ids);
    let n = w.batch * w.tokens_per_step;
    let domains: Vec<i64> = (0..n).map(|t| stream.domains[t / w.tokens_per_step]).collect();
    let is_rre = spec.blocks.iter().any(|b| b.router.is_rre());
    engine.reset_stats();
    let start = Instant::now();
    let mut hidden = vec![0f32; n * h];
    let mut accesses = Vec::new();
    for step in 0..w.steps {
        let ids = stream.next(w.tokens_per_step);
        for (t, id) in ids.iter().enumerate() {
            embed(w.seed, *id, h, &mut hidden[t * h..(t + 1) * h]);
        }
        let plans = engine.step(
            &mut hidden,
            n,
            w.tokens_per_step,
            is_rre.then_some(ids.as_slice()),
            is_rre.then_some(domains.as_slice()),
        )?;
        for (b, plan) in plans.iter().enumerate() {
            accesses.extend(
                plan.per_expert
                    .iter()
                    .map(|x| ExpertKey { block: b as u32, expert: x.expert as u32 }),
            );
            if let Some(o) = observer.as_deref_mut() {
                o.on_block(step, b, plan)?;
            }
        }
        tracing::debug!(step, "step done");
    }
    let mut stats = engine.stats();
    stats.wall_seconds = start.elapsed().as_secs_f64();
    stats.finish();
    Ok(RunOutput { stats, hidden, shape: [w.batch, w.tokens_per_step, h], accesses })
}

/// Opens `model` with `opts` and runs `w`, first deriving what the policy needs: Belady's
/// future comes from a recorded resident pass of the same workload (bit-identical routing, so
/// the same access sequence); Static pins the experts most used in a warm-up (a resident pass
/// over the first quarter of the steps, at least one).
pub fn run_model(
    model: &std::path::Path,
    mut opts: crate::engine::EngineOptions,
    w: &Workload,
    observer: Option<&mut dyn RunObserver>,
) -> Result<RunOutput> {
    use crate::cache::PolicyKind;
    if opts.budget.is_some() && !opts.naive {
        let recorded =
            |steps: usize, opts: &crate::engine::EngineOptions| -> Result<Vec<ExpertKey>> {
                let resident = crate::engine::EngineOptions {
                    budget: None,
                    future: None,
                    pinned: None,
                    naive: false,
                    ..opts.clone()
                };
                let engine = Engine::open(model, resident)?;
                Ok(run(&engine, &Workload { steps, ..w.clone() }, None)?.accesses)
            };
        match opts.policy {
            PolicyKind::Belady if opts.future.is_none() => {
                opts.future = Some(recorded(w.steps, &opts)?);
            }
            PolicyKind::Static if opts.pinned.is_none() => {
                let warm = recorded((w.steps / 4).max(1), &opts)?;
                opts.pinned = Some(most_used(&warm));
            }
            _ => {}
        }
    }
    let engine = Engine::open(model, opts)?;
    run(&engine, w, observer)
}

/// The expert accesses of a routing trace in order (Belady's future, or Static's counts when
/// pinning from a trace). The trace must describe `spec`'s blocks and experts.
pub fn accesses_from_trace(
    path: &std::path::Path,
    spec: &crate::spec::ModelSpec,
) -> Result<Vec<ExpertKey>> {
    let mut reader = crate::sim::trace::TraceReader::open(path)?;
    let header = reader.header().clone();
    let experts: Vec<usize> = spec.blocks.iter().map(|b| b.num_experts()).collect();
    if header.experts_per_block != experts {
        return Err(Error::BadTrace {
            path: path.to_path_buf(),
            line: 1,
            reason: format!(
                "the trace describes blocks with {:?} experts, the model has {experts:?}",
                header.experts_per_block
            ),
        });
    }
    let mut rec = crate::sim::trace::BlockRecord::default();
    let mut keys = Vec::new();
    while reader.read_into(&mut rec)? {
        keys.extend(rec.experts.iter().map(|&(e, _)| ExpertKey { block: rec.block, expert: e }));
    }
    Ok(keys)
}

/// Keys by descending use count (ties by key), for pinning.
pub fn most_used(accesses: &[ExpertKey]) -> Vec<ExpertKey> {
    let mut counts: std::collections::HashMap<ExpertKey, u64> = std::collections::HashMap::new();
    for k in accesses {
        *counts.entry(*k).or_default() += 1;
    }
    let mut keys: Vec<(ExpertKey, u64)> = counts.into_iter().collect();
    keys.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    keys.into_iter().map(|(k, _)| k).collect()
}

/// A human-readable summary of a run.
pub fn summary_table(
    model: &std::path::Path,
    opts: &crate::engine::EngineOptions,
    w: &Workload,
    s: &EngineStats,
) -> String {
    use crate::inspect::human_bytes;
    let mode = match (&opts.budget, opts.naive) {
        (None, _) => "resident".to_string(),
        (Some(b), true) => format!("naive, budget {b}"),
        (Some(b), false) => {
            format!("budget {b}, policy {}, prefetch {}", opts.policy, opts.prefetch)
        }
    };
    let mut t = String::new();
    use std::fmt::Write;
    let _ = writeln!(t, "model      {}", model.display());
    let _ = writeln!(t, "mode       {mode}");
    let _ = writeln!(
        t,
        "workload   {} steps × {} sequences × {} tokens, seed {}, locality {}",
        w.steps, w.batch, w.tokens_per_step, w.seed, w.locality
    );
    let _ = writeln!(t, "tokens     {} ({:.1} tokens/s)", s.tokens, s.tokens_per_second);
    let _ = writeln!(
        t,
        "hits       {} / {} expert uses ({:.1}%)",
        s.hits,
        s.hits + s.misses,
        100.0 * s.hit_rate
    );
    let _ = writeln!(
        t,
        "moved      {} ({} budget, peak resident {})",
        human_bytes(s.bytes_transferred),
        human_bytes(s.budget_bytes),
        human_bytes(s.peak_resident_bytes)
    );
    let _ = writeln!(
        t,
        "time       wall {:.3} s, compute {:.3} s, stall {:.3} s",
        s.wall_seconds, s.compute_seconds, s.stall_seconds
    );
    let _ = writeln!(t, "prefetch   {} issued, {} used", s.prefetch_issued, s.prefetch_used);
    t
}

/// Writes a run's block executions as a routing trace (`docs/TRACE.md`). Experts of a block
/// are listed in ascending index, the order the engine looks them up in the cache, so that
/// replaying the trace reproduces the run's hits and misses.
pub struct TraceObserver {
    writer: crate::sim::trace::TraceWriter,
}

impl TraceObserver {
    /// Creates `path` with a header describing `spec`.
    pub fn create(
        path: &std::path::Path,
        model: &std::path::Path,
        spec: &crate::spec::ModelSpec,
        w: &Workload,
    ) -> Result<TraceObserver> {
        let header = crate::sim::trace::TraceHeader {
            version: crate::sim::trace::TRACE_VERSION,
            model: Some(model.display().to_string()),
            blocks: spec.blocks.len(),
            experts_per_block: spec.blocks.iter().map(|b| b.num_experts()).collect(),
            expert_bytes: spec.blocks.iter().map(|b| b.expert_bytes).collect(),
            hidden_size: spec.hidden_size,
            top_k: spec.blocks.iter().map(|b| b.router.top_k()).max(),
            tokens_per_step: Some(w.batch * w.tokens_per_step),
        };
        Ok(TraceObserver { writer: crate::sim::trace::TraceWriter::create(path, &header)? })
    }

    /// Flushes the trace.
    pub fn finish(self) -> Result<()> {
        self.writer.finish().map(|_| ())
    }
}

impl RunObserver for TraceObserver {
    fn on_block(&mut self, step: usize, block: usize, plan: &RoutingPlan) -> Result<()> {
        let experts: Vec<(u32, u32)> =
            plan.per_expert.iter().map(|b| (b.expert as u32, b.tokens.len() as u32)).collect();
        self.writer.write_block(step as u64, block as u32, &experts)
    }
}
