//! Helpers shared by the integration tests: the CLI binary, golden cases, an independent
//! safetensors header reader, and rewriting a model's tensors to build bad checkpoints.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use safetensors::tensor::{Dtype, TensorView};
use serde_json::Value;

/// The golden cases under `tests/golden/`.
pub fn golden_cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/golden exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.join("config.json").exists())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no golden cases found in {}", root.display());
    cases
}

/// Runs the `moe-offload` binary.
pub fn cli(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_moe-offload"))
        .args(args)
        .output()
        .expect("the moe-offload binary runs")
}

/// Runs `inspect --json` and parses its output; panics with stderr on failure.
pub fn inspect_json(model: &Path) -> Value {
    let out = cli(&["inspect", "--model", path_str(model), "--json"]);
    assert!(out.status.success(), "inspect failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("inspect --json prints JSON")
}

/// A path as `&str` (test paths are UTF-8).
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// One entry of a safetensors header, read without the library under test.
#[derive(Debug, Clone)]
pub struct HeaderEntry {
    /// `F32`, `BF16`, …
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Byte length (end − begin of `data_offsets`).
    pub len: u64,
}

/// Reads a safetensors header by hand: 8-byte little-endian length, then JSON.
pub fn read_header(path: &Path) -> BTreeMap<String, HeaderEntry> {
    let bytes = std::fs::read(path).expect("readable safetensors file");
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let json: Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header JSON");
    let mut out = BTreeMap::new();
    for (name, v) in json.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let off: Vec<u64> =
            v["data_offsets"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
        out.insert(
            name.clone(),
            HeaderEntry {
                dtype: v["dtype"].as_str().unwrap().to_string(),
                shape: v["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as usize)
                    .collect(),
                len: off[1] - off[0],
            },
        );
    }
    out
}

/// All header entries of a model folder (single file or every shard).
pub fn model_header(dir: &Path) -> BTreeMap<String, HeaderEntry> {
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "safetensors")
            && p.file_name().unwrap().to_str().unwrap().starts_with("model")
        {
            all.extend(read_header(&p));
        }
    }
    all
}

/// Copies a model folder's files (not subfolders) into `dst`.
pub fn copy_model(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
        }
    }
}

/// An owned tensor for rewriting.
#[derive(Debug, Clone)]
pub struct Tensor {
    /// Dtype.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Raw little-endian bytes.
    pub data: Vec<u8>,
}

/// Reads every tensor of a single safetensors file (small test models only).
pub fn load_tensors(path: &Path) -> BTreeMap<String, Tensor> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            (n, Tensor { dtype: v.dtype(), shape: v.shape().to_vec(), data: v.data().to_vec() })
        })
        .collect()
}

/// Writes tensors as one safetensors file.
pub fn save_tensors(path: &Path, tensors: &BTreeMap<String, Tensor>) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap()))
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Reads and parses a folder's `config.json`.
pub fn read_config(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

/// Writes a folder's `config.json`.
pub fn write_config(dir: &Path, cfg: &Value) {
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(cfg).unwrap()).unwrap();
}

/// Splits a single-file model in `dir` into `n` shards + index (removing `model.safetensors`).
pub fn shard_model(dir: &Path, n: usize) {
    let single = dir.join("model.safetensors");
    let tensors = load_tensors(&single);
    let names: Vec<&String> = tensors.keys().collect();
    let per = names.len().div_ceil(n);
    let mut weight_map = serde_json::Map::new();
    for (k, chunk) in names.chunks(per).enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", k + 1, n);
        let part: BTreeMap<String, Tensor> =
            chunk.iter().map(|name| ((*name).clone(), tensors[*name].clone())).collect();
        save_tensors(&dir.join(&file), &part);
        for name in chunk {
            weight_map.insert((*name).clone(), Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::remove_file(single).unwrap();
}
