//! moe-offload: serve Mixture-of-Experts models whose experts do not fit in GPU memory.
//!
//! Expert weights stay in memory-mapped safetensors files ([`checkpoint`]); a model spec says
//! what the checkpoint means ([`spec`]); routers choose experts ([`routing`]); backends compute
//! expert FFNs ([`ffn`], [`backend`]).
#![warn(missing_docs)]

pub mod backend;
pub mod bench;
pub mod block;
pub mod cache;
pub mod checkpoint;
pub mod dtype;
pub mod engine;
pub mod error;
pub mod extract;
pub mod ffn;
pub mod generate;
pub mod inspect;
pub mod io;
pub mod rng;
pub mod routing;
pub mod schedule;
pub mod sim;
pub mod spec;
pub mod transfer;
pub mod workload;

pub use checkpoint::{Checkpoint, TensorView};
pub use dtype::DType;
pub use error::{Error, Result};
pub use spec::{BlockSpec, Family, ModelSpec};
