//! Connections to the catalog database, with TLS as the catalog URL asks.
//!
//! The catalog URL is libpq's: a `postgres://` URL or `key=value` pairs. tokio-postgres
//! reads everything in it but the two TLS options that PostgreSQL peers take too,
//! `sslmode` (`disable`, `prefer` — the default, `require`, `verify-ca`, `verify-full`) and
//! `sslrootcert` (a PEM file, or `system`). Those are taken out here and the TCP stream is
//! opened by `ferry_postgres::tls::open`, the one place where Ferry negotiates and checks
//! TLS with PostgreSQL; tokio-postgres then speaks the protocol over that stream. A socket
//! directory as host connects in plain text, as with libpq.

use std::str::FromStr;
use std::time::Duration;

use ferry_core::peer::{PostgresConfig, SslMode};
use ferry_core::ErrorKind;
use ferry_postgres::connect::SourceError;
use tokio_postgres::config::{Host, SslMode as PgSslMode};
use tokio_postgres::{CancelToken, Client, Config, NoTls};
use tracing::{debug, warn};

use crate::CatalogError;

/// How long opening a catalog connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the catalog is and how to reach it.
pub(crate) struct Target {
    config: Config,
    /// The TCP endpoint and its TLS settings; `None` for a Unix-domain socket.
    tcp: Option<PostgresConfig>,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Target, CatalogError> {
        let invalid = |message: String| CatalogError::Database {
            kind: ErrorKind::InvalidInput,
            message: format!("invalid catalog URL: {message}"),
            source: None,
        };
        let (rest, sslmode, sslrootcert) = split_tls_options(url).map_err(invalid)?;
        let mut config = Config::from_str(&rest).map_err(|e| invalid(e.to_string()))?;
        let ssl_mode = match sslmode.as_deref() {
            None => SslMode::Prefer,
            Some(s) => SslMode::parse(s).ok_or_else(|| {
                invalid(format!(
                    "sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full, not \"{s}\""
                ))
            })?,
        };
        if ssl_mode.verifies() && sslrootcert.is_none() {
            return Err(invalid(format!(
                "sslmode={} needs sslrootcert (a PEM file, or system)",
                ssl_mode.as_str()
            )));
        }
        // TLS is settled before tokio-postgres sees the stream.
        config.ssl_mode(PgSslMode::Disable);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let tcp = match config.get_hosts().first() {
            Some(Host::Tcp(host)) => Some(PostgresConfig {
                host: host.clone(),
                port: config.get_ports().first().copied().unwrap_or(5432),
                user: config.get_user().unwrap_or_default().to_owned(),
                password: String::new(),
                database: config.get_dbname().unwrap_or_default().to_owned(),
                ssl_mode,
                ssl_root_cert: sslrootcert,
            }),
            Some(Host::Unix(_)) => None,
            None => return Err(invalid("no host".into())),
        };
        Ok(Target { config, tcp })
    }

    /// Opens a connection; its connection task runs until the client is dropped.
    pub(crate) async fn connect(&self) -> Result<Client, CatalogError> {
        let timeout = self
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(CONNECT_TIMEOUT);
        let attempt = async {
            let Some(tcp) = &self.tcp else {
                let (client, connection) = self.config.connect(NoTls).await?;
                spawn(connection);
                return Ok(client);
            };
            let stream = ferry_postgres::tls::open(tcp).await.map_err(from_source)?;
            let refused = match self.config.connect_raw(stream, NoTls).await {
                Ok((client, connection)) => {
                    spawn(connection);
                    return Ok(client);
                }
                Err(e) => e,
            };
            // sslmode=allow: once more with TLS if the server refused the plain connection.
            let retry = ferry_postgres::tls::allow_fallback(tcp).filter(|_| {
                refused
                    .code()
                    .is_some_and(|c| ferry_postgres::tls::refused_in_plain(c.code()))
            });
            let Some(with_tls) = retry else {
                return Err(refused.into());
            };
            let stream = ferry_postgres::tls::open(&with_tls)
                .await
                .map_err(from_source)?;
            let (client, connection) = self.config.connect_raw(stream, NoTls).await?;
            spawn(connection);
            Ok(client)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(CatalogError::Database {
                kind: ErrorKind::Transient,
                message: format!(
                    "could not connect within {}s",
                    timeout.as_secs_f32().round()
                ),
                source: None,
            }),
        }
    }

