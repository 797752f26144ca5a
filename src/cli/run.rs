//! `moe-offload run` (scaffold: filled in by the issue that owns this subcommand).

/// Arguments of `run`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `run`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`run` is not built yet")
}
