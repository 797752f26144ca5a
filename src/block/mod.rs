//! One MoE block's forward, resident on the host: validate the input, route, run the chosen
//! experts on a backend, combine. The offload engine calls the same pieces ([`route`],
//! [`gather`], [`expert_weights_packed`], [`combine`]) with experts taken from its slots, so a
//! resident and an offloaded run give bit-identical outputs.

pub mod bench;
pub mod io;

use crate::backend::{Backend, ExpertWeights, WeightRef};
use crate::checkpoint::Checkpoint;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ffn::FfnKind;
use crate::routing::gshard::{GShardParams, gshard_top2};
use crate::routing::rre::{self, Domains};
use crate::routing::switch::switch_top1;
use crate::routing::topk::{GroupedSigmoidParams, grouped_sigmoid, softmax_top_k};
use crate::routing::{ExpertBatch, RouterSpec, RoutingPlan};
use crate::spec::{BlockSpec, ExpertTensors, Family, ModelSpec};

/// The input of one block call: `num_tokens` rows of `hidden_size` values, made of
/// `num_tokens / seq_len` sequences (Switch counts capacity per sequence).
#[derive(Debug, Clone, Copy)]
pub struct BlockInput<'a> {
    /// `[num_tokens × hidden_size]` hidden states, row-major.
    pub hidden: &'a [f32],
    /// Rows in `hidden`.
    pub num_tokens: usize,
    /// Tokens per sequence (`num_tokens` for a single sequence).
    pub seq_len: usize,
    /// Token ids, one per token (RRE blocks only).
    pub token_ids: Option<&'a [i64]>,
    /// Domain ids, one per token (RRE blocks only; original ids for an extracted model).
    pub domains: Option<&'a [i64]>,
}

impl BlockInput<'_> {
    /// Checks shapes, finiteness, and that RRE blocks have token ids and domains.
    pub fn validate(&self, block: &BlockSpec, hidden_size: usize) -> Result<()> {
        if self.hidden.len() != self.num_tokens * hidden_size {
            return Err(Error::input(format!(
                "block {}: hidden states hold {} values, expected {} tokens × hidden size {hidden_size}",
                block.prefix,
                self.hidden.len(),
                self.num_tokens
            )));
        }
        if self.num_tokens > 0 && (self.seq_len == 0 || self.num_tokens % self.seq_len != 0) {
            return Err(Error::input(format!(
                "{} tokens do not split into sequences of {}",
                self.num_tokens, self.seq_len
            )));
        }
        if let Some(i) = self.hidden.iter().position(|v| !v.is_finite()) {
            return Err(Error::input(format!(
                "hidden state value {} at token {}, feature {} is not finite",
                self.hidden[i],
                i / hidden_size.max(1),
                i % hidden_size.max(1)
            )));
        }
        if block.router.is_rre() {
            for (what, v) in [("token ids", self.token_ids), ("domains", self.domains)] {
                match v {
                    None => {
                        return Err(Error::input(format!(
                            "block {} routes by token id (RRE): {what} are required",
                            block.prefix
                        )));
                    }
                    Some(v) if v.len() != self.num_tokens => {
                        return Err(Error::input(format!(
                            "{} {what} given for {} tokens",
                            v.len(),
                            self.num_tokens
                        )));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// A weight view of tensor `name` as `[rows × cols]` from the mapping.
fn mapped_weight<'a>(ckpt: &'a Checkpoint, name: &str, bias: bool) -> Result<WeightRef<'a>> {
    let info = ckpt.info(name)?;
    let view = ckpt.tensor(name)?;
    if !info.dtype.is_float_weight() {
        return Err(Error::UnsupportedDtype {
            name: name.to_string(),
            found: info.dtype.to_string(),
            expected: "f32, bf16 or f16".into(),
        });
    }
    let (rows, cols) = match (bias, info.shape.as_slice()) {
        (true, s) => (1, s.iter().product()),
        (false, [r, c]) => (*r, *c),
        (false, s) => {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                expected: vec![0, 0],
                found: s.to_vec(),
            });
        }
    };
    Ok(WeightRef { dtype: &info.dtype, rows, cols, bytes: view.bytes })
}

fn tensors_weights<'a>(ckpt: &'a Checkpoint, t: &ExpertTensors) -> Result<ExpertWeights<'a>> {
    let opt =
        |n: &Option<String>, bias| n.as_deref().map(|n| mapped_weight(ckpt, n, bias)).transpose();
    Ok(ExpertWeights {
        gate: opt(&t.gate, false)?,
        up: mapped_weight(ckpt, &t.up, false)?,
        down: mapped_weight(ckpt, &t.down, false)?,
        up_bias: opt(&t.up_bias, true)?,
        down_bias: opt(&t.down_bias, true)?,
    })
}

