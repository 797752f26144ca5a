//! Device-free descriptions for the CUDA backend: which transfer path to use and its knobs, the
//! packed layout of an expert inside a device slot, what discovery found, and how slots are
//! carved from a budget. Always compiled, so parsing and layout are tested without a GPU.

use std::str::FromStr;

use crate::checkpoint::Checkpoint;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::spec::BlockSpec;

/// Where the CUDA libraries live on the CUDA 13 test machines (not in the linker cache).
pub const LD_LIBRARY_PATH_HINT: &str = "LD_LIBRARY_PATH=/usr/local/cuda/targets/x86_64-linux/lib";

/// Slot starts are aligned to this many bytes: cuBLAS and vector loads prefer 256-byte bases,
/// and it is the `cudaMalloc` alignment, so a slot behaves like its own allocation.
pub const SLOT_ALIGN: usize = 256;

/// How expert bytes move from the mapped checkpoint to a device slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferPath {
    /// Registered if the device supports read-only host registration, else the pinned ring.
    Auto,
    /// DMA straight from the mapped file, registered with `cuMemHostRegister` (no staging copy).
    Registered,
    /// CPU threads copy into a ring of pinned buffers, DMA from there.
    PinnedRing {
        /// CPU threads filling each staging buffer.
        threads: usize,
    },
    /// Plain copies from pageable memory (the driver stages them): the slow reference.
    Pageable,
}

/// Default CPU threads of the pinned ring (8 threads reached ~39 GB/s mmap→pinned on the H200
/// host, near what the PCIe link takes; more gave little).
pub const DEFAULT_RING_THREADS: usize = 8;

impl TransferPath {
    /// The path `Auto` stands for on a device with or without read-only host registration.
    pub fn resolve(self, read_only_register_supported: bool) -> TransferPath {
        match self {
            TransferPath::Auto if read_only_register_supported => TransferPath::Registered,
            TransferPath::Auto => TransferPath::PinnedRing { threads: DEFAULT_RING_THREADS },
            other => other,
        }
    }
}

impl FromStr for TransferPath {
    type Err = Error;

    /// `auto`, `registered`, `pinned` (default threads), `pinned:N`, `pageable`.
    fn from_str(s: &str) -> Result<TransferPath> {
        let lower = s.trim().to_ascii_lowercase();
        let bad = || {
            Error::InvalidOption(format!(
                "unknown transfer path {s:?} (auto, registered, pinned, pinned:N, pageable)"
            ))
        };
        match lower.as_str() {
            "auto" => Ok(TransferPath::Auto),
            "registered" => Ok(TransferPath::Registered),
            "pinned" | "pinned-ring" => {
                Ok(TransferPath::PinnedRing { threads: DEFAULT_RING_THREADS })
            }
            "pageable" => Ok(TransferPath::Pageable),
            _ => match lower.strip_prefix("pinned:").map(str::parse::<usize>) {
                Some(Ok(threads)) if threads > 0 => Ok(TransferPath::PinnedRing { threads }),
                _ => Err(bad()),
            },
        }
    }
}

impl std::fmt::Display for TransferPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransferPath::Auto => f.write_str("auto"),
            TransferPath::Registered => f.write_str("registered"),
            TransferPath::PinnedRing { threads } => write!(f, "pinned:{threads}"),
            TransferPath::Pageable => f.write_str("pageable"),
        }
    }
}

/// Knobs of an uploader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferOptions {
    /// The path asked for.
    pub path: TransferPath,
    /// Pinned staging buffers in the ring (≥ 2 so CPU fills overlap DMA).
    pub ring_buffers: usize,
    /// Bytes per staging buffer.
    pub ring_buffer_bytes: usize,
    /// Most bytes of the mapping registered at once (registration pins pages).
    pub register_budget: u64,
    /// Registration window size (a multiple of the page size).
    pub register_window: usize,
    /// Test hook: the n-th upload (1-based) fails once.
    pub fail_on_upload: Option<u64>,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            path: TransferPath::Auto,
            // 4 × 64 MiB: a chunk is large enough to run the link at full rate, and four let
            // the threads fill two while two are in flight.
            ring_buffers: 4,
            ring_buffer_bytes: 64 << 20,
            // 32 GiB: a 4-layer Mixtral-shaped model (11 GB of experts) registers whole on the
            // 128 GiB test hosts; larger models cycle windows through the LRU.
            register_budget: 32 << 30,
            register_window: 64 << 20,
            fail_on_upload: None,
        }
    }
}

