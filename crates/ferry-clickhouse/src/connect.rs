//! Connections to a destination ClickHouse over its HTTP interface.

use std::time::Duration;

use ferry_core::peer::ClickhouseConfig;
use ferry_core::ErrorKind;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;

/// A failure talking to a destination ClickHouse.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DestinationError {
    pub kind: ErrorKind,
    /// ClickHouse's numeric error code, when it answered with one.
    pub code: Option<u32>,
    pub message: String,
    pub hint: Option<String>,
    #[source]
    pub source: Option<clickhouse::error::Error>,
}

impl DestinationError {
    /// Classifies an error of the clickhouse client for a server at `cfg`.
    pub fn from_client(cfg: &ClickhouseConfig, e: clickhouse::error::Error) -> DestinationError {
        use clickhouse::error::Error as E;
        match &e {
            E::BadResponse(text) => {
                let code = server_code(text);
                let kind = match code {
                    Some(516) | Some(192) | Some(497) | Some(194) => ErrorKind::Permission,
                    Some(81) | Some(60) => ErrorKind::NotFound,
                    Some(57) | Some(82) => ErrorKind::AlreadyExists,
                    // TOO_MANY_SIMULTANEOUS_QUERIES, MEMORY_LIMIT_EXCEEDED, TIMEOUT_EXCEEDED,
                    // NETWORK_ERROR, SOCKET_TIMEOUT, ALL_CONNECTION_TRIES_FAILED, TABLE_IS_READ_ONLY
                    Some(202) | Some(241) | Some(159) | Some(210) | Some(209) | Some(279)
                    | Some(242) => ErrorKind::Transient,
                    Some(_) => ErrorKind::Internal,
                    // An HTTP error without a ClickHouse code: a proxy, or the server restarting.
                    None => ErrorKind::Transient,
                };
                DestinationError {
                    kind,
                    code,
                    message: format!(
                        "ClickHouse at {}:{}: {}",
                        cfg.host,
                        cfg.port,
                        first_line(text)
                    ),
                    hint: None,
                    source: Some(e),
                }
            }
            E::Network(inner) => {
                let detail = innermost(inner.as_ref());
                if let Some(tls) = ferry_core::tls::find_rustls_error(inner.as_ref()) {
                    return DestinationError {
                        kind: ErrorKind::Misconfigured,
                        code: None,
                        message: format!(
                            "TLS handshake with ClickHouse at {} failed: {tls}",
                            cfg.url()
                        ),
                        hint: Some(
                            ferry_core::tls::certificate_hint(
                                tls,
                                &cfg.host,
                                cfg.ssl_root_cert
                                    .as_deref()
                                    .unwrap_or("the system's certificate authorities"),
                                "",
                            )
                            .unwrap_or_else(|| {
                                "Check that the port is ClickHouse's HTTPS port, or set \
                                 disable_tls = true for plain HTTP."
                                    .into()
                            }),
                        ),
                        source: Some(e),
                    };
                }
                DestinationError {
                    kind: ErrorKind::Transient,
                    code: None,
                    message: format!("could not connect to ClickHouse at {}: {detail}", cfg.url()),
                    hint: Some(if cfg.disable_tls {
                        "Check that the server is running and that host and port (the HTTP port) are right.".into()
                    } else {
                        "Check that the server is running and that host and port (the HTTPS port) are right; \
                         for plain HTTP set disable_tls = true.".into()
                    }),
                    source: Some(e),
                }
            }
            E::TimedOut => DestinationError {
                kind: ErrorKind::Transient,
                code: None,
                message: format!("ClickHouse at {} timed out", cfg.url()),
                hint: None,
                source: Some(e),
            },
            _ => DestinationError {
                kind: ErrorKind::Internal,
                code: None,
                message: format!("ClickHouse at {}: {e}", cfg.url()),
                hint: None,
                source: Some(e),
            },
        }
    }

