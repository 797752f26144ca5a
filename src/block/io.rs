//! `block` on files: reads `<prefix>.input` tensors (and RRE token ids / domains) from a
//! safetensors file, computes each block, writes `<prefix>.output`, `.expert_ids`,
//! `.expert_weights`.

use std::path::Path;

use safetensors::SafeTensors;

use super::{BlockInput, forward};
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::CudaBackend;
use crate::backend::{Backend, Device};
use crate::checkpoint::Checkpoint;
use crate::dtype::{DType, to_f32_vec, to_i64_vec};
use crate::error::{Error, Result};
use crate::io::OwnedTensor;
use crate::spec::ModelSpec;

/// The compute backend for `--device`: `cpu`, or `cuda` / `cuda:N` (a [`CudaBackend`]; an
/// error without the `cuda` feature, or naming the missing driver or libraries).
pub fn backend_for(device: &str, threads: usize) -> Result<Box<dyn Backend>> {
    match device.parse::<Device>()? {
        Device::Cpu => Ok(Box::new(CpuBackend::new(threads)?)),
        Device::Cuda(ordinal) => Ok(Box::new(CudaBackend::new(ordinal)?)),
    }
}

/// What was computed for one block of the input file.
#[derive(Debug, Clone)]
pub struct BlockFileResult {
    /// The block prefix.
    pub prefix: String,
    /// Input shape.
    pub shape: Vec<usize>,
    /// Assignments dropped by capacity.
    pub dropped: usize,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadSafetensors { path: path.to_path_buf(), reason: reason.into() }
}

/// Integer tensor `name` of the input file, or None when absent.
fn ints(st: &SafeTensors<'_>, path: &Path, name: &str) -> Result<Option<(Vec<usize>, Vec<i64>)>> {
    let Ok(t) = st.tensor(name) else { return Ok(None) };
    let dt = DType::from_safetensors_name(&format!("{:?}", t.dtype()));
    let v = to_i64_vec(&dt, t.data())
        .ok_or_else(|| bad(path, format!("{name} must be i32 or i64, found {dt}")))?;
    Ok(Some((t.shape().to_vec(), v)))
}

/// Runs every `<prefix>.input` of `input` through its block and writes `output`.
pub fn run_file(
    ckpt: &Checkpoint,
    spec: &ModelSpec,
    backend: &dyn Backend,
    input: &Path,
    output: &Path,
) -> Result<Vec<BlockFileResult>> {
    let bytes = std::fs::read(input).map_err(|e| Error::io(input, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(input, e.to_string()))?;
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    let mut out: Vec<(String, OwnedTensor)> = Vec::new();
    let mut results = Vec::new();
    for name in names.iter().filter(|n| n.ends_with(".input")) {
        let prefix = &name[..name.len() - ".input".len()];
        let block = spec.block(prefix)?;
        let t = st.tensor(name).map_err(|e| bad(input, e.to_string()))?;
        let dt = DType::from_safetensors_name(&format!("{:?}", t.dtype()));
        if !dt.is_float_weight() {
            return Err(bad(input, format!("{name} must be f32, bf16 or f16, found {dt}")));
        }
        let shape = t.shape().to_vec();
        let h = spec.hidden_size;
        let (batch, seq) = match shape.as_slice() {
            [b, s, x] if *x == h => (*b, *s),
            [s, x] if *x == h => (1, *s),
            _ => {
                return Err(Error::input(format!(
                    "{name} has shape {shape:?}; expected [batch, tokens, {h}] or [tokens, {h}]"
                )));
            }
        };
        let hidden = to_f32_vec(&dt, t.data());
        let n = batch * seq;
        let mut token_ids = None;
        let mut domains = None;
        if block.router.is_rre() {
            let (tshape, ids) =
                ints(&st, input, &format!("{prefix}.token_ids"))?.ok_or_else(|| {
                    Error::input(format!(
                        "block {prefix} routes by token id: {prefix}.token_ids is missing"
                    ))
                })?;
            if ids.len() != n {
                return Err(Error::input(format!(
                    "{prefix}.token_ids has shape {tshape:?}; expected [{batch}, {seq}]"
                )));
            }
            let (dshape, d) = ints(&st, input, &format!("{prefix}.domain"))?.ok_or_else(|| {
                Error::input(format!("block {prefix} routes by domain: {prefix}.domain is missing"))
            })?;
            let per_token: Vec<i64> = match d.len() {
                1 => vec![d[0]; n],
                l if l == batch => d.iter().flat_map(|&x| std::iter::repeat_n(x, seq)).collect(),
                _ => {
                    return Err(Error::input(format!(
                        "{prefix}.domain has shape {dshape:?}; expected [{batch}] or one value"
                    )));
                }
            };
            token_ids = Some(ids);
            domains = Some(per_token);
        }
        let inp = BlockInput {
            hidden: &hidden,
            num_tokens: n,
            seq_len: seq.max(1),
            token_ids: token_ids.as_deref(),
            domains: domains.as_deref(),
        };
        let res = forward(ckpt, spec, block, backend, &inp)?;
        let k = res.plan.k;
        let mut kshape = shape[..shape.len() - 1].to_vec();
        kshape.push(k);
        out.push((format!("{prefix}.output"), OwnedTensor::f32(shape.clone(), &res.output)?));
        out.push((
            format!("{prefix}.expert_ids"),
            OwnedTensor::i32(kshape.clone(), &res.plan.expert_ids)?,
        ));
        out.push((
            format!("{prefix}.expert_weights"),
            OwnedTensor::f32(kshape, &res.plan.weights)?,
        ));
        let dropped = res.plan.expert_ids.iter().filter(|&&e| e < 0).count();
        results.push(BlockFileResult { prefix: prefix.to_string(), shape, dropped });
    }
    if results.is_empty() {
        return Err(Error::input(format!(
            "{}: no <prefix>.input tensors (the model's blocks: {})",
            input.display(),
            spec.blocks.iter().map(|b| b.prefix.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    crate::io::write_tensors(output, out)?;
    Ok(results)
}
