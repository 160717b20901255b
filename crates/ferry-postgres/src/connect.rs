//! Ordinary (non-replication) connections to a source PostgreSQL.

use std::time::Duration;

use ferry_core::peer::PostgresConfig;
use ferry_core::ErrorKind;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls};
use tracing::debug;

use crate::tls;

/// How long a connection attempt may take before the peer counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A failure talking to a source PostgreSQL.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    pub kind: ErrorKind,
    /// The SQLSTATE PostgreSQL answered with, or the one that best describes a network failure.
    pub sqlstate: String,
    pub message: String,
    pub hint: Option<String>,
    #[source]
    pub source: Option<tokio_postgres::Error>,
}

impl SourceError {
    /// Describes an error of a connection to `cfg`, keeping PostgreSQL's own SQLSTATE.
    pub fn from_pg(cfg: &PostgresConfig, e: tokio_postgres::Error) -> SourceError {
        if let Some(db) = e.as_db_error() {
            let code = db.code().code().to_owned();
            let kind = kind_of_sqlstate(&code);
            let hint = db.hint().map(str::to_owned);
            return SourceError {
                kind,
                sqlstate: code,
                message: format!("PostgreSQL at {}:{}: {}", cfg.host, cfg.port, db.message()),
                hint,
                source: Some(e),
            };
        }
        let detail = std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_else(|| e.to_string());
        SourceError {
            kind: ErrorKind::Transient,
            sqlstate: "08001".into(),
            message: format!(
                "could not connect to PostgreSQL at {}:{}: {detail}",
                cfg.host, cfg.port
            ),
            hint: Some("Check that the server is running and that host and port are right.".into()),
            source: Some(e),
        }
    }
}

pub use ferry_core::error::kind_of_sqlstate;

impl From<SourceError> for ferry_core::Error {
    fn from(e: SourceError) -> Self {
        ferry_core::Error {
            kind: e.kind,
            sqlstate: e.sqlstate,
            message: e.message,
            hint: e.hint,
        }
    }
}

/// The session settings of every source connection, ordinary and replication, as the `options`
/// startup parameter. The text forms of values (pgoutput's text mode, types the snapshot reads
/// as text) depend on them, and must be the same on every path.
pub const STARTUP_OPTIONS: &str = "-c datestyle=ISO -c timezone=UTC -c intervalstyle=postgres \
                                   -c extra_float_digits=3 -c bytea_output=hex";

/// The tokio-postgres settings for a peer.
pub fn pg_config(cfg: &PostgresConfig, application_name: &str) -> Config {
    let mut c = Config::new();
    c.host(&cfg.host)
        .port(cfg.port)
        .user(&cfg.user)
        .dbname(&cfg.database)
        .application_name(application_name)
        .options(STARTUP_OPTIONS)
        .connect_timeout(CONNECT_TIMEOUT);
    if !cfg.password.is_empty() {
        c.password(&cfg.password);
    }
    c
}

/// Opens a connection; the connection task runs in the background until the client drops.
///
/// Over TCP the stream comes from [`tls::open`], which negotiates TLS as the peer's `sslmode`
/// asks, so ordinary and replication connections share one TLS path; a socket directory as
/// `host` connects through tokio-postgres directly (no TLS there, as with libpq).
pub async fn connect(cfg: &PostgresConfig, application_name: &str) -> Result<Client, SourceError> {
    match connect_once(cfg, application_name).await {
        Err(e) if tls::refused_in_plain(&e.sqlstate) => match tls::allow_fallback(cfg) {
            Some(with_tls) => connect_once(&with_tls, application_name).await,
            None => Err(e),
        },
        other => other,
    }
}

async fn connect_once(cfg: &PostgresConfig, application_name: &str) -> Result<Client, SourceError> {
    let mut pg = pg_config(cfg, application_name);
    let attempt = tokio::time::timeout(CONNECT_TIMEOUT, async {
        if cfg.host.starts_with('/') {
            let (client, connection) = pg
                .connect(NoTls)
                .await
                .map_err(|e| SourceError::from_pg(cfg, e))?;
            spawn_connection(connection);
            return Ok(client);
        }
        let stream = tls::open(cfg).await?;
        // TLS, if any, is already in place: tokio-postgres must not ask for it again.
        pg.ssl_mode(SslMode::Disable);
        let (client, connection) = pg
            .connect_raw(stream, NoTls)
            .await
            .map_err(|e| SourceError::from_pg(cfg, e))?;
        spawn_connection(connection);
        Ok(client)
    })
    .await;
    match attempt {
        Ok(r) => r,
        Err(_) => Err(SourceError {
            kind: ErrorKind::Transient,
            sqlstate: "08001".into(),
            message: format!(
                "could not connect to PostgreSQL at {}:{}: timed out after {}s",
                cfg.host,
                cfg.port,
                CONNECT_TIMEOUT.as_secs()
            ),
            hint: Some("Check that the host is reachable from Ferry.".into()),
            source: None,
        }),
    }
}

fn spawn_connection<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "source connection closed");
        }
    });
}

/// Connects to a peer and checks that it answers, for `CREATE PEER`.
pub async fn check_peer(cfg: &PostgresConfig) -> Result<(), SourceError> {
    let client = connect(cfg, "ferry").await?;
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|e| SourceError::from_pg(cfg, e))?;
    Ok(())
}
