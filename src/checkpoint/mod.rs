//! The checkpoint store: opens Hugging Face model folders (single or sharded safetensors) and
//! native moe-offload folders, maps every file read-only and hands out zero-copy tensor views.
//! It knows nothing of routing or devices.

mod mapped;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

pub use mapped::{MappedFile, TensorInfo};

use crate::dtype::DType;
use crate::error::{Error, Result};

/// Name of the single-file weights in a model folder.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the shard index in a sharded model folder.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of the config file.
pub const CONFIG_FILE: &str = "config.json";

/// A zero-copy view of one tensor inside a mapped file.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// Stored element type.
    pub dtype: &'a DType,
    /// Shape, outermost first.
    pub shape: &'a [usize],
    /// The tensor's bytes, straight from the mapping.
    pub bytes: &'a [u8],
}

impl TensorView<'_> {
    /// The tensor decoded to f32 (a copy; for small tensors such as router weights).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        if !self.dtype.is_float_weight() {
            return Err(Error::UnsupportedDtype {
                name: self.name.to_string(),
                found: self.dtype.to_string(),
                expected: "f32, bf16 or f16".into(),
            });
        }
        Ok(crate::dtype::to_f32_vec(self.dtype, self.bytes))
    }

    /// The tensor read as integers (i32 or i64 storage).
    pub fn to_i64(&self) -> Result<Vec<i64>> {
        crate::dtype::to_i64_vec(self.dtype, self.bytes).ok_or_else(|| Error::UnsupportedDtype {
            name: self.name.to_string(),
            found: self.dtype.to_string(),
            expected: "i32 or i64".into(),
        })
    }
}

/// An opened model folder: its config and every tensor of its safetensors files, mapped.
#[derive(Debug)]
pub struct Checkpoint {
    root: PathBuf,
    config: serde_json::Value,
    files: Vec<MappedFile>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl Checkpoint {
    /// Opens a model folder: `config.json` plus `model.safetensors`, or shards listed in
    /// `model.safetensors.index.json`. Nothing is read beyond headers: files are mapped.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let root = path.as_ref().to_path_buf();
        if !root.exists() {
            return Err(Error::NotFound(root));
        }
        if !root.is_dir() {
            return Err(Error::config(
                &root,
                "a model path must be a folder holding config.json and safetensors files",
            ));
        }
        let config = read_config(&root.join(CONFIG_FILE))?;
        let shard_names = shard_file_names(&root)?;
        let mut files = Vec::with_capacity(shard_names.len());
        let mut tensors = BTreeMap::new();
        for (i, name) in shard_names.iter().enumerate() {
            let (file, infos) = mapped::open_safetensors(&root.join(name), i)?;
            for (tname, info) in infos {
                if tensors.contains_key(&tname) {
                    return Err(Error::BadSafetensors {
                        path: file.path.clone(),
                        reason: format!("tensor {tname} appears in more than one shard"),
                    });
                }
                tensors.insert(tname, info);
            }
            files.push(file);
        }
        Ok(Checkpoint { root, config, files, tensors })
    }

    /// The folder this checkpoint was opened from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of `config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    /// The parsed `config.json`.
    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// The mapped files, indexed by [`TensorInfo::file`].
    pub fn files(&self) -> &[MappedFile] {
        &self.files
    }

    /// The mapping of file `index` (shared, so transfer workers can hold it).
    pub fn mmap(&self, index: usize) -> &Arc<Mmap> {
        &self.files[index].mmap
    }

    /// All tensors, by name.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// Whether a tensor exists.
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Where tensor `name` lies, or `MissingTensor`.
    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.get(name).ok_or_else(|| Error::MissingTensor { name: name.to_string() })
    }

    /// A zero-copy view of tensor `name`.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let (key, info) = self
            .tensors
            .get_key_value(name)
            .ok_or_else(|| Error::MissingTensor { name: name.to_string() })?;
        let mmap = &self.files[info.file].mmap;
        Ok(TensorView {
            name: key,
            dtype: &info.dtype,
            shape: &info.shape,
            bytes: &mmap[info.offset..info.offset + info.len],
        })
    }

    /// Checks that tensor `name` exists, is a float weight and has shape `expected`.
    pub fn expect_weight(&self, name: &str, expected: &[usize]) -> Result<&TensorInfo> {
        let info = self.info(name)?;
        if !info.dtype.is_float_weight() {
            return Err(Error::UnsupportedDtype {
                name: name.to_string(),
                found: info.dtype.to_string(),
                expected: "f32, bf16 or f16".into(),
            });
        }
        if info.shape != expected {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                expected: expected.to_vec(),
                found: info.shape.clone(),
            });
        }
        Ok(info)
    }
}

/// Reads and parses `config.json`.
pub fn read_config(path: &Path) -> Result<serde_json::Value> {
    if !path.exists() {
        return Err(Error::config(path, "config.json is missing from the model folder"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::config(path, format!("not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(Error::config(path, "config.json must hold a JSON object"));
    }
    Ok(value)
}

/// The safetensors files of a model folder, in a stable order.
fn shard_file_names(root: &Path) -> Result<Vec<String>> {
    let index = root.join(INDEX_FILE);
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::config(&index, format!("not valid JSON: {e}")))?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::config(&index, "missing \"weight_map\" object"))?;
        let mut names: Vec<String> = Vec::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| {
                Error::config(&index, format!("weight_map entry for {tensor} is not a string"))
            })?;
            if file.contains('/') || file.contains("..") {
                return Err(Error::config(
                    &index,
                    format!("shard name {file:?} leaves the folder"),
                ));
            }
            if !names.iter().any(|n| n == file) {
                names.push(file.to_string());
            }
        }
        names.sort();
        if names.is_empty() {
            return Err(Error::config(&index, "weight_map is empty"));
        }
        return Ok(names);
    }
    if root.join(SINGLE_FILE).exists() {
        return Ok(vec![SINGLE_FILE.to_string()]);
    }
    Err(Error::NotFound(root.join(SINGLE_FILE)))
}
