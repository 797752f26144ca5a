//! Compute backends: the few operations an MoE block needs (gate GEMM, expert FFN), behind one
//! small trait. Gathering rows and the weighted combine are host-side in [`crate::block`]. The CPU
//! backend is always present; the CUDA one lives behind the `cuda` feature.

pub mod cpu;

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
