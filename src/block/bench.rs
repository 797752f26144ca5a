//! Timing of one block forward (`bench block`, `benches/block.rs`) and the host memcpy
//! bandwidth it is held against.
