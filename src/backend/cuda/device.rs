//! Device discovery and the per-backend GPU handle (context, compute and copy streams).
//!
//! cudarc loads libcuda/libcublas/libnvrtc lazily and *panics* when one is missing, so every
//! entry point first checks [`libraries`] and turns absence into an error naming what is
//! missing, with the `LD_LIBRARY_PATH` hint.

use std::sync::Arc;

use cudarc::driver::sys::{self, CUdevice_attribute as Attr};
use cudarc::driver::{CudaContext, CudaStream, DriverError};

use super::options::{CudaInfo, Libraries};
use crate::error::{Error, Result};

/// Which of libcuda, libcublas and libnvrtc can be loaded (never panics).
pub fn libraries() -> Libraries {
    // SAFETY: these only try `dlopen` on candidate names and drop the handles; they run no
    // library code beyond the loaders' initialisers.
    unsafe {
        Libraries {
            cuda: cudarc::driver::sys::is_culib_present(),
            cublas: cudarc::cublas::sys::is_culib_present(),
            nvrtc: cudarc::nvrtc::sys::is_culib_present(),
        }
    }
}

/// A driver error as our error, saying what was being done.
pub(crate) fn drv(what: &str, e: DriverError) -> Error {
    Error::Cuda(format!("{what}: {e}"))
}

/// Describes device `ordinal`: name, compute capability, memory, registration support.
/// Errors (never panics) if a library is missing, there is no such device, or the driver fails.
pub fn probe(ordinal: usize) -> Result<CudaInfo> {
    info_of(&checked_context(ordinal)?)
}

/// A context on device `ordinal`, after checking the libraries and the device count (the
/// checks cudarc would otherwise answer with a panic).
fn checked_context(ordinal: usize) -> Result<Arc<CudaContext>> {
    libraries().check()?;
    let count = CudaContext::device_count().map_err(|e| drv("counting CUDA devices", e))?;
    if ordinal >= count.max(0) as usize {
        return Err(Error::Cuda(format!("no CUDA device {ordinal} (this machine has {count})")));
    }
    CudaContext::new(ordinal).map_err(|e| drv("creating a context", e))
}

fn info_of(ctx: &Arc<CudaContext>) -> Result<CudaInfo> {
    let attr = |a: Attr| ctx.attribute(a).map_err(|e| drv("reading a device attribute", e));
    let (free, total) = ctx.mem_get_info().map_err(|e| drv("reading free memory", e))?;
    let mut driver_version = 0;
    // SAFETY: writes one int through a valid pointer.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver_version) }
        .result()
        .map_err(|e| drv("reading the driver version", e))?;
    Ok(CudaInfo {
        ordinal: ctx.ordinal(),
        name: ctx.name().map_err(|e| drv("reading the device name", e))?,
        compute_capability: ctx
            .compute_capability()
            .map_err(|e| drv("reading the compute capability", e))?,
        total_memory: total as u64,
        free_memory: free as u64,
        driver_version,
        host_register: attr(Attr::CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED)? != 0,
        read_only_host_register: attr(Attr::CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED)?
            != 0,
    })
}

/// Lets the device's default memory pool keep freed memory instead of returning it to the OS
/// at every stream synchronisation (release threshold 0, the default): the FFN's temporaries
/// are allocated and freed on every call, and re-mapping them each time costs more than the
/// GEMMs of a decode step.
fn keep_pool_memory(ctx: &Arc<CudaContext>) -> Result<()> {
    use cudarc::driver::result::{device, mem_pool};
    let mut threshold = u64::MAX;
    // SAFETY: `cu_device` is the context's valid device; the release-threshold attribute is a
    // u64 (cuuint64_t) read through the pointer during the call.
    unsafe {
        let pool = device::get_default_mem_pool(ctx.cu_device())
            .map_err(|e| drv("getting the default memory pool", e))?;
        mem_pool::set_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold) as *mut u64 as *mut _,
        )
        .map_err(|e| drv("setting the memory pool release threshold", e))
    }
}

/// One backend's view of a device: its context and two streams.
#[derive(Debug)]
pub(crate) struct Gpu {
    pub ctx: Arc<CudaContext>,
    /// Kernels and GEMMs run here, in order.
    pub compute: Arc<CudaStream>,
    /// Host→device copies run here, ordered against compute only by events.
    pub copy: Arc<CudaStream>,
    pub info: CudaInfo,
}

impl Gpu {
    /// Opens device `ordinal` with all libraries checked first.
    pub fn open(ordinal: usize) -> Result<Arc<Gpu>> {
        let ctx = checked_context(ordinal)?;
        // SAFETY: this context object is ours alone (`CudaContext::new` returns a fresh Arc
        // even for the primary context) and every cross-stream dependency in this backend is
        // an explicit event: slots are written on the copy stream after waiting for the
        // slot's "released" event and read on the compute stream after its "ready" event;
        // temporaries live and die on the compute stream. Per-slice event tracking would only
        // add an event record to every use on the hot path.
        unsafe { ctx.disable_event_tracking() };
        if ctx.has_async_alloc() {
            keep_pool_memory(&ctx)?;
        }
        let compute = ctx.new_stream().map_err(|e| drv("creating the compute stream", e))?;
        let copy = ctx.new_stream().map_err(|e| drv("creating the copy stream", e))?;
        let info = info_of(&ctx)?;
        Ok(Arc::new(Gpu { ctx, compute, copy, info }))
    }

    /// Errors stored by cudarc in drops (which cannot return them), surfaced now.
    pub fn check(&self) -> Result<()> {
        self.ctx.check_err().map_err(|e| drv("an earlier asynchronous CUDA call", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::LD_LIBRARY_PATH_HINT;

    #[test]
    fn missing_libraries_give_an_error_not_a_panic() {
        let libs = libraries();
        if libs.missing().is_empty() {
            eprintln!("not applicable: the CUDA libraries are present on this machine");
            return;
        }
        let msg = probe(0).unwrap_err().to_string();
        assert!(msg.contains(LD_LIBRARY_PATH_HINT), "{msg}");
        assert!(Gpu::open(0).is_err());
    }
}