    /// Asks the server to cancel what a connection is running, over a connection of its
    /// own (TLS as configured). Best effort: a failure is logged and otherwise ignored.
    pub(crate) async fn cancel(&self, token: CancelToken) {
        let result = match &self.tcp {
            None => token.cancel_query(NoTls).await,
            Some(tcp) => match ferry_postgres::tls::open(tcp).await {
                Ok(stream) => token.cancel_query_raw(stream, NoTls).await,
                Err(e) => {
                    warn!(error = %e, "could not reach the catalog to cancel a query");
                    return;
                }
            },
        };
        if let Err(e) = result {
            warn!(error = %e, "could not cancel a catalog query");
        }
    }
}

fn spawn<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "catalog connection closed");
        }
    });
}

/// A TLS or network failure, described by the code that opens source connections.
fn from_source(e: SourceError) -> CatalogError {
    let message = match &e.hint {
        Some(hint) => format!("{} ({hint})", e.message),
        None => e.message.clone(),
    };
    CatalogError::Database {
        kind: e.kind,
        message,
        source: None,
    }
}

/// Takes `sslmode` and `sslrootcert` out of a libpq connection string (URL or key/value
/// form), returning the rest and the two values.
fn split_tls_options(url: &str) -> Result<(String, Option<String>, Option<String>), String> {
    let mut sslmode = None;
    let mut sslrootcert = None;
    let mut take = |key: &str, value: String| match key {
        "sslmode" => {
            sslmode = Some(value);
            true
        }
        "sslrootcert" => {
            sslrootcert = Some(value);
            true
        }
        _ => false,
    };
    let trimmed = url.trim();
    let rest = if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let (base, query) = match trimmed.split_once('?') {
            Some((base, query)) => (base, query),
            None => (trimmed, ""),
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(key, percent_decode(value)?) {
                kept.push(pair);
            }
        }
        if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else {
        let mut kept = String::new();
        for (key, value, raw) in key_values(trimmed)? {
            if !take(key, value) {
                kept.push_str(raw);
                kept.push(' ');
            }
        }
        kept.trim_end().to_owned()
    };
    Ok((rest, sslmode, sslrootcert))
}

/// `%XX` escapes of a URL query value.
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("invalid percent escape in \"{s}\""))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("\"{s}\" is not UTF-8 once decoded"))
}

/// The `key = value` pairs of a key/value connection string, each with its raw text.
/// Values are bare words or single-quoted with `\` escapes, as libpq reads them.
fn key_values(s: &str) -> Result<Vec<(&str, String, &str)>, String> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let start = rest;
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("missing \"=\" after \"{rest}\""))?;
        let key = rest[..eq].trim();
        rest = rest[eq + 1..].trim_start();
        let mut value = String::new();
        if let Some(quoted) = rest.strip_prefix('\'') {
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    '\'' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let end = end.ok_or_else(|| format!("unterminated quoted value for {key}"))?;
            rest = &quoted[end..];
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            value.push_str(&rest[..end]);
            rest = &rest[end..];
        }
        let raw = &start[..start.len() - rest.len()];
        out.push((key, value, raw));
        rest = rest.trim_start();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_come_out_of_urls() {
        let (rest, mode, root) = split_tls_options(
            "postgres://u:p%40ss@h:5433/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p%40ss@h:5433/db?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (rest, mode, root) = split_tls_options("postgresql://h/db?sslmode=disable").unwrap();
        assert_eq!(
            (rest.as_str(), mode.as_deref(), root),
            ("postgresql://h/db", Some("disable"), None)
        );
    }

    #[test]
    fn tls_options_come_out_of_key_values() {
        let (rest, mode, root) = split_tls_options(
            "host=h port = 5433 sslmode=require password='a b\\'c' sslrootcert = '/x y/ca.pem'",
        )
        .unwrap();
        assert_eq!(rest, "host=h port = 5433 password='a b\\'c'");
        assert_eq!(mode.as_deref(), Some("require"));
        assert_eq!(root.as_deref(), Some("/x y/ca.pem"));
        assert!(split_tls_options("host=h password='open").is_err());
        assert!(split_tls_options("host").is_err());
    }

    #[test]
    fn targets_check_their_tls_settings() {
        let t =
            Target::parse("postgres://u@db.example:6000/c?sslmode=verify-ca&sslrootcert=system")
                .unwrap();
        let tcp = t.tcp.unwrap();
        assert_eq!(
            (tcp.host.as_str(), tcp.port, tcp.ssl_mode),
            ("db.example", 6000, SslMode::VerifyCa)
        );
        let e = Target::parse("postgres://h/c?sslmode=verify-full")
            .err()
            .unwrap();
        assert!(e.to_string().contains("sslrootcert"), "{e}");
        let e = Target::parse("postgres://h/c?sslmode=sometimes")
            .err()
            .unwrap();
        assert!(e.to_string().contains("sslmode must be one of"), "{e}");
        let t = Target::parse("host=/var/run/postgresql dbname=c").unwrap();
        assert!(t.tcp.is_none());
    }
}
