//! `moe-offload sim` (scaffold: filled in by the issue that owns this subcommand).

/// Arguments of `sim`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `sim`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`sim` is not built yet")
}
