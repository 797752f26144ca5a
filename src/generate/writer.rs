//! Streams planned tensors into safetensors files: lays tensors out into shards, writes each
//! shard's header first (sizes are known from the plan), then the values chunk by chunk through
//! a buffered writer, and the `model.safetensors.index.json` when there is more than one shard.
//! Memory use is a few chunk groups, whatever the model size.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{Map, Value, json};

use crate::checkpoint::{CONFIG_FILE, INDEX_FILE, SINGLE_FILE};
use crate::error::{Error, Result};

use super::GenOptions;
use super::plan::TensorPlan;

/// Chunks generated in parallel before they are written in order (64 × 64 Ki elements: at
/// most 16 MiB of f32 values in flight).
const CHUNKS_PER_GROUP: usize = 64;

/// Write buffer size: large sequential writes.
const WRITE_BUFFER: usize = 8 << 20;

/// Parses a byte size: a plain number of bytes or a number with a unit (`B`, `KB`, `MB`, `GB`,
/// `TB` decimal; `KiB`, `MiB`, `GiB`, `TiB` binary; case-insensitive), e.g. `4GiB`, `1.5GB`.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad =
        || Error::InvalidOption(format!("cannot read {s:?} as a size (e.g. 4GiB, 500MB, 1048576)"));
    let value: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes.round() as u64)
}

/// Removes the files of a model previously written in `out` (config, single file, index,
/// `model-*-of-*.safetensors` shards), so that no stale shard or index outlives a new model.
pub fn remove_previous_model(out: &Path) -> Result<()> {
    let entries = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(out, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name == CONFIG_FILE
            || name == SINGLE_FILE
            || name == INDEX_FILE
            || (name.starts_with("model-")
                && name.ends_with(".safetensors")
                && name.contains("-of-"));
        if ours {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// One output file: which tensors (indices into the plan) it holds.
struct Shard {
    name: String,
    tensors: Vec<usize>,
}

/// Greedy layout in plan order: a new shard starts when adding the next tensor would take the
/// current one above `shard_size` (a tensor larger than `shard_size` gets a shard of its own).
fn layout(plan: &[TensorPlan], shard_size: u64) -> Vec<Shard> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut bytes = 0u64;
    for (i, t) in plan.iter().enumerate() {
        if !current.is_empty() && bytes + t.byte_len() > shard_size {
            groups.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += t.byte_len();
        current.push(i);
    }
    if !current.is_empty() || groups.is_empty() {
        groups.push(current);
    }
    let n = groups.len();
    groups
        .into_iter()
        .enumerate()
        .map(|(k, tensors)| Shard {
            name: if n == 1 {
                SINGLE_FILE.to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", k + 1, n)
            },
            tensors,
        })
        .collect()
}

/// The safetensors header of a shard: 8-byte little-endian length, then the JSON, padded with
/// spaces so the data starts 8-byte aligned.
fn header(plan: &[TensorPlan], shard: &Shard) -> Result<Vec<u8>> {
    let mut map = Map::new();
    map.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for &i in &shard.tensors {
        let t = &plan[i];
        let end = offset + t.byte_len();
        map.insert(
            t.name.clone(),
            json!({
                "dtype": t.dtype.safetensors_name(),
                "shape": t.shape,
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    let mut text = serde_json::to_vec(&Value::Object(map))
        .map_err(|e| Error::InvalidOption(format!("cannot serialise a safetensors header: {e}")))?;
    while (8 + text.len()) % 8 != 0 {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    Ok(out)
}

/// Writes every shard of `plan` into `out` (and the index when sharded); returns the files.
pub fn write_shards(
    out: &Path,
    opts: &GenOptions,
    plan: &[TensorPlan],
    progress: &dyn Fn(u64, u64),
) -> Result<Vec<PathBuf>> {
    let shards = layout(plan, opts.shard_size);
    let total: u64 = plan.iter().map(|t| t.byte_len()).sum();
    let mut written = 0u64;
    progress(0, total);
    let mut files = Vec::with_capacity(shards.len());
    for shard in &shards {
        let path = out.join(&shard.name);
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut w = BufWriter::with_capacity(WRITE_BUFFER, file);
        let io = |e| Error::io(&path, e);
        w.write_all(&header(plan, shard)?).map_err(io)?;
        for &i in &shard.tensors {
            let t = &plan[i];
            let chunks = t.chunks();
            let mut c = 0;
            while c < chunks {
                let end = (c + CHUNKS_PER_GROUP).min(chunks);
                let group: Vec<Vec<u8>> =
                    (c..end).into_par_iter().map(|k| t.chunk_bytes(k)).collect();
                for bytes in &group {
                    w.write_all(bytes).map_err(io)?;
                    written += bytes.len() as u64;
                }
                progress(written, total);
                c = end;
            }
        }
        w.flush().map_err(io)?;
        files.push(path);
    }
    if shards.len() > 1 {
        let mut weight_map = Map::new();
        for shard in &shards {
            for &i in &shard.tensors {
                weight_map.insert(plan[i].name.clone(), Value::String(shard.name.clone()));
            }
        }
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        let path = out.join(INDEX_FILE);
        let text = serde_json::to_string_pretty(&index)
            .map_err(|e| Error::InvalidOption(format!("cannot serialise the index: {e}")))?;
        std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))?;
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("1.5 GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("123").unwrap(), 123);
        assert_eq!(parse_size("64kib").unwrap(), 65536);
        for bad in ["", "GiB", "-1GB", "4 parsecs", "0", "1e400"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