/// The weights of routed expert `expert` of `block`, borrowed from the mapped checkpoint.
pub fn expert_weights<'a>(
    ckpt: &'a Checkpoint,
    block: &BlockSpec,
    expert: usize,
) -> Result<ExpertWeights<'a>> {
    let t = block.experts.get(expert).ok_or_else(|| {
        Error::input(format!(
            "expert {expert} is outside block {} (0..{})",
            block.prefix,
            block.num_experts()
        ))
    })?;
    tensors_weights(ckpt, t)
}

/// Bytes of one expert packed in `ExpertTensors::names()` order.
pub fn packed_expert_len(block: &BlockSpec, hidden_size: usize, dtype: &DType) -> usize {
    let (h, f) = (hidden_size, block.ffn_dim);
    let t = &block.experts[0];
    let elems = t.gate.as_ref().map_or(0, |_| f * h)
        + 2 * f * h
        + t.up_bias.as_ref().map_or(0, |_| f)
        + t.down_bias.as_ref().map_or(0, |_| h);
    elems * dtype.size()
}

/// Weights of one expert packed contiguously in `ExpertTensors::names()` order (gate, up,
/// down, up_bias, down_bias — those present), as the offload engine copies them into a slot.
pub fn expert_weights_packed<'a>(
    block: &BlockSpec,
    hidden_size: usize,
    dtype: &'a DType,
    bytes: &'a [u8],
) -> Result<ExpertWeights<'a>> {
    if block.experts.is_empty() {
        return Err(Error::input(format!("block {} has no experts", block.prefix)));
    }
    if !dtype.is_float_weight() {
        return Err(Error::input(format!("packed expert dtype {dtype} is not a float type")));
    }
    let need = packed_expert_len(block, hidden_size, dtype);
    if bytes.len() != need {
        return Err(Error::input(format!(
            "packed expert of block {} has {} bytes, expected {need}",
            block.prefix,
            bytes.len()
        )));
    }
    let (h, f, s) = (hidden_size, block.ffn_dim, dtype.size());
    let t = &block.experts[0];
    let mut off = 0usize;
    let mut take = |rows: usize, cols: usize| {
        let w = WeightRef { dtype, rows, cols, bytes: &bytes[off..off + rows * cols * s] };
        off += rows * cols * s;
        w
    };
    let gate = t.gate.as_ref().map(|_| take(f, h));
    let up = take(f, h);
    let down = take(h, f);
    let up_bias = t.up_bias.as_ref().map(|_| take(1, f));
    let down_bias = t.down_bias.as_ref().map(|_| take(1, h));
    Ok(ExpertWeights { gate, up, down, up_bias, down_bias })
}

