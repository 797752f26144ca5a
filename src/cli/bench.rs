//! `moe-offload bench` (scaffold: filled in by the issue that owns this subcommand).

/// Arguments of `bench`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `bench`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`bench` is not built yet")
}