/// Counters of an uploader (bytes by the route they actually took).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TransferStats {
    /// Successful uploads.
    pub uploads: u64,
    /// Bytes DMA'd straight from registered mapped memory.
    pub registered_bytes: u64,
    /// Bytes staged through the pinned ring.
    pub staged_bytes: u64,
    /// Bytes copied from pageable memory.
    pub pageable_bytes: u64,
    /// Windows registered / unregistered so far.
    pub registrations: u64,
    /// Windows unregistered to stay in the registration budget.
    pub unregistrations: u64,
    /// Times registration failed and the ring took over.
    pub fallbacks: u64,
    /// Uploads that failed.
    pub failures: u64,
}

/// Parses `1,4,8` (thread counts for `bench transfer`).
pub fn parse_list(s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|t| match t.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Error::InvalidOption(format!("bad number {t:?} in list {s:?}"))),
        })
        .collect()
}

/// What discovery found about a CUDA device and its libraries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CudaInfo {
    /// Device ordinal.
    pub ordinal: usize,
    /// Device name (`NVIDIA H200`).
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Total device memory in bytes.
    pub total_memory: u64,
    /// Free device memory in bytes when probed.
    pub free_memory: u64,
    /// CUDA driver version (e.g. 13000).
    pub driver_version: i32,
    /// Whether `cuMemHostRegister` is supported.
    pub host_register: bool,
    /// Whether read-only host registration is supported (needed to register a read-only mmap).
    pub read_only_host_register: bool,
}

/// Which CUDA libraries could be loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Libraries {
    /// The driver, `libcuda`.
    pub cuda: bool,
    /// `libcublas`.
    pub cublas: bool,
    /// `libnvrtc`.
    pub nvrtc: bool,
}

impl Libraries {
    /// Names of the missing libraries.
    pub fn missing(&self) -> Vec<&'static str> {
        [(self.cuda, "libcuda"), (self.cublas, "libcublas"), (self.nvrtc, "libnvrtc")]
            .into_iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, n)| n)
            .collect()
    }

    /// `Ok` if all are present, else an error naming the missing ones with the path hint.
    pub fn check(&self) -> Result<()> {
        let missing = self.missing();
        if missing.is_empty() {
            return Ok(());
        }
        Err(Error::Cuda(format!(
            "cannot load {} (no NVIDIA driver, or the CUDA libraries are not on the library \
             path; on the CUDA 13 machines set {LD_LIBRARY_PATH_HINT})",
            missing.join(", ")
        )))
    }
}

/// Where one weight tensor sits inside a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorSlot {
    /// Byte offset from the slot start.
    pub offset: usize,
    /// Rows (`out` features; 1 for a bias).
    pub rows: usize,
    /// Columns (`in` features; the length for a bias).
    pub cols: usize,
}

/// The packed layout of one expert in a slot: its tensors concatenated in the order gate, up,
/// down, up_bias, down_bias (those present), all of one dtype. The transfer writes exactly
/// these bytes in this order, so the copy of an expert is the concatenation of its tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpertLayout {
    /// Element type of every tensor.
    pub dtype: DType,
    /// Model width.
    pub hidden: usize,
    /// Expert inner width.
    pub ffn_dim: usize,
    /// Gate `[ffn, hidden]` (GLU forms).
    pub gate: Option<TensorSlot>,
    /// Up `[ffn, hidden]`.
    pub up: TensorSlot,
    /// Down `[hidden, ffn]`.
    pub down: TensorSlot,
    /// Up bias `[ffn]`.
    pub up_bias: Option<TensorSlot>,
    /// Down bias `[hidden]`.
    pub down_bias: Option<TensorSlot>,
    /// Bytes of the whole expert.
    pub total_bytes: usize,
}

