//! The NVRTC kernels of `cuda/*.cu`: embedded with `include_str!`, compiled once per process
//! for each device's architecture (cached per device ordinal), loaded as one module.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaFunction, LaunchConfig};
use cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};

use super::device::drv;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ffn::Activation;

/// Kernel sources, concatenated into one NVRTC program (`common.cu` first: helpers).
const SOURCES: [(&str, &str); 5] = [
    ("common.cu", include_str!("../../../cuda/common.cu")),
    ("gather.cu", include_str!("../../../cuda/gather.cu")),
    ("activation.cu", include_str!("../../../cuda/activation.cu")),
    ("combine.cu", include_str!("../../../cuda/combine.cu")),
    ("router.cu", include_str!("../../../cuda/router.cu")),
];

/// Every kernel in the program, `{op}_{dtype}`.
const NAMES: [&str; 16] = [
    "gather_rows_f32",
    "scatter_rows_f32",
    "cast_bf16",
    "cast_f16",
    "glu_f32",
    "glu_bf16",
    "glu_f16",
    "bias_act_f32",
    "bias_act_bf16",
    "bias_act_f16",
    "add_bias_f32",
    "add_bias_bf16",
    "add_bias_f16",
    "combine_f32",
    "softmax_topk_f32",
    "grouped_sigmoid_topk_f32",
];

/// Threads per block of the elementwise kernels.
const BLOCK: u32 = 256;

/// The loaded kernels of one device.
#[derive(Debug)]
pub(crate) struct Kernels {
    functions: HashMap<&'static str, CudaFunction>,
}

impl Kernels {
    /// The kernels for `ctx`'s device, compiling them on first use in this process.
    pub fn for_device(ctx: &Arc<CudaContext>) -> Result<Arc<Kernels>> {
        static CACHE: OnceLock<Mutex<HashMap<usize, Arc<Kernels>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        // A poisoned lock only means another thread panicked while compiling; the map holds
        // complete entries only, so it is safe to keep using it.
        let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = map.get(&ctx.ordinal()) {
            return Ok(k.clone());
        }
        let k = Arc::new(Kernels::compile(ctx)?);
        map.insert(ctx.ordinal(), k.clone());
        Ok(k)
    }

    fn compile(ctx: &Arc<CudaContext>) -> Result<Kernels> {
        let (major, minor) =
            ctx.compute_capability().map_err(|e| drv("reading the compute capability", e))?;
        let src: String =
            SOURCES.iter().map(|(name, text)| format!("// ---- {name} ----\n{text}\n")).collect();
        let opts = CompileOptions {
            // PTX for the device's virtual architecture; the driver finishes it for the chip.
            options: vec![format!("--gpu-architecture=compute_{major}{minor}")],
            // Exact f32 division and square root: the CPU reference is exact IEEE f32.
            prec_div: Some(true),
            prec_sqrt: Some(true),
            ftz: Some(false),
            name: Some("moe_offload.cu".into()),
            ..Default::default()
        };
        let ptx = compile_ptx_with_opts(src, opts)
            .map_err(|e| Error::Cuda(format!("NVRTC failed to compile cuda/*.cu: {e}")))?;
        let module = ctx.load_module(ptx).map_err(|e| drv("loading the kernel module", e))?;
        let mut functions = HashMap::new();
        for name in NAMES {
            let f = module.load_function(name).map_err(|e| drv(name, e))?;
            functions.insert(name, f);
        }
        Ok(Kernels { functions })
    }

    /// The kernel named `name`.
    pub fn get(&self, name: &str) -> Result<&CudaFunction> {
        self.functions.get(name).ok_or_else(|| Error::Cuda(format!("no kernel named {name}")))
    }

    /// The `{op}_{dtype}` kernel for a weight dtype.
    pub fn for_dtype(&self, op: &str, dtype: &DType) -> Result<&CudaFunction> {
        match dtype {
            DType::F32 | DType::BF16 | DType::F16 => self.get(&format!("{op}_{}", dtype.name())),
            other => Err(Error::Cuda(format!("no {op} kernel for dtype {other}"))),
        }
    }
}

/// Activation code understood by `activate()` in `cuda/common.cu`.
pub(crate) fn act_code(a: Activation) -> i32 {
    match a {
        Activation::Silu => 0,
        Activation::Gelu => 1,
        Activation::GeluTanh => 2,
        Activation::Relu => 3,
    }
}

/// A grid-stride launch over `n` elements (the grid is capped; kernels loop).
pub(crate) fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 1 << 16) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// One thread per token.
pub(crate) fn per_token(tokens: usize) -> LaunchConfig {
    let blocks = tokens.div_ceil(128).max(1) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 }
}
