//! The offloaded path of the engine, device-agnostic: the expert cache decides residency, a
//! [`SlotDevice`] fills slots and computes from them, and each block runs InfMoE's schedule
//! (fetch misses at once, compute resident experts while they arrive), with optional prefetch
//! of the next block. The CPU device (`HostSlots`: a slot arena in RAM filled by the
//! transfer pool) is in `host_slots.rs`; the CUDA one is in `cuda_offload.rs`. Both share every cache,
//! prefetch and stats rule below, so their hits, misses and bytes follow the same logic.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use parking_lot::Mutex;

use crate::block::{self, BlockInput, BlockOutput};
use crate::cache::{self, ExpertCache, ExpertKey, PolicyInit};
use crate::error::{Error, Result};
use crate::routing::{ExpertBatch, RoutingPlan};
use crate::schedule::{BlockRecord, BlockSchedule};
use crate::spec::{BlockSpec, ModelSpec};

use super::{Engine, EngineOptions, PrefetchMode};

/// What a device supplies to the offloaded schedule: slots, a copy engine and fences.
pub(super) trait SlotDevice: Send + Sync {
    /// Completion of one copy into a slot.
    type Fence: Clone + Send;
    /// Whether the copy behind `fence` finished (a slot whose copy is in flight is not evicted).
    fn is_complete(fence: &Self::Fence) -> bool;
    /// Starts copying expert `expert` of block `block` into `slot`; returns at once.
    fn submit(&self, block: usize, expert: usize, slot: usize) -> Result<Self::Fence>;
    /// Blocks until `fence`'s copy finished; the seconds waited, or why the copy failed.
    fn wait(&self, fence: &Self::Fence) -> std::result::Result<f64, String>;
    /// The rows of `batch` through the expert held in `slot`.
    fn compute(
        &self,
        engine: &Engine,
        block: &BlockSpec,
        input: &BlockInput,
        batch: &ExpertBatch,
        slot: usize,
    ) -> Result<Vec<f32>>;
    /// Test hook: the `n`-th copy from now fails.
    fn inject_failure(&self, n: u64);
}

/// The engine's view of an offloaded path, whatever its device.
pub(super) trait OffloadPath: Send + Sync {
    /// The byte budget.
    fn budget_bytes(&self) -> u64;
    /// Most bytes resident at once so far (shared experts included).
    fn peak_resident_bytes(&self) -> u64;
    /// Prefetches issued so far.
    fn prefetch_issued(&self) -> u64;
    /// Prefetches used so far.
    fn prefetch_used(&self) -> u64;
    /// Test hook: the `n`-th copy from now fails.
    fn inject_failure(&self, n: u64);
    /// Runs one block (`next`: the block after it, for prefetch).
    fn forward_block(
        &self,
        engine: &Engine,
        block: &BlockSpec,
        input: &BlockInput,
        next: Option<&BlockSpec>,
        step: usize,
    ) -> Result<(BlockOutput, BlockRecord)>;
}

/// How a budget is carved: computed the same way for every device.
#[derive(Debug, Clone, Copy)]
pub(super) struct SlotPlan {
    /// The budget in bytes.
    pub budget_bytes: u64,
    /// Shared-expert bytes held resident for the whole run (charged to the budget).
    pub pinned_bytes: u64,
    /// Bytes of the largest expert: one slot.
    pub slot_bytes: u64,
    /// Slots the budget holds after the shared experts.
    pub num_slots: usize,
    /// Slots one block needs at once (top-k; 1 for the naive method).
    pub need: usize,
}

impl SlotPlan {
    /// Parses `budget` and carves it; errors when it cannot hold one block's experts.
    pub(super) fn new(spec: &ModelSpec, budget: &str, opts: &EngineOptions) -> Result<SlotPlan> {
        let budget_bytes = cache::parse_budget(budget, spec.total_expert_bytes())?;
        let pinned_bytes: u64 = spec.blocks.iter().map(|b| b.shared_expert_bytes).sum();
        // Slots are exactly one expert large, so the slot count is the one the simulator
        // derives from a trace header.
        let slot_bytes = spec.max_expert_bytes();
        let num_slots =
            budget_bytes.saturating_sub(pinned_bytes).checked_div(slot_bytes).unwrap_or(0) as usize;
        // One token needs its k experts of a block at once; the naive method needs one slot.
        let need = if opts.naive {
            1
        } else {
            spec.blocks.iter().map(|b| b.router.top_k()).max().unwrap_or(1)
        };
        let plan = SlotPlan { budget_bytes, pinned_bytes, slot_bytes, num_slots, need };
        plan.check(num_slots)?;
        Ok(plan)
    }

