//! `pkgfs serve`: a Gitea-compatible generic package registry, the test bed
//! of every end-to-end test and the README demo (PROTOCOL.md §serve-profile).
//!
//! This module holds the command-line options and the start-up sequence;
//! the work is split into small modules: [`config`] (who exists),
//! [`auth`] (who is asking and what they may do), [`store`] (SQLite and
//! blobs), [`upload`] (streaming a body to disk), [`serve_file`] (Go's
//! `http.ServeContent` semantics), [`routes_packages`] and [`routes_v1`]
//! (the two API trees), [`direct`] (signed URLs), [`hooks`] (test hooks)
//! and [`net`] (connections, routing, logging).

mod auth;
mod config;
mod direct;
mod hooks;
mod net;
mod paging;
mod respond;
mod routes_packages;
mod routes_v1;
mod serve_file;
mod store;
mod upload;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use url::Url;

/// Spelling of the file size key in `/api/v1/.../files` (PROTOCOL.md §json).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SizeKey {
    /// `size` (Gitea ≥ 1.24).
    #[value(name = "size")]
    Lower,
    /// `Size` (Gitea ≤ 1.23 and every Forgejo).
    #[value(name = "Size")]
    Upper,
}

/// Options of `pkgfs serve`.
///
/// Without `--config` the registry has one public user (`--default-user`,
/// default `alice`) whose personal access token (scope `all`) is read from
/// the environment variable `PKGFS_SERVE_TOKEN`; tokens are never taken
/// from the command line. If the variable is unset the registry is
/// anonymous-only (reads of public owners).
#[derive(Debug, Args)]
#[command(
    after_help = "Environment: PKGFS_SERVE_TOKEN = token of the default user (when no --config). \
                  RUST_LOG = log filter (default: info). \
                  The config file format is described in README.md, section 'pkgfs serve'."
)]
pub struct ServeArgs {
    /// Address to listen on; `127.0.0.1:0` picks a free port. The actual
    /// address is printed on stdout as `listening on http://ADDR`.
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub listen: String,

    /// Data directory: SQLite database `pkgfs.db`, blobs under `blobs/`,
    /// uploads in progress under `tmp/`. Created if missing.
    #[arg(long)]
    pub data: PathBuf,

    /// TOML file with users, passwords, tokens and organisations.
    #[arg(long)]
    pub config: Option<PathBuf>,

    /// Name of the single user when no --config is given.
    #[arg(long, default_value = "alice")]
    pub default_user: String,

    /// External base URL (Gitea's APP_URL) used in `Link` headers and
    /// `html_url`; default `http://<actual listen address>/`.
    #[arg(long)]
    pub public_url: Option<Url>,

    /// Gitea 1.17 behaviour: a version holds one file; any second upload
    /// into an existing version answers 400 `package version already
    /// exists`, and DELETE of a version answers 200 instead of 204.
    #[arg(long)]
    pub legacy_duplicates: bool,

    /// JSON key of the file size in the v1 file list: `size` (Gitea ≥ 1.24)
    /// or `Size` (older Gitea, Forgejo).
    #[arg(long, value_enum, default_value = "size")]
    pub size_key: SizeKey,

    /// Gitea ≤ 1.24: HEAD on a file URL answers 405.
    #[arg(long)]
    pub no_head: bool,

    /// Gitea 1.17 or a proxy without range support: `Range` headers are
    /// ignored and every GET answers 200 with the whole file.
    #[arg(long)]
    pub no_range: bool,

    /// Gitea < 1.24 and Forgejo: no v1 "list versions" and "latest"
    /// endpoints (404).
    #[arg(long)]
    pub no_versions_endpoint: bool,

    /// A proxy that drops `X-Total-Count` from v1 listings: only the `Link`
    /// header tells a client that more pages follow.
    #[arg(long)]
    pub no_total_count: bool,

    /// Gitea ≤ 1.18 and Forgejo ≥ v12: v1 GET endpoints work without a
    /// token for owners the anonymous user may read.
    #[arg(long)]
    pub v1_anonymous_read: bool,

    /// Forgejo quirks: a form-encoded PUT body answers 400 (not 500), and
    /// HEAD on a file answers without Content-Length and never redirects.
    #[arg(long)]
    pub forgejo: bool,

    /// SERVE_DIRECT: GET/HEAD of a file answers 303 to a short-lived signed
    /// URL on a second loopback listener (printed as `direct on URL` before
    /// the listening line). That listener refuses requests carrying an
    /// Authorization header (400), as S3 does.
    #[arg(long)]
    pub serve_direct: bool,

