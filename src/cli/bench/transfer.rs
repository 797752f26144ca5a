//! `moe-offload bench transfer` (scaffold: filled in by the issue that owns it).

/// Arguments of `bench transfer`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `bench transfer`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`bench transfer` is not built yet")
}