    /// Errors when `slots` (what a device could carve) is below what one block needs.
    pub(super) fn check(&self, slots: usize) -> Result<()> {
        if slots < self.need {
            return Err(Error::BudgetTooSmall {
                budget: self.budget_bytes,
                reason: format!(
                    "it holds {slots} expert slot(s) of {} bytes after {} bytes of shared experts; at least {} are needed ({} bytes)",
                    self.slot_bytes,
                    self.pinned_bytes,
                    self.need,
                    self.pinned_bytes + self.need as u64 * self.slot_bytes
                ),
            });
        }
        Ok(())
    }
}

struct State<F> {
    cache: ExpertCache,
    /// The copy that filled each resident key's slot.
    fences: HashMap<ExpertKey, F>,
    /// Keys fetched by prefetch and not used since.
    prefetched: HashSet<ExpertKey>,
    resident_bytes: u64,
    peak_resident_bytes: u64,
    prefetch_issued: u64,
    prefetch_used: u64,
    /// The step each key was last used in: prefetch only evicts keys idle for a whole step,
    /// so a speculative fetch never pushes out the working set of the step before.
    last_use: HashMap<ExpertKey, usize>,
    /// The step of the block being run.
    step: usize,
    /// Bytes of every copy submitted (counted when asked for, so copies still in flight at
    /// the end of a run are included).
    bytes_requested: u64,
}

/// The offloaded schedule over a device `D`.
pub(super) struct Offload<D: SlotDevice> {
    dev: D,
    /// Bytes of one expert, per block.
    expert_bytes: Vec<u64>,
    state: Mutex<State<D::Fence>>,
    prefetch: PrefetchMode,
    naive: bool,
    budget_bytes: u64,
}

impl<D: SlotDevice> Offload<D> {
    /// The schedule over `dev`, whose `num_slots` slots (≤ `plan.num_slots`) the cache manages.
    pub(super) fn new(
        spec: &ModelSpec,
        plan: SlotPlan,
        num_slots: usize,
        opts: &EngineOptions,
        dev: D,
    ) -> Result<Offload<D>> {
        plan.check(num_slots)?;
        let experts_per_block: Vec<usize> = spec.blocks.iter().map(|b| b.num_experts()).collect();
        // Static pins what fits while leaving room for one token's experts.
        let pinned = opts
            .pinned
            .as_ref()
            .map(|p| p.iter().copied().take(num_slots.saturating_sub(plan.need)).collect());
        let policy = cache::make_policy(
            opts.policy,
            PolicyInit {
                experts_per_block: experts_per_block.clone(),
                future: opts.future.clone(),
                pinned,
            },
            num_slots,
        )?;
        let cache = ExpertCache::new(num_slots, &experts_per_block, policy);
        Ok(Offload {
            dev,
            expert_bytes: spec.blocks.iter().map(|b| b.expert_bytes).collect(),
            state: Mutex::new(State {
                cache,
                fences: HashMap::new(),
                prefetched: HashSet::new(),
                resident_bytes: plan.pinned_bytes,
                peak_resident_bytes: plan.pinned_bytes,
                prefetch_issued: 0,
                prefetch_used: 0,
                bytes_requested: 0,
                last_use: HashMap::new(),
                step: 0,
            }),
            prefetch: opts.prefetch,
            naive: opts.naive,
            budget_bytes: plan.budget_bytes,
        })
    }