    /// Address of the --serve-direct listener.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub direct_listen: String,

    /// LIMIT_SIZE_GENERIC: largest file (e.g. `512MiB`, `1GiB`, `100MB`,
    /// plain bytes); larger uploads get 403 after the body is read.
    /// Admins are exempt.
    #[arg(long, value_parser = crate::parse_size)]
    pub max_file_size: Option<u64>,

    /// LIMIT_TOTAL_OWNER_SIZE: total size of an owner's files; an upload
    /// that would exceed it gets 403. Admins are exempt.
    #[arg(long, value_parser = crate::parse_size)]
    pub max_owner_size: Option<u64>,

    /// LIMIT_TOTAL_OWNER_COUNT: number of versions of an owner; creating
    /// one more gets 403. Admins are exempt.
    #[arg(long)]
    pub max_owner_count: Option<u64>,

    /// Enable the unauthenticated test hooks under `/_pkgfs/test/`
    /// (stats, reset, fault injection, blob corruption). Never in
    /// production.
    #[arg(long)]
    pub test_hooks: bool,
}

/// Behaviour switches derived from the flags (PROTOCOL.md §serve-profile).
#[derive(Debug, Clone)]
pub(crate) struct Profile {
    pub legacy_duplicates: bool,
    pub size_key: SizeKey,
    pub head: bool,
    pub range: bool,
    pub versions_endpoint: bool,
    pub v1_anonymous_read: bool,
    pub forgejo: bool,
    pub total_count: bool,
    pub max_file_size: Option<u64>,
    pub max_owner_size: Option<u64>,
    pub max_owner_count: Option<u64>,
}

/// Everything a request handler needs.
pub(crate) struct App {
    pub profile: Profile,
    pub public_url: Url,
    pub dir: config::Directory,
    pub store: Arc<store::Store>,
    pub direct: Option<direct::Signer>,
    pub hooks: Option<hooks::Hooks>,
}

impl App {
    /// Runs a store operation on the blocking pool (SQLite and file system
    /// calls block).
    pub async fn db<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        F: FnOnce(&store::Store) -> anyhow::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store)).await?
    }
}

/// Runs the registry until SIGINT/SIGTERM.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(serve(args));
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second init (in-process tests) is harmless: keep the first.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut dir = match &args.config {
        Some(path) => config::Directory::load(path)?,
        None => config::Directory::single_user(
            &args.default_user,
            std::env::var("PKGFS_SERVE_TOKEN").ok(),
        )?,
    };
    let store = Arc::new(store::Store::open(&args.data)?);
    dir.assign_ids(|name| store.ensure_owner(name))?;

    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let public_url = match args.public_url.clone() {
        Some(mut u) => {
            if !u.path().ends_with('/') {
                let p = format!("{}/", u.path());
                u.set_path(&p);
            }
            u
        }
        None => Url::parse(&format!("http://{addr}/"))?,
    };

    let direct_listener = if args.serve_direct {
        let l = TcpListener::bind(&args.direct_listen)
            .await
            .with_context(|| format!("binding {}", args.direct_listen))?;
        Some(l)
    } else {
        None
    };
    let direct = match &direct_listener {
        Some(l) => Some(direct::Signer::new(Url::parse(&format!(
            "http://{}/",
            l.local_addr()?
        ))?)),
        None => None,
    };

    let app = Arc::new(App {
        profile: Profile {
            legacy_duplicates: args.legacy_duplicates,
            size_key: args.size_key,
            head: !args.no_head,
            range: !args.no_range,
            versions_endpoint: !args.no_versions_endpoint,
            v1_anonymous_read: args.v1_anonymous_read,
            forgejo: args.forgejo,
            total_count: !args.no_total_count,
            max_file_size: args.max_file_size,
            max_owner_size: args.max_owner_size,
            max_owner_count: args.max_owner_count,
        },
        public_url,
        dir,
        store,
        direct,
        hooks: args.test_hooks.then(hooks::Hooks::default),
    });

    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    {
        let mut out = std::io::stdout().lock();
        if let Some(l) = direct_listener {
            writeln!(out, "direct on http://{}", l.local_addr()?)?;
            tasks.spawn(net::serve(
                l,
                app.clone(),
                net::Side::Direct,
                shutdown.clone(),
            ));
        }
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }
    tracing::info!(%addr, data = %args.data.display(), "pkgfs serve ready");
    tasks.spawn(net::serve(listener, app, net::Side::Main, shutdown.clone()));

    wait_for_signal().await?;
    tracing::info!("shutting down");
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