impl ExpertLayout {
    /// The packed layout for the given shapes.
    pub fn packed(
        dtype: DType,
        hidden: usize,
        ffn_dim: usize,
        has_gate: bool,
        has_up_bias: bool,
        has_down_bias: bool,
    ) -> Result<ExpertLayout> {
        if !dtype.is_float_weight() {
            return Err(Error::InvalidInput(format!("expert weights of dtype {dtype}")));
        }
        let es = dtype.size();
        let mut off = 0;
        let mut put = |rows: usize, cols: usize| {
            let t = TensorSlot { offset: off, rows, cols };
            off += rows * cols * es;
            t
        };
        let gate = has_gate.then(|| put(ffn_dim, hidden));
        let up = put(ffn_dim, hidden);
        let down = put(hidden, ffn_dim);
        let up_bias = has_up_bias.then(|| put(1, ffn_dim));
        let down_bias = has_down_bias.then(|| put(1, hidden));
        let total_bytes = gate.map_or(0, |_| ffn_dim * hidden * es)
            + 2 * ffn_dim * hidden * es
            + up_bias.map_or(0, |_| ffn_dim * es)
            + down_bias.map_or(0, |_| hidden * es);
        Ok(ExpertLayout { dtype, hidden, ffn_dim, gate, up, down, up_bias, down_bias, total_bytes })
    }

    /// The layout of expert `expert` of `block`, checking that all its tensors share a dtype.
    pub fn of_expert(ckpt: &Checkpoint, block: &BlockSpec, expert: usize) -> Result<ExpertLayout> {
        let t = block.experts.get(expert).ok_or_else(|| {
            Error::input(format!("block {} has no expert {expert}", block.prefix))
        })?;
        let dtype = ckpt.info(&t.up)?.dtype.clone();
        for name in t.names() {
            let found = &ckpt.info(name)?.dtype;
            if *found != dtype {
                return Err(Error::UnsupportedDtype {
                    name: name.to_string(),
                    found: found.to_string(),
                    expected: format!("{dtype} like the rest of the expert"),
                });
            }
        }
        let hidden = ckpt.info(&t.up)?.shape.get(1).copied().unwrap_or(0);
        ExpertLayout::packed(
            dtype,
            hidden,
            block.ffn_dim,
            t.gate.is_some(),
            t.up_bias.is_some(),
            t.down_bias.is_some(),
        )
    }

    /// The mapped bytes of expert `expert`'s tensors in slot order (zero-copy views).
    pub fn sources<'a>(
        ckpt: &'a Checkpoint,
        block: &BlockSpec,
        expert: usize,
    ) -> Result<Vec<&'a [u8]>> {
        let t = block.experts.get(expert).ok_or_else(|| {
            Error::input(format!("block {} has no expert {expert}", block.prefix))
        })?;
        // `names()` yields gate, up, down, up_bias, down_bias: the packed slot order.
        t.names().map(|n| ckpt.tensor(n).map(|v| v.bytes)).collect()
    }
}

/// One expert of a block, resident in a slot: which expert id it is (as in the routing's
/// `expert_ids`), its slot, and its packed layout.
#[derive(Debug, Clone, Copy)]
pub struct SlotExpert<'a> {
    /// Expert index within the block.
    pub expert: usize,
    /// The slot holding its weights.
    pub slot: usize,
    /// Its packed layout.
    pub layout: &'a ExpertLayout,
}

/// Stride between slots: the slot size rounded up to [`SLOT_ALIGN`].
pub fn slot_stride(slot_bytes: usize) -> usize {
    super::plan::align_up(slot_bytes.max(1), SLOT_ALIGN)
}