    /// Places `key` in a slot (evicting per policy among keys `evictable` allows) and starts
    /// its copy. Returns `Ok(false)` when no slot can be freed.
    fn fetch(
        &self,
        st: &mut State<D::Fence>,
        key: ExpertKey,
        evictable: &dyn Fn(ExpertKey) -> bool,
    ) -> Result<bool> {
        let fences = &st.fences;
        let guard = |k: ExpertKey| evictable(k) && fences.get(&k).is_none_or(D::is_complete);
        let placement = match st.cache.insert(key, &guard) {
            Ok(p) => p,
            Err(Error::CacheFull { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let b = key.block as usize;
        if let Some(old) = placement.evicted {
            st.fences.remove(&old);
            st.prefetched.remove(&old);
            st.resident_bytes -= self.expert_bytes[old.block as usize];
        }
        st.resident_bytes += self.expert_bytes[b];
        st.peak_resident_bytes = st.peak_resident_bytes.max(st.resident_bytes);
        if st.resident_bytes > self.budget_bytes {
            // Slots are carved from the budget, so this cannot happen; checked on every
            // fetch anyway because exceeding a user's device budget is never acceptable.
            return Err(Error::BudgetTooSmall {
                budget: self.budget_bytes,
                reason: format!("{} bytes would be resident (internal error)", st.resident_bytes),
            });
        }
        match self.dev.submit(b, key.expert as usize, placement.slot) {
            Ok(fence) => {
                st.fences.insert(key, fence);
                st.bytes_requested += self.expert_bytes[b];
                Ok(true)
            }
            Err(e) => {
                // The slot holds nothing usable: forget the key so a later call refetches it.
                self.drop_key(st, key);
                Err(Error::Transfer {
                    block: b,
                    expert: key.expert as usize,
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Forgets `key` after its copy failed, so the slot is not trusted.
    fn drop_key(&self, st: &mut State<D::Fence>, key: ExpertKey) {
        if st.cache.remove(key).is_some() {
            st.resident_bytes -= self.expert_bytes[key.block as usize];
        }
        st.fences.remove(&key);
        st.prefetched.remove(&key);
    }

    /// Computes one expert from its slot, waiting on its fence; returns (rows, stall seconds).
    fn compute_expert(
        &self,
        st: &mut State<D::Fence>,
        engine: &Engine,
        block: &BlockSpec,
        input: &BlockInput,
        plan: &RoutingPlan,
        i: usize,
    ) -> Result<(Vec<f32>, f64)> {
        let batch = &plan.per_expert[i];
        let key = ExpertKey { block: block.index as u32, expert: batch.expert as u32 };
        let waited = match st.fences.get(&key).cloned() {
            Some(fence) => match self.dev.wait(&fence) {
                Ok(s) => s,
                Err(reason) => {
                    self.drop_key(st, key);
                    return Err(Error::Transfer {
                        block: block.index,
                        expert: batch.expert,
                        reason,
                    });
                }
            },
            None => 0.0,
        };
        let slot = st.cache.slot_of(key).ok_or_else(|| Error::Transfer {
            block: block.index,
            expert: batch.expert,
            reason: "expert left its slot before use (internal scheduling error)".into(),
        })?;
        let y = self.dev.compute(engine, block, input, batch, slot)?;
        Ok((y, waited))
    }

    fn run_block(
        &self,
        engine: &Engine,
        block: &BlockSpec,
        input: &BlockInput,
        next: Option<&BlockSpec>,
        step: usize,
    ) -> Result<(BlockOutput, BlockRecord)> {
        let mut st = self.state.lock();
        st.step = step;
        let t0 = Instant::now();
        let plan = block::route(&engine.ckpt, &engine.spec, block, engine.backend(), input)?;
        let mut record = BlockRecord {
            step,
            block: block.index,
            experts: plan.per_expert.len(),
            ..Default::default()
        };
        let key_of = |e: usize| ExpertKey { block: block.index as u32, expert: e as u32 };
        let requested_before = st.bytes_requested;
        let mut stall = 0.0;
        let mut outputs: Vec<Vec<f32>> = vec![Vec::new(); plan.per_expert.len()];
        if self.naive {
            self.run_naive(&mut st, engine, block, input, &plan, &mut outputs, &mut stall)?;
        } else {
            // Accesses in ascending expert order: the order a recorded future lists them in.
            let mut needed: Vec<(usize, usize)> = Vec::with_capacity(plan.per_expert.len());
            for b in &plan.per_expert {
                let key = key_of(b.expert);
                st.last_use.insert(key, step);
                if st.cache.access(key) {
                    record.hits += 1;
                    if st.prefetched.remove(&key) {
                        st.prefetch_used += 1;
                    }
                }
                needed.push((b.expert, b.tokens.len()));
            }
            let sched = BlockSchedule::new(&needed, |e| st.cache.contains(key_of(e)));
            let index_of: HashMap<usize, usize> =
                plan.per_expert.iter().enumerate().map(|(i, b)| (b.expert, i)).collect();
            let mut done: HashSet<usize> = HashSet::new();
            let needed_set: HashSet<usize> = needed.iter().map(|&(e, _)| e).collect();
            // Fetch every miss at once; when the slots are all held by this block's own
            // unfinished experts, compute some of those first, then retry (waves).
            let mut pending_compute: Vec<usize> = sched.resident.clone();
            for &e in &sched.misses {
                loop {
                    let evictable = |k: ExpertKey| {
                        k.block as usize != block.index
                            || !needed_set.contains(&(k.expert as usize))
                            || done.contains(&(k.expert as usize))
                    };
                    if self.fetch(&mut st, key_of(e), &evictable)? {
                        pending_compute.push(e);
                        break;
                    }
                    let Some(first) = pending_compute.first().copied() else {
                        return Err(Error::BudgetTooSmall {
                            budget: self.budget_bytes,
                            reason: format!(
                                "no slot can be freed for expert {e} of block {}",
                                block.index
                            ),
                        });
                    };
                    pending_compute.remove(0);
                    let (y, s) = self.compute_expert(
                        &mut st,
                        engine,
                        block,
                        input,
                        &plan,
                        index_of[&first],
                    )?;
                    stall += s;
                    outputs[index_of[&first]] = y;
                    done.insert(first);
                }
            }
            if let Some(nb) = next {
                self.prefetch_next(&mut st, engine, block, &needed_set, nb, input)?;
            }
            for e in pending_compute {
                let (y, s) =
                    self.compute_expert(&mut st, engine, block, input, &plan, index_of[&e])?;
                stall += s;
                outputs[index_of[&e]] = y;
            }
        }
        let shared = block::shared_expert_output(
            &engine.ckpt,
            block,
            engine.spec.hidden_size,
            engine.backend(),
            input,
        )?;
        let output = block::combine(
            block,
            engine.spec.hidden_size,
            &plan,
            input,
            &outputs,
            shared.as_deref(),
        );
        record.stall_seconds = stall;
        record.compute_seconds = (t0.elapsed().as_secs_f64() - stall).max(0.0);
        record.bytes_moved = st.bytes_requested - requested_before;
        Ok((BlockOutput { output, plan }, record))
    }

    /// The naive baseline: one expert at a time, fetched synchronously into slot space, then
    /// computed; nothing is kept between uses.
    #[allow(clippy::too_many_arguments)]
    fn run_naive(
        &self,
        st: &mut State<D::Fence>,
        engine: &Engine,
        block: &BlockSpec,
        input: &BlockInput,
        plan: &RoutingPlan,
        outputs: &mut [Vec<f32>],
        stall: &mut f64,
    ) -> Result<()> {
        for (i, b) in plan.per_expert.iter().enumerate() {
            let key = ExpertKey { block: block.index as u32, expert: b.expert as u32 };
            st.cache.access(key);
            let fetched = self.fetch(st, key, &|k| k != key)?;
            if !fetched {
                return Err(Error::BudgetTooSmall {
                    budget: self.budget_bytes,
                    reason: "no slot for the naive method".into(),
                });
            }
            let (y, s) = self.compute_expert(st, engine, block, input, plan, i)?;
            *stall += s;
            outputs[i] = y;
            self.drop_key(st, key);
        }
        Ok(())
    }

    /// Fetches the next block's experts ahead of need: exactly (RRE) or by applying its router
    /// to this block's input (gate). Never evicts what this block or the next one needs, nor
    /// anything used in this step or the one before, and stops quietly when no slot can be
    /// freed: under a budget smaller than a step's working set, speculation would only evict
    /// experts that are about to be used again.
    fn prefetch_next(
        &self,
        st: &mut State<D::Fence>,
        engine: &Engine,
        current: &BlockSpec,
        current_needed: &HashSet<usize>,
        next: &BlockSpec,
        input: &BlockInput,
    ) -> Result<()> {
        let step = st.step;
        let wanted = match (self.prefetch, next.router.is_rre()) {
            (PrefetchMode::None, _) => return Ok(()),
            (PrefetchMode::Exact, false) => return Ok(()),
            _ => block::route(&engine.ckpt, &engine.spec, next, engine.backend(), input)?,
        };
        let mut order: Vec<(usize, usize)> =
            wanted.per_expert.iter().map(|b| (b.expert, b.tokens.len())).collect();
        order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let next_set: HashSet<usize> = order.iter().map(|&(e, _)| e).collect();
        // Lent out of the state for the loop, so the protection test can read it while `fetch`
        // borrows the rest of the state mutably.
        let last_use = std::mem::take(&mut st.last_use);
        let protect = |k: ExpertKey| {
            let e = k.expert as usize;
            !((k.block as usize == current.index && current_needed.contains(&e))
                || (k.block as usize == next.index && next_set.contains(&e))
                || last_use.get(&k).is_some_and(|&s| s + 1 >= step))
        };
        let mut result = Ok(());
        for (e, _) in order {
            let key = ExpertKey { block: next.index as u32, expert: e as u32 };
            if st.cache.contains(key) {
                continue;
            }
            match self.fetch(st, key, &protect) {
                Ok(true) => {
                    st.prefetched.insert(key);
                    st.prefetch_issued += 1;
                }
                Ok(false) => break,
                Err(err) => {
                    result = Err(err);
                    break;
                }
            }
        }
        st.last_use = last_use;
        result
    }
}

impl<D: SlotDevice> OffloadPath for Offload<D> {
    fn budget_bytes(&self) -> u64 {
        self.budget_bytes
    }
    fn peak_resident_bytes(&self) -> u64 {
        self.state.lock().peak_resident_bytes
    }
    fn prefetch_issued(&self) -> u64 {
        self.state.lock().prefetch_issued
    }
    fn prefetch_used(&self) -> u64 {
        self.state.lock().prefetch_used
    }
    fn inject_failure(&self, n: u64) {
        self.dev.inject_failure(n);
    }
    fn forward_block(
        &self,
        engine: &Engine,
        block: &BlockSpec,
        input: &BlockInput,
        next: Option<&BlockSpec>,
        step: usize,
    ) -> Result<(BlockOutput, BlockRecord)> {
        self.run_block(engine, block, input, next, step)
    }
}
