//! `moe-offload extract` (scaffold: filled in by the issue that owns this subcommand).

/// Arguments of `extract`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `extract`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`extract` is not built yet")
}