/// Copies rows `tokens` of `hidden [.. × hidden_size]` into a new contiguous buffer.
pub fn gather(hidden: &[f32], hidden_size: usize, tokens: &[u32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(tokens.len() * hidden_size);
    for &t in tokens {
        let t = t as usize;
        out.extend_from_slice(&hidden[t * hidden_size..(t + 1) * hidden_size]);
    }
    out
}

/// Router logits `[num_tokens × experts]` of a learned router (`x · Wᵀ + b`, f32).
pub fn router_logits(
    ckpt: &Checkpoint,
    block: &BlockSpec,
    backend: &dyn Backend,
    input: &BlockInput,
) -> Result<Vec<f32>> {
    let name = block
        .router_weight
        .as_deref()
        .ok_or_else(|| Error::input(format!("block {} has no router weight", block.prefix)))?;
    let w = mapped_weight(ckpt, name, false)?;
    let b = block.router_bias.as_deref().map(|n| mapped_weight(ckpt, n, true)).transpose()?;
    let mut logits = vec![0f32; input.num_tokens * w.rows];
    backend.linear(input.hidden, input.num_tokens, w, b, &mut logits)?;
    Ok(logits)
}

/// Routes one call of `block`: learned routers from the hidden states, RRE from token ids and
/// domains.
pub fn route(
    ckpt: &Checkpoint,
    spec: &ModelSpec,
    block: &BlockSpec,
    backend: &dyn Backend,
    input: &BlockInput,
) -> Result<RoutingPlan> {
    input.validate(block, spec.hidden_size)?;
    let n = input.num_tokens;
    let e = block.num_experts();
    match &block.router {
        RouterSpec::Rre { num_domains, experts_per_domain, vocab_size } => {
            let name = block.rre_map.as_deref().ok_or_else(|| {
                Error::input(format!("RRE block {} has no map tensor", block.prefix))
            })?;
            let map = ckpt.tensor(name)?.to_i64()?;
            if map.len() != *vocab_size {
                return Err(Error::ShapeMismatch {
                    name: name.to_string(),
                    expected: vec![*vocab_size],
                    found: vec![map.len()],
                });
            }
            let dom = Domains { num_domains: *num_domains, ids: spec.domain_ids.as_deref() };
            // validate() guarantees both are present with one value per token.
            let (ids, doms) = (input.token_ids.unwrap_or(&[]), input.domains.unwrap_or(&[]));
            rre::route(ids, doms, &map, *experts_per_domain, dom)
        }
        router => {
            let logits = router_logits(ckpt, block, backend, input)?;
            Ok(match *router {
                RouterSpec::SoftmaxTopK { top_k, renormalize } => {
                    softmax_top_k(&logits, n, e, top_k, renormalize)
                }
                RouterSpec::GroupedSigmoid {
                    top_k,
                    n_group,
                    topk_group,
                    renormalize,
                    routed_scaling_factor,
                } => {
                    let bias = block
                        .score_correction_bias
                        .as_deref()
                        .map(|b| ckpt.tensor(b)?.to_f32())
                        .transpose()?;
                    let p = GroupedSigmoidParams {
                        top_k,
                        n_group,
                        topk_group,
                        renormalize,
                        routed_scaling_factor,
                    };
                    grouped_sigmoid(&logits, bias.as_deref(), n, e, p)
                }
                RouterSpec::GShardTop2 {
                    capacity,
                    normalize_before_dropping,
                    batch_prioritized,
                } => {
                    let p = GShardParams { capacity, normalize_before_dropping, batch_prioritized };
                    let plan = gshard_top2(&logits, n, e, p);
                    if spec.family == Family::NllbMoe { nllb_dispatch(plan, e) } else { plan }
                }
                RouterSpec::SwitchTop1 { capacity } => {
                    switch_top1(&logits, n, input.seq_len, e, capacity).0
                }
                RouterSpec::Rre { .. } => unreachable!("handled above"),
            })
        }
    }
}

/// transformers 5.24's NllbMoeSparseMLP hands its experts module the router's `top_1_mask`
/// (one-hot of the first choice, after capacity) as the expert *index* of every
/// (token, expert) pair, with the combine weights `router_probs` alongside: each kept
/// assignment is therefore computed by expert `top_1_mask[t, e]`, i.e. expert 1 for the first
/// choice and expert 0 for the second, with the router's weights g1 and g2 unchanged. The
/// golden case `nllb-top2-capacity` shows exactly this (least squares of every reference
/// output over all experts' outputs gives `g1 · expert_1 + g2 · expert_0`, residual 4e-7), so
/// `nllb_moe` blocks follow it to stay exact to the reference; the router itself (choices,
/// capacity, weights) is GShard's and is what native `glam` models use unchanged.
fn nllb_dispatch(plan: RoutingPlan, num_experts: usize) -> RoutingPlan {
    let ids = plan
        .expert_ids
        .iter()
        .enumerate()
        .map(|(i, &e)| {
            if e < 0 {
                -1
            } else if i % 2 == 0 {
                1
            } else {
                0
            }
        })
        .collect();
    RoutingPlan::from_assignments(plan.num_tokens, 2, num_experts, ids, plan.weights)
}

/// Runs one expert on its batch: gathers its tokens and computes the FFN (`[tokens × hidden]`).
pub fn expert_output(
    backend: &dyn Backend,
    ffn: FfnKind,
    weights: &ExpertWeights<'_>,
    input: &BlockInput,
    hidden_size: usize,
    batch: &ExpertBatch,
) -> Result<Vec<f32>> {
    let x = gather(input.hidden, hidden_size, &batch.tokens);
    let mut y = vec![0f32; x.len()];
    backend.expert_ffn(ffn, weights, &x, batch.tokens.len(), &mut y)?;
    Ok(y)
}

/// The shared expert's contribution `[num_tokens × hidden]`, gate applied (Qwen2-MoE:
/// `sigmoid(x · shared_expert_gate) · SharedMLP(x)`; DeepSeek-V3: `SharedMLP(x)`), or `None`.
pub fn shared_expert_output(
    ckpt: &Checkpoint,
    block: &BlockSpec,
    hidden_size: usize,
    backend: &dyn Backend,
    input: &BlockInput,
) -> Result<Option<Vec<f32>>> {
    let Some(sh) = &block.shared else { return Ok(None) };
    input.validate(block, hidden_size)?;
    let w = tensors_weights(ckpt, &sh.tensors)?;
    let n = input.num_tokens;
    let mut y = vec![0f32; n * hidden_size];
    backend.expert_ffn(block.ffn, &w, input.hidden, n, &mut y)?;
    if let Some(g) = &sh.gate_weight {
        let gw = mapped_weight(ckpt, g, false)?;
        let mut gate = vec![0f32; n];
        backend.linear(input.hidden, n, gw, None, &mut gate)?;
        for (row, g) in y.chunks_exact_mut(hidden_size).zip(&gate) {
            let s = 1.0 / (1.0 + (-g).exp());
            for v in row {
                *v *= s;
            }
        }
    }
    Ok(Some(y))
}

/// Deterministic weighted combine: `output[t] = Σ_{s=0..k} plan.weights[t·k+s] · y_{e(t,s)}[t]`
/// in slot order (+ `shared[t]`), so the result does not depend on the order in which experts
/// were computed. `expert_outputs[i]` holds the rows of `plan.per_expert[i].tokens`.
///
/// A dropped assignment (expert −1) contributes nothing. For Switch Transformers this means a
/// token dropped by the capacity outputs 0: transformers 4.x returned `router_probs · input`
/// for such tokens, but the reference the golden data comes from (transformers 5.24,
/// SwitchTransformersExperts with `index_add_` into zeros) outputs 0, which
/// `tests/golden/switch-top1-capacity` confirms (error 5e-8 against 1e-1 for the 4.x rule).
pub fn combine(
    block: &BlockSpec,
    hidden_size: usize,
    plan: &RoutingPlan,
    input: &BlockInput,
    expert_outputs: &[Vec<f32>],
    shared: Option<&[f32]>,
) -> Vec<f32> {
    // Every router's dropped assignments contribute 0 (see above), so neither the block's
    // router nor the input is needed today; both stay in the signature for routers whose
    // reference passes dropped tokens through.
    let _ = (block, input);
    let (n, k, h) = (plan.num_tokens, plan.k, hidden_size);
    // For every slot, which (batch, row) holds its expert output.
    let mut src: Vec<Option<(usize, usize)>> = vec![None; n * k];
    for (i, b) in plan.per_expert.iter().enumerate() {
        for (row, &t) in b.tokens.iter().enumerate() {
            let t = t as usize;
            if let Some(s) = (0..k).find(|&s| {
                plan.expert_ids[t * k + s] == b.expert as i32 && src[t * k + s].is_none()
            }) {
                src[t * k + s] = Some((i, row));
            }
        }
    }
    let mut out = vec![0f32; n * h];
    for t in 0..n {
        let o = &mut out[t * h..(t + 1) * h];
        for s in 0..k {
            let w = plan.weights[t * k + s];
            if let Some((i, row)) = src[t * k + s] {
                let y = &expert_outputs[i][row * h..(row + 1) * h];
                for (a, b) in o.iter_mut().zip(y) {
                    *a += w * b;
                }
            }
        }
        if let Some(sh) = shared {
            for (a, b) in o.iter_mut().zip(&sh[t * h..(t + 1) * h]) {
                *a += b;
            }
        }
    }
    out
}

/// The output of a fully resident block forward.
#[derive(Debug, Clone)]
pub struct BlockOutput {
    /// `[num_tokens × hidden]`.
    pub output: Vec<f32>,
    /// The routing that produced it.
    pub plan: RoutingPlan,
}

/// Fully resident forward: route, run every chosen expert from the mapping, combine.
pub fn forward(
    ckpt: &Checkpoint,
    spec: &ModelSpec,
    block: &BlockSpec,
    backend: &dyn Backend,
    input: &BlockInput,
) -> Result<BlockOutput> {
    let h = spec.hidden_size;
    let plan = route(ckpt, spec, block, backend, input)?;
    let mut outputs = Vec::with_capacity(plan.per_expert.len());
    for b in &plan.per_expert {
        let w = expert_weights(ckpt, block, b.expert)?;
        outputs.push(expert_output(backend, block.ffn, &w, input, h, b)?);
    }
    let shared = shared_expert_output(ckpt, block, h, backend, input)?;
    let output = combine(block, h, &plan, input, &outputs, shared.as_deref());
    Ok(BlockOutput { output, plan })
}
