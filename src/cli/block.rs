//! `moe-offload block` (scaffold: filled in by the issue that owns this subcommand).

/// Arguments of `block`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `block`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`block` is not built yet")
}
