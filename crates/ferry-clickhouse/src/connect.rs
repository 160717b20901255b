//! Connections to a destination ClickHouse over its HTTP interface.

use ferry_core::peer::ClickhouseConfig;
use ferry_core::ErrorKind;

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
                DestinationError {
                    kind: ErrorKind::Transient,
                    code: None,
                    message: format!("could not connect to ClickHouse at {}: {detail}", cfg.url()),
                    hint: Some("Check that the server is running and that host and port (the HTTP port) are right.".into()),
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
            _ => "XX000",
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

/// A client for the peer's database.
pub fn client(cfg: &ClickhouseConfig) -> clickhouse::Client {
    let compression = if cfg.compress() {
        clickhouse::Compression::Lz4
    } else {
        clickhouse::Compression::None
    };
    let mut c = clickhouse::Client::default()
        .with_url(cfg.url())
        .with_user(&cfg.user)
        .with_database(&cfg.database)
        .with_compression(compression);
    if !cfg.password.is_empty() {
        c = c.with_password(&cfg.password);
    }
    c
}

/// Connects to a peer and checks that it answers in its database, for `CREATE PEER`.
pub async fn check_peer(cfg: &ClickhouseConfig) -> Result<(), DestinationError> {
    if !cfg.disable_tls {
        return Err(DestinationError {
            kind: ErrorKind::Unsupported,
            code: None,
            message: "TLS connections to ClickHouse are not supported by this build of Ferry"
                .into(),
            hint: Some("Set disable_tls = true to connect over plain HTTP.".into()),
            source: None,
        });
    }
    let c = client(cfg);
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
