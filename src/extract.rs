//! `extract`: the one-domain sub-model of a PanGu-Σ (RRE) model — the domain's experts
//! renumbered 0..K, the RRE maps and every non-expert tensor, with a config that holds one
//! domain and remembers its original id (`domain_ids: [D]`). Tensors are written straight from
//! the mapped source, one after another; the model is never loaded whole.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::Dtype;

use crate::checkpoint::{CONFIG_FILE, Checkpoint, SINGLE_FILE};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::routing::RouterSpec;
use crate::routing::rre::Domains;
use crate::spec::{Family, ModelSpec};

/// What `extract` wrote.
#[derive(Debug, Clone)]
pub struct ExtractReport {
    /// The original domain id.
    pub domain: i64,
    /// Experts per domain (and in the sub-model, per block).
    pub experts_per_domain: usize,
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of tensor data written.
    pub bytes: u64,
    /// The output folder.
    pub out: PathBuf,
}

/// A tensor borrowed from the mapped source.
struct Borrowed<'a> {
    dtype: Dtype,
    shape: &'a [usize],
    data: &'a [u8],
}

impl safetensors::View for Borrowed<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn st_dtype(name: &str, d: &DType) -> Result<Dtype> {
    Ok(match d.safetensors_name() {
        "F32" => Dtype::F32,
        "BF16" => Dtype::BF16,
        "F16" => Dtype::F16,
        "I32" => Dtype::I32,
        "I64" => Dtype::I64,
        "F64" => Dtype::F64,
        "U8" => Dtype::U8,
        "I8" => Dtype::I8,
        "I16" => Dtype::I16,
        "U16" => Dtype::U16,
        "U32" => Dtype::U32,
        "U64" => Dtype::U64,
        "BOOL" => Dtype::BOOL,
        other => {
            return Err(Error::UnsupportedDtype {
                name: name.to_string(),
                found: other.to_string(),
                expected: "a dtype extract can copy".into(),
            });
        }
    })
}

/// `(block prefix, expert index, rest)` when `name` is a routed expert's tensor
/// (`{prefix}.experts.{E}.{rest}`) of one of `prefixes`.
fn split_expert<'n>(name: &'n str, prefixes: &[&str]) -> Option<(usize, usize, &'n str)> {
    prefixes.iter().enumerate().find_map(|(b, p)| {
        let rest = name.strip_prefix(p)?.strip_prefix(".experts.")?;
        let (e, tail) = rest.split_once('.')?;
        Some((b, e.parse().ok()?, tail))
    })
}

/// Writes the sub-model of original domain `domain` of the RRE model at `model` into `out`.
pub fn extract_domain(model: &Path, domain: i64, out: &Path) -> Result<ExtractReport> {
    let ckpt = Checkpoint::open(model)?;
    let spec = ModelSpec::from_checkpoint(&ckpt)?;
    if spec.family != Family::PanguSigma {
        return Err(Error::InvalidOption(format!(
            "extract needs a pangu_sigma (RRE) model; {} is {}",
            model.display(),
            spec.family.model_type()
        )));
    }
    let Some(RouterSpec::Rre { num_domains, experts_per_domain: k, .. }) =
        spec.blocks.first().map(|b| b.router.clone())
    else {
        return Err(Error::config(ckpt.config_path(), "an RRE model needs at least one layer"));
    };
    let local = Domains { num_domains, ids: spec.domain_ids.as_deref() }.local(domain)?;
    let (lo, hi) = (local * k, local * k + k);
    if out.exists() && std::fs::canonicalize(out).ok() == std::fs::canonicalize(model).ok() {
        return Err(Error::InvalidOption("--out must differ from --model".into()));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;

    let prefixes: Vec<&str> = spec.blocks.iter().map(|b| b.prefix.as_str()).collect();
    let mut tensors: Vec<(String, Borrowed<'_>)> = Vec::new();
    let mut bytes = 0u64;
    for (name, info) in ckpt.tensors() {
        let new_name = match split_expert(name, &prefixes) {
            Some((b, e, tail)) if (lo..hi).contains(&e) => {
                format!("{}.experts.{}.{tail}", prefixes[b], e - lo)
            }
            Some(_) => continue,
            None => name.clone(),
        };
        let view = ckpt.tensor(name)?;
        bytes += info.len as u64;
        tensors.push((
            new_name,
            Borrowed { dtype: st_dtype(name, &info.dtype)?, shape: &info.shape, data: view.bytes },
        ));
    }
    let n = tensors.len();
    let file = out.join(SINGLE_FILE);
    safetensors::serialize_to_file(tensors, None::<HashMap<String, String>>, &file).map_err(
        |e| Error::BadSafetensors { path: file.clone(), reason: format!("cannot write: {e}") },
    )?;

    let mut config = ckpt.config().clone();
    if let Some(obj) = config.as_object_mut() {
        obj.insert("num_domains".into(), 1.into());
        obj.insert("domain_ids".into(), serde_json::json!([domain]));
    }
    let cfg_path = out.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::config(&cfg_path, format!("cannot serialise: {e}")))?;
    std::fs::write(&cfg_path, text + "\n").map_err(|e| Error::io(&cfg_path, e))?;
    Ok(ExtractReport { domain, experts_per_domain: k, tensors: n, bytes, out: out.to_path_buf() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_expert_names() {
        let p = ["layers.0.moe", "layers.1.moe"];
        assert_eq!(
            split_expert("layers.1.moe.experts.12.up.weight", &p),
            Some((1, 12, "up.weight"))
        );
        assert_eq!(split_expert("layers.1.moe.rre_map", &p), None);
        assert_eq!(split_expert("embed.weight", &p), None);
    }
}