    /// The SQLSTATE that best tells a PostgreSQL client what went wrong.
    pub fn sqlstate(&self) -> &'static str {
        match (self.kind, self.code) {
            (_, Some(81)) => "3D000",
            (ErrorKind::Permission, _) => "28P01",
            (ErrorKind::NotFound, _) => "42704",
            (ErrorKind::AlreadyExists, _) => "42P07",
            (ErrorKind::Transient, None) => "08001",
            (ErrorKind::Transient, Some(_)) => "08006",
            (ErrorKind::Misconfigured, None) => "08001",
            (ErrorKind::InvalidInput, _) => "22023",
            _ => "XX000",
        }
    }
}

impl From<DestinationError> for ferry_core::Error {
    fn from(e: DestinationError) -> Self {
        ferry_core::Error {
            kind: e.kind,
            sqlstate: e.sqlstate().to_owned(),
            message: e.message,
            hint: e.hint,
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(text)
        .trim()
}

fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The `Code: N.` ClickHouse puts at the start of an error text.
fn server_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// How long an idle pooled connection is kept: under ClickHouse's own keep-alive timeout
/// (3 s by default), so the server never closes one just as Ferry reuses it.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// A client for the peer's database: HTTPS unless `disable_tls`, trusting the authorities of
/// `sslrootcert` (the system's by default) and checking that the certificate names `host`.
pub fn client(cfg: &ClickhouseConfig) -> Result<clickhouse::Client, DestinationError> {
    let compression = if cfg.compress() {
        clickhouse::Compression::Lz4
    } else {
        clickhouse::Compression::None
    };
    let mut http = HttpConnector::new();
    http.set_keepalive(Some(TCP_KEEPALIVE));
    http.set_nodelay(true);
    let mut builder = HyperClient::builder(TokioExecutor::new());
    builder.pool_idle_timeout(POOL_IDLE_TIMEOUT);
    let roots = |root: Option<&str>| {
        ferry_core::tls::root_store(root).map_err(|e| DestinationError {
            kind: ErrorKind::InvalidInput,
            code: None,
            message: format!("TLS settings for ClickHouse at {}: {e}", cfg.url()),
            hint: None,
            source: None,
        })
    };
    let base = if cfg.disable_tls {
        // A root file that was named must be readable even when TLS is off: naming one that
        // cannot be used is a mistake to report, not to ignore until TLS is turned on.
        if let Some(root) = cfg.ssl_root_cert.as_deref() {
            if root != ferry_core::peer::SYSTEM_ROOT_CERTS {
                roots(Some(root))?;
            }
        }
        clickhouse::Client::with_http_client(builder.build(http))
    } else {
        let roots = roots(cfg.ssl_root_cert.as_deref())?;
        let tls = rustls::ClientConfig::builder_with_provider(ferry_core::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| DestinationError {
                kind: ErrorKind::Internal,
                code: None,
                message: format!("TLS settings for ClickHouse at {}: {e}", cfg.url()),
                hint: None,
                source: None,
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        clickhouse::Client::with_http_client(builder.build(https))
    };
    let mut c = base
        .with_url(cfg.url())
        .with_user(&cfg.user)
        .with_database(&cfg.database)
        .with_compression(compression);
    if !cfg.password.is_empty() {
        c = c.with_password(&cfg.password);
    }
    Ok(c)
}

/// Connects to a peer and checks that it answers in its database, for `CREATE PEER`.
pub async fn check_peer(cfg: &ClickhouseConfig) -> Result<(), DestinationError> {
    let c = client(cfg)?;
    let fut = c.query("SELECT 1").fetch_one::<u8>();
    match tokio::time::timeout(std::time::Duration::from_secs(10), fut).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(DestinationError::from_client(cfg, e)),
        Err(_) => Err(DestinationError::from_client(
            cfg,
            clickhouse::error::Error::TimedOut,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_server_code() {
        assert_eq!(
            server_code("Code: 81. DB::Exception: Database x does not exist."),
            Some(81)
        );
        assert_eq!(server_code("bad gateway"), None);
    }
}
