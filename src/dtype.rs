//! Element types of stored tensors and their conversion to f32, the compute precision on the CPU.

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

/// The element type of a tensor as stored in a checkpoint.
///
/// Weights may be `F32`, `BF16` or `F16`; integer types appear for token maps and inputs.
/// Anything else is kept as `Other` so that a checkpoint holding, say, `F64` buffers in
/// non-MoE tensors still opens; using such a tensor as a weight is an error.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// IEEE float32.
    F32,
    /// bfloat16.
    BF16,
    /// IEEE float16.
    F16,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
    /// Any other safetensors dtype, by its safetensors name.
    Other(String),
}

impl DType {
    /// Bytes per element (0 for unknown types).
    pub fn size(&self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::I64 => 8,
            DType::Other(_) => 0,
        }
    }

    /// Whether this dtype can hold weights (f32, bf16, f16).
    pub fn is_float_weight(&self) -> bool {
        matches!(self, DType::F32 | DType::BF16 | DType::F16)
    }

    /// The safetensors name of the dtype (`F32`, `BF16`, …).
    pub fn safetensors_name(&self) -> &str {
        match self {
            DType::F32 => "F32",
            DType::BF16 => "BF16",
            DType::F16 => "F16",
            DType::I32 => "I32",
            DType::I64 => "I64",
            DType::Other(s) => s,
        }
    }

    /// Parses a safetensors dtype name.
    pub fn from_safetensors_name(s: &str) -> DType {
        match s {
            "F32" => DType::F32,
            "BF16" => DType::BF16,
            "F16" => DType::F16,
            "I32" => DType::I32,
            "I64" => DType::I64,
            other => DType::Other(other.to_string()),
        }
    }

    /// Parses a user-facing name (`f32`, `bf16`, `f16`, also `float32`, `bfloat16`, `float16`).
    pub fn parse_weight(s: &str) -> Option<DType> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "float" => Some(DType::F32),
            "bf16" | "bfloat16" => Some(DType::BF16),
            "f16" | "float16" | "half" => Some(DType::F16),
            _ => None,
        }
    }

    /// The conventional lower-case name (`f32`, `bf16`, `f16`, `i32`, `i64`).
    pub fn name(&self) -> String {
        self.safetensors_name().to_ascii_lowercase()
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// Decodes `out.len()` elements of float `dtype` from little-endian `bytes` into f32.
///
/// Works on any alignment: safetensors aligns a tensor only to its own element size, and
/// slots may hand out byte slices, so elements are read with `from_le_bytes`.
///
/// # Panics
/// If `dtype` is not a float weight type or `bytes` is shorter than `out` needs; callers
/// validate both when the model spec is built.
pub fn decode_f32(dtype: &DType, bytes: &[u8], out: &mut [f32]) {
    let n = out.len();
    match dtype {
        DType::F32 => {
            let src = &bytes[..out.len() * 4];
            match bytemuck::try_cast_slice::<u8, f32>(src) {
                Ok(s) => out.copy_from_slice(s),
                Err(_) => {
                    for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    }
                }
            }
        }
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes[..n * 2].chunks_exact(2)) {
                *o = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes[..n * 2].chunks_exact(2)) {
                *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        other => panic!("decode_f32 called on non-float dtype {other}"),
    }
}

/// Decodes a whole float tensor into a new `Vec<f32>`.
pub fn to_f32_vec(dtype: &DType, bytes: &[u8]) -> Vec<f32> {
    let n = if dtype.size() == 0 { 0 } else { bytes.len() / dtype.size() };
    let mut out = vec![0.0f32; n];
    decode_f32(dtype, bytes, &mut out);
    out
}

/// Encodes f32 values into little-endian bytes of float `dtype` (round to nearest even).
pub fn encode_from_f32(dtype: &DType, values: &[f32]) -> Vec<u8> {
    match dtype {
        DType::F32 => bytemuck::cast_slice(values).to_vec(),
        DType::BF16 => {
            values.iter().flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes()).collect()
        }
        DType::F16 => {
            values.iter().flat_map(|v| f16::from_f32(*v).to_bits().to_le_bytes()).collect()
        }
        other => panic!("encode_from_f32 called on non-float dtype {other}"),
    }
}

/// Reads an integer tensor (i32 or i64) as i64 values; `None` for other dtypes.
pub fn to_i64_vec(dtype: &DType, bytes: &[u8]) -> Option<Vec<i64>> {
    match dtype {
        DType::I32 => Some(
            bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
        ),
        DType::I64 => Some(
            bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_each_float_dtype() {
        let v = [0.0f32, 1.0, -2.5, 1e-3, 65504.0];
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let bytes = encode_from_f32(&dt, &v);
            assert_eq!(bytes.len(), v.len() * dt.size());
            let back = to_f32_vec(&dt, &bytes);
            for (a, b) in v.iter().zip(&back) {
                // bf16 keeps 8 bits of mantissa: relative error ≤ 2^-8.
                assert!((a - b).abs() <= a.abs() * 4e-3, "{dt}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn decode_unaligned_f32() {
        let v = [1.5f32, -3.25];
        let mut buf = vec![0u8];
        buf.extend_from_slice(bytemuck::cast_slice(&v));
        let mut out = [0f32; 2];
        decode_f32(&DType::F32, &buf[1..], &mut out);
        assert_eq!(out, v);
    }

    #[test]
    fn names_parse() {
        assert_eq!(DType::parse_weight("bfloat16"), Some(DType::BF16));
        assert_eq!(DType::from_safetensors_name("F64"), DType::Other("F64".into()));
        assert_eq!(to_i64_vec(&DType::I32, &7i32.to_le_bytes()), Some(vec![7]));
    }
}
