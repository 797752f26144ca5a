//! [`CudaBackend`]: expert FFNs with cuBLAS (f32 accumulation; f32 weights in true f32, no
//! TF32) and the NVRTC kernels, on one compute stream. Host-slice entry points (the
//! [`Backend`] trait) upload, compute and download; [`CudaBackend::expert_ffn_slot`] reads the
//! weights from a device slot after waiting (on the GPU) for the slot's copy.

use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::cublas::result::gemm_ex;
use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasMath_t, cublasOperation_t, cublasSetMathMode,
    cudaDataType_t,
};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DeviceRepr, PushKernelArg};
use parking_lot::Mutex;

use super::device::{Gpu, drv};
use super::kernels::{Kernels, act_code, elementwise};
use super::options::{CudaInfo, ExpertLayout};
use super::slots::DeviceSlots;
use crate::backend::{Backend, ExpertWeights, WeightRef};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ffn::FfnKind;

/// The CUDA compute backend of one device. Cheap to clone (shared handles); calls are
/// serialised on the device's compute stream.
#[derive(Clone)]
pub struct CudaBackend {
    pub(crate) gpu: Arc<Gpu>,
    pub(super) kernels: Arc<Kernels>,
    pub(super) blas: Arc<Mutex<CudaBlas>>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend").field("device", &self.gpu.info.name).finish()
    }
}

pub(super) fn u32c(x: usize, what: &str) -> Result<u32> {
    u32::try_from(x).map_err(|_| Error::input(format!("{what} = {x} is too large for CUDA")))
}

fn i32c(x: usize, what: &str) -> Result<i32> {
    i32::try_from(x).map_err(|_| Error::input(format!("{what} = {x} is too large for cuBLAS")))
}

/// The device address of a slice (event tracking is off, so this records nothing).
pub(crate) fn dptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (p, _sync) = s.device_ptr(stream);
    p
}

fn data_type(dtype: &DType) -> Result<cudaDataType_t> {
    match dtype {
        DType::F32 => Ok(cudaDataType_t::CUDA_R_32F),
        DType::BF16 => Ok(cudaDataType_t::CUDA_R_16BF),
        DType::F16 => Ok(cudaDataType_t::CUDA_R_16F),
        other => Err(Error::input(format!("no GEMM for weights of dtype {other}"))),
    }
}

impl CudaBackend {
    /// Opens device `ordinal`: checks the libraries, creates the streams and the cuBLAS handle,
    /// and compiles the kernels (once per process and device).
    pub fn new(ordinal: usize) -> Result<CudaBackend> {
        let gpu = Gpu::open(ordinal)?;
        let kernels = Kernels::for_device(&gpu.ctx)?;
        let blas = CudaBlas::new(gpu.compute.clone())
            .map_err(|e| Error::Cuda(format!("creating the cuBLAS handle: {e}")))?;
        // SAFETY: the handle is valid (just created). DEFAULT_MATH keeps f32 GEMMs in true f32:
        // TF32 tensor cores are only used with TF32_TENSOR_OP_MATH or a *_FAST_TF32 compute
        // type, neither of which we use, so f32 checkpoints keep the 1e-4 conformance.
        unsafe { cublasSetMathMode(*blas.handle(), cublasMath_t::CUBLAS_DEFAULT_MATH) }
            .result()
            .map_err(|e| Error::Cuda(format!("setting the cuBLAS math mode: {e}")))?;
        Ok(CudaBackend { gpu, kernels, blas: Arc::new(Mutex::new(blas)) })
    }

    /// What discovery found about the device.
    pub fn info(&self) -> &CudaInfo {
        &self.gpu.info
    }

    /// Waits for the compute and copy streams (tests and benchmarks only; never on the hot path).
    pub fn synchronize(&self) -> Result<()> {
        self.gpu.compute.synchronize().map_err(|e| drv("synchronising the compute stream", e))?;
        self.gpu.copy.synchronize().map_err(|e| drv("synchronising the copy stream", e))?;
        self.gpu.check()
    }

    pub(super) fn stream(&self) -> &Arc<CudaStream> {
        &self.gpu.compute
    }

    pub(super) fn alloc<T: DeviceRepr>(&self, n: usize) -> Result<CudaSlice<T>> {
        // SAFETY: every buffer from here is fully written (an upload, a GEMM with beta = 0 or
        // an elementwise kernel over all of it) before it is read.
        unsafe { self.stream().alloc::<T>(n.max(1)) }
            .map_err(|e| drv("allocating device memory", e))
    }

