//! The `ferry` daemon: reads its settings, opens the catalog, and serves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use ferry_catalog::{Catalog, SecretKey};
use ferry_server::{metrics, run, Shared, Shutdown};
use tokio::net::TcpListener;
use tracing::{error, info};

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Keeps ClickHouse in step with PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the daemon: the PostgreSQL-protocol front end and the mirrors.
    Server(ServerArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Address for PostgreSQL clients (psql).
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:9900")]
    listen: SocketAddr,
    /// PostgreSQL database holding Ferry's catalog (postgres://user:pw@host:port/db).
    #[arg(long, env = "FERRY_CATALOG_URL", hide_env_values = true)]
    catalog_url: String,
    /// User name clients log in with.
    #[arg(long, env = "FERRY_USER", default_value = "ferry")]
    user: String,
    /// Password clients log in with (SCRAM-SHA-256).
    #[arg(long, env = "FERRY_PASSWORD", hide_env_values = true)]
    password: String,
    /// Address for the Prometheus endpoint (/metrics); off when not given.
    #[arg(long, env = "FERRY_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// File with the 64-hex-character key that seals peer passwords in the catalog.
    #[arg(long, env = "FERRY_SECRET_KEY_FILE")]
    secret_key_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum, default_value = "human")]
    log_format: LogFormat,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal, never in a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The secret key from `FERRY_SECRET_KEY` or the key file; refusing to start without one.
fn secret_key(file: Option<&PathBuf>) -> Result<SecretKey> {
    let from_env = std::env::var("FERRY_SECRET_KEY")
        .ok()
        .filter(|s| !s.trim().is_empty());
    match (from_env, file) {
        (Some(_), Some(_)) => bail!("give the secret key either in FERRY_SECRET_KEY or as --secret-key-file, not both"),
        (Some(hex), None) => SecretKey::from_hex(&hex).context("FERRY_SECRET_KEY"),
        (None, Some(path)) => Ok(SecretKey::from_file(path)?),
        (None, None) => bail!(
            "no secret key: Ferry seals peer passwords in the catalog and will not store them in clear.\n\
             Set FERRY_SECRET_KEY to 64 hex characters (e.g. `openssl rand -hex 32`) or pass --secret-key-file."
        ),
    }
}

async fn serve(args: ServerArgs) -> Result<()> {
    let key = secret_key(args.secret_key_file.as_ref())?;
    let (catalog, report) = Catalog::open(&args.catalog_url, key)
        .await
        .context("opening the catalog")?;
    info!(applied = ?report.applied, already = report.already.len(), "catalog ready");
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let shared = Shared::new(catalog, &args.user, &args.password);
    let resumed = shared
        .engine
        .resume_all()
        .await
        .context("resuming mirrors")?;
    if resumed > 0 {
        info!(mirrors = resumed, "resumed mirrors");
    }
    let shutdown = Shutdown::default();

    if let Some(addr) = args.metrics_listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} for metrics"))?;
        tokio::spawn(metrics::serve(
            l,
            shared.metrics.clone(),
            shared.catalog.clone(),
            shutdown.subscribe(),
        ));
    }
    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown requested");
        signals.trigger();
    });
    let waiter = shutdown.clone();
    run(
        listener,
        Arc::clone(&shared),
        async move { waiter.wait().await },
    )
    .await?;
    shared.engine.shutdown().await;
    info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let Cmd::Server(args) = cli.command;
    init_logging(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "ferry stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
