//! The `pkgfs` command line: `pkgfs serve` and `pkgfs mount`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Mount a Gitea/Forgejo generic package registry as a directory tree, or
/// serve a Gitea-compatible registry locally.
#[derive(Debug, Parser)]
#[command(name = "pkgfs", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a Gitea-compatible generic package registry (tests, demos, offline use).
    Serve(pkgfs::server::ServeArgs),
    /// Mount a registry at MOUNTPOINT as <owner>/<package>/<version>/<file>.
    Mount(pkgfs::mount::MountArgs),
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let cli = match pkgfs::mount::helper_args(&argv) {
        Some(args) => Cli::parse_from(args),
        None => Cli::parse(),
    };
    let result = match cli.command {
        Command::Serve(args) => pkgfs::server::run(args),
        Command::Mount(args) => pkgfs::mount::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pkgfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}