    pub(super) fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        if host.is_empty() {
            return self.alloc(1);
        }
        self.stream().clone_htod(host).map_err(|e| drv("copying inputs to the device", e))
    }

    pub(super) fn download<T: DeviceRepr>(&self, dev: &CudaSlice<T>, out: &mut [T]) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let view = dev.slice(..out.len());
        self.stream().memcpy_dtoh(&view, out).map_err(|e| drv("copying results to the host", e))?;
        self.stream().synchronize().map_err(|e| drv("waiting for the compute stream", e))?;
        self.gpu.check()
    }

    /// `y[rows × n] = x[rows × k] · Wᵀ` in f32 accumulation, `W [n × k]` of `dtype` at `w`,
    /// `x` already in `dtype` (f32 for f32 weights) at `x`, `y` f32.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        blas: &CudaBlas,
        dtype: &DType,
        w: u64,
        x: u64,
        y: u64,
        rows: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        let ty = data_type(dtype)?;
        let (m, nn, kk) = (i32c(n, "out features")?, i32c(rows, "rows")?, i32c(k, "in features")?);
        let (alpha, beta) = (1.0f32, 0.0f32);
        // Row-major y = x·Wᵀ is column-major yᵀ = W·xᵀ: A = W seen as k×n column-major, used
        // transposed (lda = k); B = x as k×rows (ldb = k); C = y as n×rows (ldc = n).
        // SAFETY: the pointers address device buffers of at least n·k (W), rows·k (x) and
        // rows·n (y) elements of the stated types, checked by the callers; the handle runs on
        // the compute stream where those buffers were written.
        unsafe {
            gemm_ex(
                *blas.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                m,
                nn,
                kk,
                (&alpha) as *const f32 as *const _,
                w as *const _,
                ty,
                kk,
                x as *const _,
                ty,
                kk,
                (&beta) as *const f32 as *const _,
                y as *mut _,
                cudaDataType_t::CUDA_R_32F,
                m,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| Error::Cuda(format!("cuBLAS GEMM ({rows}×{k} · {n}×{k}ᵀ, {dtype}): {e}")))
    }

    /// `x` (f32) as the B operand of a `dtype` GEMM: itself for f32, else a converted copy.
    fn gemm_input(&self, x: &CudaSlice<f32>, n: usize, dtype: &DType) -> Result<GemmInput> {
        if *dtype == DType::F32 {
            return Ok(GemmInput { ptr: dptr(x, self.stream()), _owned: None });
        }
        let half = self.alloc::<u16>(n)?;
        let (src, dst, nn) = (dptr(x, self.stream()), dptr(&half, self.stream()), n as u64);
        let f = self.kernels.for_dtype("cast", dtype)?;
        let mut b = self.stream().launch_builder(f);
        b.arg(&src).arg(&dst).arg(&nn);
        // SAFETY: `x` holds n f32 and `half` n u16; cast_{bf16,f16}(const float*, u16*, n).
        unsafe { b.launch(elementwise(n)) }.map_err(|e| drv("launching cast", e))?;
        Ok(GemmInput { ptr: dst, _owned: Some(half) })
    }

    /// The expert FFN on device data: weights packed per `layout` at `base`, `x` f32
    /// `[rows × hidden]`; returns f32 `[rows × hidden]`.
    pub(super) fn ffn_device(
        &self,
        blas: &CudaBlas,
        ffn: FfnKind,
        layout: &ExpertLayout,
        base: u64,
        x: &CudaSlice<f32>,
        rows: usize,
    ) -> Result<CudaSlice<f32>> {
        let (dt, hidden, f) = (&layout.dtype, layout.hidden, layout.ffn_dim);
        let at = |t: super::options::TensorSlot| base + t.offset as u64;
        let xin = self.gemm_input(x, rows * hidden, dt)?;
        let u = self.alloc::<f32>(rows * f)?;
        self.gemm(blas, dt, at(layout.up), xin.ptr, dptr(&u, self.stream()), rows, f, hidden)?;
        // `h` is in the weight dtype (it is the down GEMM's B operand): u16 bits or f32.
        let h = self.alloc::<u8>(rows * f * dt.size())?;
        let up_bias = layout.up_bias.map_or(0, at);
        let (r32, c32) = (u32c(rows, "rows")?, u32c(f, "ffn width")?);
        let (u_ptr, h_ptr) = (dptr(&u, self.stream()), dptr(&h, self.stream()));
        match ffn {
            FfnKind::Glu(act) => {
                let gate = layout.gate.ok_or_else(|| {
                    Error::input("a GLU expert needs a gate projection".to_string())
                })?;
                let g = self.alloc::<f32>(rows * f)?;
                let g_ptr = dptr(&g, self.stream());
                self.gemm(blas, dt, at(gate), xin.ptr, g_ptr, rows, f, hidden)?;
                let kind = act_code(act);
                let k = self.kernels.for_dtype("glu", dt)?;
                let mut b = self.stream().launch_builder(k);
                b.arg(&g_ptr).arg(&u_ptr).arg(&up_bias).arg(&h_ptr).arg(&r32).arg(&c32).arg(&kind);
                // SAFETY: g, u hold rows·f f32; h rows·f elements of dt; the bias (or null)
                // f elements of dt; glu_{dt}(g, u, bias, out, rows, cols, kind).
                unsafe { b.launch(elementwise(rows * f)) }.map_err(|e| drv("launching glu", e))?;
            }
            FfnKind::Plain(act) => {
                let kind = act_code(act);
                let k = self.kernels.for_dtype("bias_act", dt)?;
                let mut b = self.stream().launch_builder(k);
                b.arg(&u_ptr).arg(&up_bias).arg(&h_ptr).arg(&r32).arg(&c32).arg(&kind);
                // SAFETY: u holds rows·f f32, h rows·f of dt, the bias (or null) f of dt.
                unsafe { b.launch(elementwise(rows * f)) }
                    .map_err(|e| drv("launching bias_act", e))?;
            }
        }
        let y = self.alloc::<f32>(rows * hidden)?;
        let y_ptr = dptr(&y, self.stream());
        self.gemm(blas, dt, at(layout.down), h_ptr, y_ptr, rows, hidden, f)?;
        if let Some(bias) = layout.down_bias {
            self.add_bias(dt, y_ptr, at(bias), rows, hidden)?;
        }
        Ok(y)
    }

    fn add_bias(&self, dt: &DType, y: u64, bias: u64, rows: usize, cols: usize) -> Result<()> {
        let (r32, c32) = (u32c(rows, "rows")?, u32c(cols, "columns")?);
        let k = self.kernels.for_dtype("add_bias", dt)?;
        let mut b = self.stream().launch_builder(k);
        b.arg(&y).arg(&bias).arg(&r32).arg(&c32);
        // SAFETY: y holds rows·cols f32 and bias cols elements of dt.
        unsafe { b.launch(elementwise(rows * cols)) }.map_err(|e| drv("launching add_bias", e))?;
        Ok(())
    }

    /// `out[rows × hidden] = FFN(x)` with the expert's weights read from `slot` of `slots`
    /// (written there by an [`super::Uploader`] in `layout`'s packed order). The compute
    /// stream waits on the slot's copy event; the slot is marked released after the read.
    #[allow(clippy::too_many_arguments)]
    pub fn expert_ffn_slot(
        &self,
        ffn: FfnKind,
        slots: &DeviceSlots,
        slot: usize,
        layout: &ExpertLayout,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
    ) -> Result<()> {
        if layout.total_bytes > slots.slot_bytes() {
            return Err(Error::input(format!(
                "expert of {} bytes does not fit a slot of {} bytes",
                layout.total_bytes,
                slots.slot_bytes()
            )));
        }
        check_rows(x, out, rows, layout.hidden)?;
        if rows == 0 {
            return Ok(());
        }
        let blas = self.blas.lock();
        let xd = self.upload(x)?;
        let base = slots.acquire_for_compute(slot, self.stream())?;
        let y = self.ffn_device(&blas, ffn, layout, base, &xd, rows);
        // Release even on error so a later upload into the slot is not blocked forever.
        let released = slots.release_after_compute(slot, self.stream());
        let y = y?;
        released?;
        self.download(&y, out)
    }

    /// Packs host weights into one device buffer in `layout` order (the slot layout).
    fn upload_expert(&self, w: &ExpertWeights<'_>) -> Result<(ExpertLayout, CudaSlice<u8>)> {
        let layout = layout_of(w)?;
        let mut buf = self.alloc::<u8>(layout.total_bytes)?;
        let parts = [
            (w.gate, layout.gate),
            (Some(w.up), Some(layout.up)),
            (Some(w.down), Some(layout.down)),
            (w.up_bias, layout.up_bias),
            (w.down_bias, layout.down_bias),
        ];
        for (src, dst) in parts {
            if let (Some(src), Some(dst)) = (src, dst) {
                let mut view = buf.slice_mut(dst.offset..dst.offset + src.bytes.len());
                self.stream()
                    .memcpy_htod(src.bytes, &mut view)
                    .map_err(|e| drv("copying weights to the device", e))?;
            }
        }
        Ok((layout, buf))
    }
}

