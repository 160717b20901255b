//! The `ferry` daemon: reads its settings, opens the catalog, and serves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use ferry_catalog::{Catalog, CatalogOptions, Lease, ReaderSettings, SecretKey};
use ferry_server::{frontdoor, metrics, run, Limits, Settings, Shared, Shutdown};
use tokio::net::TcpListener;
use tracing::{error, info};

mod units;

use units::{parse_duration, parse_size};

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

/// What `ferry server --help` says after the flags: settings read only from the environment.
const SERVER_ENVIRONMENT: &str = "\
Environment:
  FERRY_SECRET_KEY   The 64-hex-character key that seals peer passwords in the catalog
                     (or --secret-key-file); required, and never given as a flag.
  FERRY_LOG          What to log: a level or a filter, e.g. `info` (the default) or
                     `info,ferry_flow=debug`.
  FERRY_PASSWORD     Give the clients' password here (or in FERRY_PASSWORD_FILE's file)
                     rather than as --password, which other users can read in `ps`.";

#[derive(Subcommand)]
enum Cmd {
    /// Runs the daemon: the PostgreSQL-protocol front end and the mirrors.
    #[command(after_help = SERVER_ENVIRONMENT)]
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
    /// Password clients log in with (SCRAM-SHA-256); prefer the environment or
    /// --password-file, which `ps` does not show.
    #[arg(
        long,
        env = "FERRY_PASSWORD",
        hide_env_values = true,
        required_unless_present = "password_file",
        conflicts_with = "password_file"
    )]
    password: Option<String>,
    /// File holding the password clients log in with (its first line).
    #[arg(long, env = "FERRY_PASSWORD_FILE")]
    password_file: Option<PathBuf>,
    /// Address for the Prometheus endpoint (/metrics) and the health checks (/healthz,
    /// /readyz); off when not given.
    #[arg(long, env = "FERRY_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// File with the 64-hex-character key that seals peer passwords in the catalog.
    #[arg(long, env = "FERRY_SECRET_KEY_FILE")]
    secret_key_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum, default_value = "human")]
    log_format: LogFormat,
    /// PEM certificate chain for TLS with clients (with --tls-key); clients that ask for TLS
    /// are refused it when not given.
    #[arg(long, env = "FERRY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "FERRY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Client sessions at once; the next gets 53300.
    #[arg(long, env = "FERRY_MAX_SESSIONS", default_value_t = 100)]
    max_sessions: usize,
    /// The longest statement (Query, Parse or Bind message) a client may send.
    #[arg(long, env = "FERRY_MAX_STATEMENT_SIZE", default_value = "1MB", value_parser = parse_size)]
    max_statement_size: usize,
    /// The longest message before login.
    #[arg(long, env = "FERRY_MAX_STARTUP_MESSAGE_SIZE", default_value = "8kB", value_parser = parse_size)]
    max_startup_message_size: usize,
    /// Time a client has from connecting to being logged in.
    #[arg(long, env = "FERRY_AUTH_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    auth_timeout: Duration,
    /// A session idle this long is closed; 0: never.
    #[arg(long, env = "FERRY_IDLE_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Longest run of a client's SQL on the catalog (per query string), and longest wait for
    /// a catalog connection.
    #[arg(long, env = "FERRY_STATEMENT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    statement_timeout: Duration,
    /// Catalog connections shared by all sessions for their SQL.
    #[arg(long, env = "FERRY_CATALOG_POOL_SIZE", default_value_t = 4)]
    catalog_pool_size: usize,
    /// The role clients' SQL runs as in the catalog database (created NOLOGIN if missing).
    #[arg(long, env = "FERRY_CATALOG_READER_ROLE", default_value = ferry_catalog::migrate::DEFAULT_READER_ROLE)]
    catalog_reader_role: String,
    /// Failed logins from one address before it is refused for --auth-lockout.
    #[arg(long, env = "FERRY_AUTH_FAILURE_LIMIT", default_value_t = 10)]
    auth_failure_limit: u32,
    /// How long an address is refused after too many failed logins.
    #[arg(long, env = "FERRY_AUTH_LOCKOUT", default_value = "60s", value_parser = parse_duration)]
    auth_lockout: Duration,
    /// How long sessions get to end after SIGTERM before they are closed.
    #[arg(long, env = "FERRY_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration)]
    shutdown_grace: Duration,
    /// How long to wait at start for another daemon on the same catalog to let its lease go
    /// (one that is stopping, or was killed) before refusing to start.
    #[arg(long, env = "FERRY_LEASE_WAIT", default_value = "10s", value_parser = parse_duration)]
    lease_wait: Duration,
}

