//! The `moe-offload` command line: parses arguments, calls the library, prints results.
//! Errors print as `error: ...` and exit non-zero.

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose);
    if let Err(e) = cli::dispatch(args.command) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
