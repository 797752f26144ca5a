//! `moe-offload bench`: benchmarks of one block, offloaded decode, and host→device transfer.

mod block;
mod decode;
mod transfer;

/// Arguments of `bench`.
#[derive(clap::Args)]
pub struct Args {
    /// What to benchmark.
    #[command(subcommand)]
    what: BenchCommand,
}

#[derive(clap::Subcommand)]
enum BenchCommand {
    /// Steady-state time of one forward of an MoE block.
    Block(block::Args),
    /// Offloaded decode tokens/s at several budgets and policies, against the naive method.
    Decode(decode::Args),
    /// Host→device copy rate of each transfer path.
    Transfer(transfer::Args),
}

/// Runs `bench`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.what {
        BenchCommand::Block(a) => block::run(a),
        BenchCommand::Decode(a) => decode::run(a),
        BenchCommand::Transfer(a) => transfer::run(a),
    }
}