impl ServerArgs {
    fn settings(&self) -> Result<Settings> {
        if self.max_startup_message_size < 1024 {
            bail!("--max-startup-message-size must be at least 1kB: a startup packet alone can be several hundred bytes");
        }
        if self.max_sessions == 0 || self.catalog_pool_size == 0 {
            bail!("--max-sessions and --catalog-pool-size must be at least 1");
        }
        // An empty value (FERRY_TLS_CERT= in a compose file) means none.
        let given = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
        let tls = match (given(&self.tls_cert), given(&self.tls_key)) {
            (Some(cert), Some(key)) => {
                Some(frontdoor::tls::acceptor(&cert, &key).map_err(anyhow::Error::msg)?)
            }
            (None, None) => None,
            _ => bail!(
                "give both --tls-cert and --tls-key (FERRY_TLS_CERT, FERRY_TLS_KEY), or neither"
            ),
        };
        let password = match (&self.password, &self.password_file) {
            (Some(p), None) => p.clone(),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the password file {}", path.display()))?;
                text.lines().next().unwrap_or_default().to_owned()
            }
            _ => bail!("give the password in FERRY_PASSWORD (or --password) or --password-file"),
        };
        if password.is_empty() {
            bail!("the clients' password is empty");
        }
        Ok(Settings {
            user: self.user.clone(),
            password,
            limits: Limits {
                max_sessions: self.max_sessions,
                max_startup_message: self.max_startup_message_size,
                max_statement: self.max_statement_size,
                auth_timeout: self.auth_timeout,
                idle_timeout: (!self.idle_timeout.is_zero()).then_some(self.idle_timeout),
                auth_failures: self.auth_failure_limit,
                auth_lockout: self.auth_lockout,
                shutdown_grace: self.shutdown_grace,
            },
            reader: ReaderSettings {
                connections: self.catalog_pool_size,
                statement_timeout: self.statement_timeout,
            },
            tls,
        })
    }
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
            "no secret key: Ferry seals peer passwords in the catalog and will not store them in clear; \
             set FERRY_SECRET_KEY to 64 hex characters (e.g. `openssl rand -hex 32`) or pass --secret-key-file"
        ),
    }
}

/// One line per panic, with where it happened, and no backtrace: a panic must not flood
/// the log, whatever a client managed to trigger.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        error!(%location, panic = %message, "a task panicked");
    }));
}

/// This daemon as the catalog's lease names it: host and process.
fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "an unknown host".to_owned());
    format!("on {host} pid {}", std::process::id())
}

/// How often the lease's session is checked.
const LEASE_CHECK_EVERY: Duration = Duration::from_secs(5);

async fn serve(args: ServerArgs) -> Result<()> {
    let key = secret_key(args.secret_key_file.as_ref())?;
    let settings = args.settings()?;
    let options = CatalogOptions {
        reader_role: args.catalog_reader_role.clone(),
    };
    // One daemon per catalog: the lease comes first, before the migrations.
    let lease = Lease::acquire(&args.catalog_url, &holder_name(), args.lease_wait)
        .await
        .map_err(|e| match e {
            ferry_catalog::CatalogError::LeaseHeld { .. } => anyhow::anyhow!(
                "{e}. Only one daemon may run per catalog: stop the other one, or give this one a catalog database of its own"
            ),
            e => anyhow::Error::new(e).context("taking the catalog's lease"),
        })?;
    let (catalog, report) = Catalog::open_with(&args.catalog_url, key, options)
        .await
        .context("opening the catalog")?;
    let applied: Vec<String> = report.applied.iter().map(ToString::to_string).collect();
    info!(migrations_applied = %applied.join(", "), already = report.already.len(), "catalog ready");
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let shared = Shared::with_settings(catalog, settings);
    let resumed = shared
        .engine
        .resume_all()
        .await
        .context("resuming mirrors")?;
    if resumed > 0 {
        info!(mirrors = resumed, "resumed mirrors");
    }
    let shutdown = Shutdown::default();
    // A lease lost to another daemon stops this one.
    let lost = Arc::new(std::sync::Mutex::new(None));
    {
        let (lost, shutdown) = (lost.clone(), shutdown.clone());
        tokio::spawn(async move {
            let e = lease.keep(LEASE_CHECK_EVERY).await;
            error!(error = %e, "the catalog's lease is lost; stopping");
            *lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            shutdown.trigger();
        });
    }

    if let Some(addr) = args.metrics_listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} for metrics"))?;
        tokio::spawn(metrics::serve(
            l,
            metrics::Endpoints {
                metrics: shared.metrics.clone(),
                catalog: shared.catalog.clone(),
                engine: shared.engine.clone(),
            },
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
    // Queries of sessions that were stopped are cancelled on the catalog before we go.
    let grace = shared.front.limits().shutdown_grace;
    let _ = tokio::time::timeout(grace, shared.reader.settle()).await;
    shared.engine.shutdown().await;
    if let Some(e) = lost.lock().unwrap_or_else(|p| p.into_inner()).take() {
        bail!("the catalog's lease was lost: {e}");
    }
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
    log_panics();
    let grace = args.shutdown_grace;
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
    let result = runtime.block_on(serve(args));
    // Whatever still runs on the blocking pool is not waited for past the grace period.
    runtime.shutdown_timeout(grace);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %format!("{e:#}"), "ferry stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
