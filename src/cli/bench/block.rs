//! `moe-offload bench block` (scaffold: filled in by the issue that owns it).

/// Arguments of `bench block`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `bench block`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`bench block` is not built yet")
}