/// Keeps a converted GEMM input alive while its pointer is in use.
struct GemmInput {
    ptr: u64,
    _owned: Option<CudaSlice<u16>>,
}

fn check_rows(x: &[f32], out: &[f32], rows: usize, cols: usize) -> Result<()> {
    if x.len() != rows * cols || out.len() != rows * cols {
        return Err(Error::input(format!(
            "expected {rows}×{cols} input and output, got {} and {} values",
            x.len(),
            out.len()
        )));
    }
    Ok(())
}

fn check_weight(w: &WeightRef<'_>, what: &str, rows: usize, cols: usize, dt: &DType) -> Result<()> {
    if w.dtype != dt || w.rows != rows || w.cols != cols || w.bytes.len() != rows * cols * dt.size()
    {
        return Err(Error::input(format!(
            "{what}: expected [{rows}, {cols}] {dt} ({} bytes), got [{}, {}] {} ({} bytes)",
            rows * cols * dt.size(),
            w.rows,
            w.cols,
            w.dtype,
            w.bytes.len()
        )));
    }
    Ok(())
}

/// The packed layout of host expert weights, checking shapes, dtypes and byte lengths.
fn layout_of(w: &ExpertWeights<'_>) -> Result<ExpertLayout> {
    let dt = w.up.dtype;
    let (f, h) = (w.up.rows, w.up.cols);
    check_weight(&w.up, "up", f, h, dt)?;
    check_weight(&w.down, "down", h, f, dt)?;
    if let Some(g) = &w.gate {
        check_weight(g, "gate", f, h, dt)?;
    }
    if let Some(b) = &w.up_bias {
        check_weight(b, "up bias", 1, f, dt)?;
    }
    if let Some(b) = &w.down_bias {
        check_weight(b, "down bias", 1, h, dt)?;
    }
    ExpertLayout::packed(
        dt.clone(),
        h,
        f,
        w.gate.is_some(),
        w.up_bias.is_some(),
        w.down_bias.is_some(),
    )
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn linear(
        &self,
        x: &[f32],
        rows: usize,
        w: WeightRef<'_>,
        bias: Option<WeightRef<'_>>,
        out: &mut [f32],
    ) -> Result<()> {
        let dt = w.dtype;
        check_weight(&w, "weight", w.rows, w.cols, dt)?;
        if let Some(b) = &bias {
            check_weight(b, "bias", 1, w.rows, dt)?;
        }
        if x.len() != rows * w.cols || out.len() != rows * w.rows {
            return Err(Error::input(format!(
                "linear: expected {rows}×{} input and {rows}×{} output",
                w.cols, w.rows
            )));
        }
        if out.is_empty() {
            return Ok(());
        }
        let blas = self.blas.lock();
        let (xd, wd) = (self.upload(x)?, self.upload(w.bytes)?);
        let xin = self.gemm_input(&xd, x.len(), dt)?;
        let y = self.alloc::<f32>(out.len())?;
        let (s, y_ptr) = (self.stream(), dptr(&y, self.stream()));
        self.gemm(&blas, dt, dptr(&wd, s), xin.ptr, y_ptr, rows, w.rows, w.cols)?;
        let bd = bias.map(|b| self.upload(b.bytes)).transpose()?;
        if let Some(bd) = &bd {
            self.add_bias(dt, y_ptr, dptr(bd, s), rows, w.rows)?;
        }
        self.download(&y, out)
    }

    fn expert_ffn(
        &self,
        ffn: FfnKind,
        w: &ExpertWeights<'_>,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
    ) -> Result<()> {
        check_rows(x, out, rows, w.up.cols)?;
        if rows == 0 {
            return Ok(());
        }
        let blas = self.blas.lock();
        let (layout, buf) = self.upload_expert(w)?;
        let xd = self.upload(x)?;
        let y = self.ffn_device(&blas, ffn, &layout, dptr(&buf, self.stream()), &xd, rows)?;
        self.download(&y, out)
    }
}
