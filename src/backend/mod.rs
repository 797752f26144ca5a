//! Compute backends: the few operations an MoE block needs (gate GEMM, expert FFN), behind one
//! small trait. Gathering rows and the weighted combine are host-side in [`crate::block`]. The CPU
//! backend is always present; the CUDA one lives behind the `cuda` feature.

pub mod cpu;
pub mod cuda;

use crate::dtype::DType;
use crate::error::Result;
use crate::ffn::FfnKind;

/// A weight matrix `[rows, cols]` (`nn.Linear` layout: `[out, in]`) or a bias vector
/// (`rows = 1`), as raw little-endian bytes wherever they live (a mapped file or a slot).
#[derive(Debug, Clone, Copy)]
pub struct WeightRef<'a> {
    /// Element type.
    pub dtype: &'a DType,
    /// Output features (1 for a bias).
    pub rows: usize,
    /// Input features (the bias length for a bias).
    pub cols: usize,
    /// `rows × cols × dtype.size()` bytes.
    pub bytes: &'a [u8],
}

/// The weights of one expert, borrowed from wherever they are resident.
#[derive(Debug, Clone, Copy)]
pub struct ExpertWeights<'a> {
    /// Gate projection `[ffn, hidden]` (GLU forms).
    pub gate: Option<WeightRef<'a>>,
    /// Up projection `[ffn, hidden]`.
    pub up: WeightRef<'a>,
    /// Down projection `[hidden, ffn]`.
    pub down: WeightRef<'a>,
    /// Bias of up, `[ffn]`.
    pub up_bias: Option<WeightRef<'a>>,
    /// Bias of down, `[hidden]`.
    pub down_bias: Option<WeightRef<'a>>,
}

/// What a compute backend provides.
pub trait Backend: Send + Sync {
    /// Short name (`cpu`, `cuda`).
    fn name(&self) -> &'static str;

    /// `out[rows × w.rows] = x[rows × w.cols] · wᵀ (+ bias)`, accumulated in f32.
    fn linear(
        &self,
        x: &[f32],
        rows: usize,
        w: WeightRef<'_>,
        bias: Option<WeightRef<'_>>,
        out: &mut [f32],
    ) -> Result<()>;

    /// `out[rows × hidden] = FFN(x[rows × hidden])` for one expert.
    fn expert_ffn(
        &self,
        ffn: FfnKind,
        w: &ExpertWeights<'_>,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
    ) -> Result<()>;
}

/// Where compute runs: `cpu`, `cuda` (device 0) or `cuda:N`. The CUDA variant exists in every
/// build (candle-style); without the `cuda` feature, constructing its backend returns
/// [`crate::Error::NotCompiledWithCuda`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// The host CPU.
    #[default]
    Cpu,
    /// A CUDA device by ordinal.
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Device> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => lower
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(Device::Cuda)
                .ok_or_else(|| {
                    crate::Error::InvalidOption(format!(
                        "unknown device {s:?} (expected cpu, cuda or cuda:N)"
                    ))
                }),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}
