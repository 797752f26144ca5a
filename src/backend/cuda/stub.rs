//! Stand-ins for the CUDA types in builds without the `cuda` feature (as candle's dummy CUDA
//! backend): the same names and signatures, constructors return
//! [`Error::NotCompiledWithCuda`], and no value of these types can exist.

use std::convert::Infallible;
use std::sync::Arc;

use memmap2::Mmap;

use super::options::TransferStats;
use super::options::{
    CudaInfo, ExpertLayout, Libraries, SlotExpert, TransferOptions, TransferPath,
};
use crate::backend::{Backend, ExpertWeights, WeightRef};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::ffn::FfnKind;

/// No library is usable in a build without CUDA support.
pub fn libraries() -> Libraries {
    Libraries::default()
}

/// Always [`Error::NotCompiledWithCuda`].
pub fn probe(_ordinal: usize) -> Result<CudaInfo> {
    Err(Error::NotCompiledWithCuda)
}

/// The CUDA backend (not compiled in).
#[derive(Debug, Clone)]
pub struct CudaBackend {
    never: Infallible,
}

impl CudaBackend {
    /// Always [`Error::NotCompiledWithCuda`].
    pub fn new(_ordinal: usize) -> Result<CudaBackend> {
        Err(Error::NotCompiledWithCuda)
    }

    /// Unreachable: no backend exists.
    pub fn info(&self) -> &CudaInfo {
        match self.never {}
    }

    /// Unreachable: no backend exists.
    pub fn synchronize(&self) -> Result<()> {
        match self.never {}
    }

    /// Unreachable: no backend exists.
    #[allow(clippy::too_many_arguments)]
    pub fn expert_ffn_slot(
        &self,
        _ffn: FfnKind,
        _slots: &DeviceSlots,
        _slot: usize,
        _layout: &ExpertLayout,
        _x: &[f32],
        _rows: usize,
        _out: &mut [f32],
    ) -> Result<()> {
        match self.never {}
    }

    /// Unreachable: no backend exists.
    #[allow(clippy::too_many_arguments)]
    pub fn combine(
        &self,
        _rows: &[f32],
        _slot_row: &[i32],
        _weights: &[f32],
        _tokens: usize,
        _k: usize,
        _hidden: usize,
        _out: &mut [f32],
    ) -> Result<()> {
        match self.never {}
    }

    /// Unreachable: no backend exists.
    #[allow(clippy::too_many_arguments)]
    pub fn moe_block_slots(
        &self,
        _ffn: FfnKind,
        _slots: &DeviceSlots,
        _x: &[f32],
        _hidden: usize,
        _expert_ids: &[i32],
        _weights: &[f32],
        _k: usize,
        _experts: &[SlotExpert<'_>],
        _out: &mut [f32],
    ) -> Result<()> {
        match self.never {}
    }

    /// Unreachable: no backend exists.
    pub fn gather_rows(
        &self,
        _src: &[f32],
        _cols: usize,
        _idx: &[i32],
        _out: &mut [f32],
    ) -> Result<()> {
        match self.never {}
    }

    /// Unreachable: no backend exists.
    pub fn softmax_topk(
        &self,
        _logits: &[f32],
        _experts: usize,
        _k: usize,
        _renormalize: bool,
        _ids: &mut [i32],
        _weights: &mut [f32],
    ) -> Result<()> {
        match self.never {}
    }

    /// Unreachable: no backend exists.
    #[allow(clippy::too_many_arguments)]
    pub fn grouped_sigmoid_topk(
        &self,
        _logits: &[f32],
        _bias: Option<&[f32]>,
        _experts: usize,
        _k: usize,
        _groups: (usize, usize),
        _renormalize: bool,
        _scale: f32,
        _ids: &mut [i32],
        _weights: &mut [f32],
    ) -> Result<()> {
        match self.never {}
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn linear(
        &self,
        _x: &[f32],
        _rows: usize,
        _w: WeightRef<'_>,
        _bias: Option<WeightRef<'_>>,
        _out: &mut [f32],
    ) -> Result<()> {
        match self.never {}
    }

    fn expert_ffn(
        &self,
        _ffn: FfnKind,
        _w: &ExpertWeights<'_>,
        _x: &[f32],
        _rows: usize,
        _out: &mut [f32],
    ) -> Result<()> {
        match self.never {}
    }
}

/// Expert slots in device memory (not compiled in).
#[derive(Debug, Clone)]
pub struct DeviceSlots {
    never: Infallible,
}

impl DeviceSlots {
    /// Always [`Error::NotCompiledWithCuda`].
    pub fn new(_backend: &CudaBackend, _slot_bytes: usize, _budget: u64) -> Result<DeviceSlots> {
        Err(Error::NotCompiledWithCuda)
    }

    /// Unreachable: no slots exist.
    pub fn num_slots(&self) -> usize {
        match self.never {}
    }

    /// Unreachable: no slots exist.
    pub fn slot_bytes(&self) -> usize {
        match self.never {}
    }

    /// Unreachable: no slots exist.
    pub fn total_bytes(&self) -> u64 {
        match self.never {}
    }

    /// Unreachable: no slots exist.
    pub fn download(&self, _slot: usize, _len: usize) -> Result<Vec<u8>> {
        match self.never {}
    }
}

/// Completion of an upload (not compiled in).
#[derive(Debug, Clone)]
pub struct Fence {
    never: Infallible,
}

impl Fence {
    /// Unreachable: no fence exists.
    pub fn wait(&self) -> Result<()> {
        match self.never {}
    }

    /// Unreachable: no fence exists.
    pub fn is_complete(&self) -> Result<bool> {
        match self.never {}
    }

    /// Unreachable: no fence exists.
    pub fn slot(&self) -> usize {
        match self.never {}
    }

    /// Unreachable: no fence exists.
    pub fn bytes(&self) -> u64 {
        match self.never {}
    }
}

/// Host→device copier (not compiled in).
#[derive(Debug)]
pub struct Uploader {
    never: Infallible,
}

impl Uploader {
    /// Always [`Error::NotCompiledWithCuda`].
    pub fn new(
        _slots: &DeviceSlots,
        _opts: TransferOptions,
        _mappings: Vec<Arc<Mmap>>,
    ) -> Result<Uploader> {
        Err(Error::NotCompiledWithCuda)
    }

    /// Always [`Error::NotCompiledWithCuda`].
    pub fn for_checkpoint(
        _slots: &DeviceSlots,
        _opts: TransferOptions,
        _ckpt: &Checkpoint,
    ) -> Result<Uploader> {
        Err(Error::NotCompiledWithCuda)
    }

    /// Unreachable: no uploader exists.
    pub fn path(&self) -> TransferPath {
        match self.never {}
    }

    /// Unreachable: no uploader exists.
    pub fn stats(&self) -> TransferStats {
        match self.never {}
    }

    /// Unreachable: no uploader exists.
    pub fn inject_failure(&self, _n: u64) {
        match self.never {}
    }

    /// Unreachable: no uploader exists.
    pub fn upload(&self, _src: &[&[u8]], _slot: usize) -> Result<Fence> {
        match self.never {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_say_not_compiled() {
        assert!(matches!(probe(0), Err(Error::NotCompiledWithCuda)));
        assert!(matches!(CudaBackend::new(0), Err(Error::NotCompiledWithCuda)));
        assert!(libraries().check().is_err());
        let msg = Error::NotCompiledWithCuda.to_string();
        assert!(msg.starts_with("this build has no CUDA support"), "{msg}");
    }
}
