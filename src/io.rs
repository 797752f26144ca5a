//! Small safetensors writers for command outputs (block outputs, final hidden states).

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView as StView};

use crate::error::{Error, Result};

/// Writes named f32 tensors `(name, values, shape)` to a safetensors file.
pub fn write_f32_tensors(path: &Path, tensors: &[(&str, &[f32], &[usize])]) -> Result<()> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, values, shape) in tensors {
        let n: usize = shape.iter().product();
        if n != values.len() {
            return Err(Error::input(format!(
                "tensor {name}: {} values do not fill shape {shape:?}",
                values.len()
            )));
        }
        let view = StView::new(Dtype::F32, shape.to_vec(), bytemuck::cast_slice(values))
            .map_err(|e| Error::input(format!("tensor {name}: {e}")))?;
        views.push((name.to_string(), view));
    }
    safetensors::serialize_to_file(views, None::<HashMap<String, String>>, path)
        .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))
}
