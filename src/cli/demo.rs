//! `moe-offload demo` (scaffold: filled in by the issue that owns this subcommand).

/// Arguments of `demo`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs `demo`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`demo` is not built yet")
}
