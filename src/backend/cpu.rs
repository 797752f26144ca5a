//! CPU backend (placeholder until the block-math work lands).
