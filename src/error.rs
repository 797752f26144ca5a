//! The library's one error type: every failure a user can cause or meet, grouped by concern,
//! with messages that name the file, tensor, shape or value that was wrong.

use std::path::PathBuf;

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in moe-offload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // --- files and checkpoints ---
    /// An I/O operation on a path failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The model path does not exist.
    #[error("{0}: no such file or folder")]
    NotFound(PathBuf),
    /// A file is not a valid safetensors file (bad or truncated header, bad offsets).
    #[error("{path}: not a valid safetensors file: {reason}")]
    BadSafetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `config.json` is missing, unreadable or lacks a needed field.
    #[error("{path}: {reason}")]
    BadConfig {
        /// The config file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The config names a `model_type` we do not know.
    #[error(
        "unknown model_type {0:?} (supported: mixtral, qwen2_moe, qwen3_moe, deepseek_v3, nllb-moe, switch_transformers, glam, pangu_sigma)"
    )]
    UnknownModelType(String),
    /// A tensor the model needs is absent from the checkpoint.
    #[error("tensor {name} is missing from the checkpoint")]
    MissingTensor {
        /// The tensor name.
        name: String,
    },
    /// A tensor has the wrong shape.
    #[error("tensor {name}: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        /// The tensor name.
        name: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A tensor has a dtype that cannot be used where it is needed.
    #[error("tensor {name}: dtype {found} is not supported here (expected {expected})")]
    UnsupportedDtype {
        /// The tensor name.
        name: String,
        /// The dtype found.
        found: String,
        /// What would be accepted.
        expected: String,
    },

    // --- inputs and arguments ---
    /// A caller-supplied value is invalid (wrong hidden size, bad domain, token id too large, …).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A block prefix that the model does not have.
    #[error("unknown MoE block prefix {prefix:?} (the model has: {known})")]
    UnknownBlock {
        /// The prefix asked for.
        prefix: String,
        /// The prefixes the model has, comma-separated.
        known: String,
    },
    /// An option value (budget, policy, preset, …) is invalid.
    #[error("invalid option: {0}")]
    InvalidOption(String),

    // --- offloading ---
    /// The device budget cannot hold what one block needs.
    #[error("budget of {budget} bytes is too small: {reason}")]
    BudgetTooSmall {
        /// The budget given.
        budget: u64,
        /// Why it is too small.
        reason: String,
    },
    /// No slot can be freed for an expert: every resident expert is protected (needed by the
    /// current block, or pinned by the policy).
    #[error(
        "no slot for expert {expert} of block {block}: all {slots} slots hold protected experts (in use by the current block or pinned); raise the budget"
    )]
    CacheFull {
        /// Block of the expert that needed a slot.
        block: u32,
        /// The expert.
        expert: u32,
        /// Number of slots in the cache.
        slots: usize,
    },
    /// Copying expert bytes into a slot failed.
    #[error("transfer of expert {expert} of block {block} failed: {reason}")]
    Transfer {
        /// Block index.
        block: usize,
        /// Expert index.
        expert: usize,
        /// Why it failed.
        reason: String,
    },

    // --- devices ---
    /// `--device cuda` was asked for but the crate was built without the `cuda` feature.
    #[error("this build has no CUDA support: rebuild with `--features cuda`")]
    NotCompiledWithCuda,
    /// CUDA is compiled in but unusable here (no driver, missing libraries, a failing call).
    #[error("CUDA: {0}")]
    Cuda(String),

    // --- traces and simulation ---
    /// A routing trace is malformed.
    #[error("trace {path}, line {line}: {reason}")]
    BadTrace {
        /// The trace file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// A `BadConfig` error for `path`.
    pub fn config(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::BadConfig { path: path.into(), reason: reason.into() }
    }

    /// An `InvalidInput` error.
    pub fn input(reason: impl Into<String>) -> Self {
        Error::InvalidInput(reason.into())
    }
}