/// How many slots of `slot_bytes` fit in `budget` bytes (never more than the budget).
pub fn slots_in_budget(budget: u64, slot_bytes: usize) -> usize {
    (budget / slot_stride(slot_bytes) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Device;

    #[test]
    fn parse_paths_and_lists() {
        assert_eq!("auto".parse::<TransferPath>().unwrap(), TransferPath::Auto);
        assert_eq!(
            "pinned:4".parse::<TransferPath>().unwrap(),
            TransferPath::PinnedRing { threads: 4 }
        );
        assert_eq!("Registered".parse::<TransferPath>().unwrap(), TransferPath::Registered);
        for bad in ["pinned:0", "pinned:x", "dma", ""] {
            assert!(bad.parse::<TransferPath>().is_err(), "{bad}");
        }
        for p in [TransferPath::Pageable, TransferPath::PinnedRing { threads: 3 }] {
            assert_eq!(p.to_string().parse::<TransferPath>().unwrap(), p);
        }
        assert_eq!(TransferPath::Auto.resolve(true), TransferPath::Registered);
        assert!(matches!(TransferPath::Auto.resolve(false), TransferPath::PinnedRing { .. }));
        assert_eq!(TransferPath::Pageable.resolve(true), TransferPath::Pageable);
        assert_eq!(parse_list("1, 4,8").unwrap(), vec![1, 4, 8]);
        assert!(parse_list("1,0").is_err() && parse_list("a").is_err());
    }

    #[test]
    fn parse_devices() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("CUDA:2".parse::<Device>().unwrap(), Device::Cuda(2));
        assert!("cuda:x".parse::<Device>().is_err() && "tpu".parse::<Device>().is_err());
        assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
    }

    #[test]
    fn missing_libraries_are_named_with_the_hint() {
        let libs = Libraries { cuda: true, cublas: false, nvrtc: false };
        assert_eq!(libs.missing(), vec!["libcublas", "libnvrtc"]);
        let msg = libs.check().unwrap_err().to_string();
        assert!(msg.contains("libcublas, libnvrtc") && msg.contains(LD_LIBRARY_PATH_HINT), "{msg}");
        assert!(Libraries { cuda: true, cublas: true, nvrtc: true }.check().is_ok());
    }

    #[test]
    fn packed_layout_concatenates_in_order() {
        let l = ExpertLayout::packed(DType::BF16, 4, 6, true, false, true).unwrap();
        assert_eq!(l.gate.unwrap().offset, 0);
        assert_eq!(l.up.offset, 48);
        assert_eq!((l.down.offset, l.down.rows, l.down.cols), (96, 4, 6));
        assert_eq!(l.up_bias, None);
        assert_eq!(l.down_bias.unwrap().offset, 144);
        assert_eq!(l.total_bytes, 152);
        let plain = ExpertLayout::packed(DType::F32, 4, 6, false, true, false).unwrap();
        assert_eq!((plain.up.offset, plain.down.offset), (0, 96));
        assert_eq!(plain.up_bias.unwrap().offset, 192);
        assert!(ExpertLayout::packed(DType::I32, 4, 6, true, false, false).is_err());
    }

    #[test]
    fn expert_layout_and_sources_of_a_golden_checkpoint() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/mixtral-bf16");
        let ckpt = Checkpoint::open(dir).unwrap();
        let spec = crate::ModelSpec::from_checkpoint(&ckpt).unwrap();
        let block = &spec.blocks[0];
        let l = ExpertLayout::of_expert(&ckpt, block, 1).unwrap();
        assert_eq!(l.dtype, DType::BF16);
        assert_eq!(l.total_bytes as u64, block.expert_bytes);
        let src = ExpertLayout::sources(&ckpt, block, 1).unwrap();
        assert_eq!(src.len(), 3);
        assert_eq!(src.iter().map(|s| s.len()).sum::<usize>(), l.total_bytes);
        // gate (w1), up (w3), down (w2): the slot order, not the file order.
        let t = &block.experts[1];
        assert_eq!(src[1].as_ptr(), ckpt.tensor(&t.up).unwrap().bytes.as_ptr());
        assert!(ExpertLayout::of_expert(&ckpt, block, 99).is_err());
    }

    #[test]
    fn slots_never_exceed_budget() {
        assert_eq!(slot_stride(1000), 1024);
        assert_eq!(slots_in_budget(4096, 1000), 4);
        assert_eq!(slots_in_budget(4095, 1000), 3);
        assert_eq!(slots_in_budget(100, 1000), 0);
        for (b, s) in [(1u64 << 30, 352_321_536usize), (12345, 77)] {
            assert!(slots_in_budget(b, s) as u64 * slot_stride(s) as u64 <= b);
        }
    }
}
