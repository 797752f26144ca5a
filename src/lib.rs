//! moe-offload: serve Mixture-of-Experts models whose experts do not fit in GPU memory.
//!
//! Expert weights stay in memory-mapped safetensors files ([`checkpoint`]); a model spec says
//! what the checkpoint means ([`spec`]); routers choose experts ([`routing`]); backends compute
//! expert FFNs ([`ffn`], [`backend`]).
#![warn(missing_docs)]

pub mod backend;
pub mod cache;
pub mod checkpoint;
pub mod dtype;
pub mod error;
pub mod ffn;
pub mod inspect;
pub mod rng;
pub mod routing;
pub mod sim;
pub mod spec;

pub use checkpoint::{Checkpoint, TensorView};
pub use dtype::DType;
pub use error::{Error, Result};
pub use spec::{BlockSpec, Family, ModelSpec};
