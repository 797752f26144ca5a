//! `moe-offload bench decode` (scaffold: filled in by the issue that owns it).

/// Arguments of `bench decode`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `bench decode`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`bench decode` is not built yet")
}
