//! `pkgfs serve`: a Gitea-compatible generic package registry (placeholder).

use clap::Args;

/// Options of `pkgfs serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub listen: String,
}

/// Runs the registry until SIGINT/SIGTERM.
pub fn run(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
