//! Safetensors output for commands (block outputs, final hidden states): owned tensors written
//! with the `safetensors` crate.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use safetensors::Dtype;

use crate::error::{Error, Result};

/// An owned little-endian tensor to write.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl OwnedTensor {
    /// An f32 tensor; `values` must fill `shape`.
    pub fn f32(shape: Vec<usize>, values: &[f32]) -> Result<OwnedTensor> {
        check_len(&shape, values.len())?;
        Ok(OwnedTensor { dtype: Dtype::F32, shape, data: bytemuck::cast_slice(values).to_vec() })
    }

    /// An i32 tensor; `values` must fill `shape`.
    pub fn i32(shape: Vec<usize>, values: &[i32]) -> Result<OwnedTensor> {
        check_len(&shape, values.len())?;
        Ok(OwnedTensor { dtype: Dtype::I32, shape, data: bytemuck::cast_slice(values).to_vec() })
    }
}

fn check_len(shape: &[usize], len: usize) -> Result<()> {
    let n: usize = shape.iter().product();
    if n != len {
        return Err(Error::input(format!("{len} values do not fill shape {shape:?}")));
    }
    Ok(())
}

impl safetensors::View for OwnedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes named tensors to a safetensors file (written to a temporary file, then renamed).
pub fn write_tensors(path: &Path, tensors: Vec<(String, OwnedTensor)>) -> Result<()> {
    safetensors::serialize_to_file(tensors, None::<HashMap<String, String>>, path)
        .map_err(|e| Error::io(path, std::io::Error::other(format!("cannot write: {e}"))))
}
