//! `moe-offload gen` (scaffold: filled in by the issue that owns this subcommand).

/// Arguments of `gen`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `gen`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`gen` is not built yet")
}
