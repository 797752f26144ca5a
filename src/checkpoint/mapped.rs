//! One memory-mapped safetensors file: the mapping and its validated header.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::dtype::DType;
use crate::error::{Error, Result};

/// Where a tensor's bytes lie in a mapped file, and what they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Index of the file in [`super::Checkpoint::files`].
    pub file: usize,
    /// Stored element type.
    pub dtype: DType,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Byte offset of the first element from the start of the file.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A read-only memory map of a safetensors file.
#[derive(Debug)]
pub struct MappedFile {
    /// Path of the file.
    pub path: PathBuf,
    /// The mapping, shared with whoever holds views into it.
    pub mmap: Arc<Mmap>,
}

/// Maps `path` read-only.
///
/// # Safety
/// A memory map is only sound while nobody truncates or rewrites the file: if another process
/// shortens it while mapped, touching the lost pages raises SIGBUS. Checkpoints are treated as
/// immutable for the lifetime of the process, as every mmap-based loader does.
unsafe fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: see the function's contract above; the file is opened read-only.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// Maps `path` and parses its safetensors header into `(name, info)` pairs tagged with
/// `file_index`. Validation (header length, JSON, offsets inside the file, byte lengths
/// matching shapes) is done by the `safetensors` crate; its errors name the file here.
pub fn open_safetensors(
    path: &Path,
    file_index: usize,
) -> Result<(MappedFile, BTreeMap<String, TensorInfo>)> {
    if !path.exists() {
        return Err(Error::NotFound(path.to_path_buf()));
    }
    // SAFETY: checkpoints are immutable while mapped (see `map_file`).
    let mmap = unsafe { map_file(path)? };
    let bad = |reason: String| Error::BadSafetensors { path: path.to_path_buf(), reason };
    if mmap.len() < 8 {
        return Err(bad(format!(
            "file is {} bytes, shorter than the 8-byte header length",
            mmap.len()
        )));
    }
    let (header_len, metadata) =
        safetensors::SafeTensors::read_metadata(&mmap[..]).map_err(|e| match e {
            // The crate's own message ("file not fully covered") does not say which way.
            safetensors::SafeTensorError::MetadataIncompleteBuffer => {
                bad(describe_length_mismatch(&mmap))
            }
            e => bad(e.to_string()),
        })?;
    let data_start = 8 + header_len;
    let mut tensors = BTreeMap::new();
    for (name, info) in metadata.tensors() {
        let (begin, end) = info.data_offsets;
        let dtype = DType::from_safetensors_name(&format!("{:?}", info.dtype));
        let ti = TensorInfo {
            file: file_index,
            dtype,
            shape: info.shape.clone(),
            offset: data_start + begin,
            len: end - begin,
        };
        if ti.offset + ti.len > mmap.len() {
            return Err(bad(format!("tensor {name} ends past the end of the file (truncated?)")));
        }
        tensors.insert(name, ti);
    }
    Ok((MappedFile { path: path.to_path_buf(), mmap: Arc::new(mmap) }, tensors))
}

/// Why a file's length disagrees with its (otherwise valid) header: the last tensor ends past
/// the end of the file (truncated), or bytes follow the last tensor.
fn describe_length_mismatch(bytes: &[u8]) -> String {
    let file_len = bytes.len();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8])) as usize;
    let data_start = 8usize.saturating_add(header_len);
    let last = bytes
        .get(8..data_start)
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(h).ok())
        .and_then(|v| {
            v.as_object()?
                .iter()
                .filter_map(|(name, t)| {
                    let end = t.get("data_offsets")?.get(1)?.as_u64()? as usize;
                    Some((end, name.clone()))
                })
                .max()
        });
    match last {
        Some((end, name)) if data_start + end > file_len => format!(
            "tensor {name} ends at byte {} but the file has only {file_len} bytes (truncated?)",
            data_start + end
        ),
        Some((end, _)) => format!(
            "{} bytes follow the last tensor (the header describes {} bytes, the file has {file_len})",
            file_len - data_start - end,
            data_start + end
        ),
        None => "the header's offsets do not match the file length".to_string(),
    }
}
