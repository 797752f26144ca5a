//! The `moe-offload` command line: parses arguments, calls the library, prints results.
//! Errors print as `error: ...` and exit non-zero.

mod cli;

use clap::Parser;

fn main() {
    restore_sigpipe();
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose);
    if let Err(e) = cli::dispatch(args.command) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Rust ignores SIGPIPE, so `moe-offload inspect | head` would panic on a closed stdout;
/// restoring the default makes the process end quietly as other command-line tools do.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called once at start-up before any thread exists; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
