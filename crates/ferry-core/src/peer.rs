//! Peers: the PostgreSQL and ClickHouse servers Ferry reads from and writes to.
//!
//! A peer is declared with `CREATE PEER name FROM POSTGRES|CLICKHOUSE WITH (option = value, …)`.
//! [`PeerConfig::from_options`] turns that option list into typed settings, naming the option
//! in every error, so a typo never falls back to a default silently.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kind of server a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerKind {
    Postgres,
    Clickhouse,
}

impl PeerKind {
    /// The name stored in the catalog and shown in `peers.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerKind::Postgres => "postgres",
            PeerKind::Clickhouse => "clickhouse",
        }
    }

    /// Parses the catalog name back.
    pub fn from_catalog(s: &str) -> Option<PeerKind> {
        match s {
            "postgres" => Some(PeerKind::Postgres),
            "clickhouse" => Some(PeerKind::Clickhouse),
            _ => None,
        }
    }
}

impl fmt::Display for PeerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An option value as written in a `WITH (…)` list.
#[derive(Debug, Clone, PartialEq)]
pub enum OptionValue {
    /// `'text'`
    String(String),
    /// `5432`, `-1`, `0.5`: the literal's text.
    Number(String),
    /// `true` / `false`
    Bool(bool),
    /// A bare word, e.g. `disable`.
    Ident(String),
}

impl OptionValue {
    fn type_name(&self) -> &'static str {
        match self {
            OptionValue::String(_) => "a string",
            OptionValue::Number(_) => "a number",
            OptionValue::Bool(_) => "a boolean",
            OptionValue::Ident(_) => "a bare word",
        }
    }
}

/// Why an option list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("unknown option \"{name}\" for {context}")]
    Unknown {
        name: String,
        context: String,
        known: Vec<&'static str>,
    },
    #[error("missing required option \"{name}\" for {context}")]
    Missing { name: &'static str, context: String },
    #[error("option \"{name}\" must be {expected}, got {got}")]
    WrongType {
        name: String,
        expected: &'static str,
        got: String,
    },
    #[error("option \"{name}\" is given more than once")]
    Duplicate { name: String },
}

impl OptionError {
    /// A hint listing the accepted options, where that helps.
    pub fn hint(&self) -> Option<String> {
        match self {
            OptionError::Unknown { known, .. } => {
                Some(format!("Valid options are: {}.", known.join(", ")))
            }
            OptionError::Missing {
                name: "sslrootcert",
                ..
            } => Some(
                "Give sslrootcert = '/path/to/root.crt' (a PEM file on Ferry's host), or \
                 'system' to trust the operating system's certificate authorities."
                    .into(),
            ),
            _ => None,
        }
    }
}

/// Reads typed options out of a `WITH (…)` list, remembering which were used.
pub struct OptionReader<'a> {
    context: String,
    options: &'a [(String, OptionValue)],
    known: Vec<&'static str>,
}

impl<'a> OptionReader<'a> {
    /// Checks for duplicates up front; `context` names the thing in errors ("a POSTGRES peer").
    pub fn new(
        context: impl Into<String>,
        options: &'a [(String, OptionValue)],
    ) -> Result<Self, OptionError> {
        for (i, (name, _)) in options.iter().enumerate() {
            if options[..i].iter().any(|(n, _)| n == name) {
                return Err(OptionError::Duplicate { name: name.clone() });
            }
        }
        Ok(OptionReader {
            context: context.into(),
            options,
            known: Vec::new(),
        })
    }

    fn find(&mut self, name: &'static str) -> Option<&'a OptionValue> {
        self.known.push(name);
        self.options.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    fn wrong(name: &str, expected: &'static str, got: &OptionValue) -> OptionError {
        OptionError::WrongType {
            name: name.to_owned(),
            expected,
            got: got.type_name().to_owned(),
        }
    }

    /// A string option; bare words are accepted as strings too.
    pub fn string(&mut self, name: &'static str) -> Result<Option<String>, OptionError> {
        match self.find(name) {
            None => Ok(None),
            Some(OptionValue::String(s)) | Some(OptionValue::Ident(s)) => Ok(Some(s.clone())),
            Some(v) => Err(Self::wrong(name, "a string", v)),
        }
    }

    /// A required string option.
    pub fn required_string(&mut self, name: &'static str) -> Result<String, OptionError> {
        self.string(name)?.ok_or_else(|| OptionError::Missing {
            name,
            context: self.context.clone(),
        })
    }

    /// An integer option within `min..=max`; a quoted number is accepted too.
    pub fn integer(
        &mut self,
        name: &'static str,
        min: i64,
        max: i64,
    ) -> Result<Option<i64>, OptionError> {
        let expected = "an integer";
        let v = match self.find(name) {
            None => return Ok(None),
            Some(v) => v,
        };
        let text = match v {
            OptionValue::Number(s) | OptionValue::String(s) => s,
            v => return Err(Self::wrong(name, expected, v)),
        };
        let n: i64 = text.trim().parse().map_err(|_| OptionError::WrongType {
            name: name.to_owned(),
            expected,
            got: format!("{text:?}"),
        })?;
        if n < min || n > max {
            return Err(OptionError::WrongType {
                name: name.to_owned(),
                expected: "within its range",
                got: format!("{n} (allowed: {min} to {max})"),
            });
        }
        Ok(Some(n))
    }

    /// A boolean option: `true` or `false`, unquoted. Nothing else is taken for one (not
    /// `'true'`, `'yes'`, `on` or `1`), so that a value is never read as what it was not meant.
    pub fn boolean(&mut self, name: &'static str) -> Result<Option<bool>, OptionError> {
        let expected = "true or false (unquoted)";
        match self.find(name) {
            None => Ok(None),
            Some(OptionValue::Bool(b)) => Ok(Some(*b)),
            Some(OptionValue::String(s)) => Err(OptionError::WrongType {
                name: name.to_owned(),
                expected,
                got: format!("the string '{}'", s.replace('\'', "''")),
            }),
            Some(OptionValue::Ident(s)) | Some(OptionValue::Number(s)) => {
                Err(OptionError::WrongType {
                    name: name.to_owned(),
                    expected,
                    got: s.clone(),
                })
            }
        }
    }

    /// Fails on the first option that no reader asked for.
    pub fn finish(self) -> Result<(), OptionError> {
        for (name, _) in self.options {
            if !self.known.contains(&name.as_str()) {
                let mut known = self.known.clone();
                known.sort_unstable();
                return Err(OptionError::Unknown {
                    name: name.clone(),
                    context: self.context,
                    known,
                });
            }
        }
        Ok(())
    }
}

/// Whether and how a connection to a PostgreSQL peer uses TLS: libpq's `sslmode`, whose
/// names and meanings users know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// Plain TCP first; TLS (certificate not checked) only when the server refuses a plain
    /// connection.
    Allow,
    /// TLS when the server offers it, plain otherwise; the certificate is not checked.
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS, with a certificate issued by a trusted authority (`sslrootcert`).
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The option value, as written in `WITH (sslmode = …)`.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Parses an option value (case-insensitive).
    pub fn parse(s: &str) -> Option<SslMode> {
        [
            SslMode::Disable,
            SslMode::Allow,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ]
        .into_iter()
        .find(|m| m.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether the server's certificate must chain to a trusted root.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `sslrootcert` value that means "the operating system's trusted roots".
pub const SYSTEM_ROOT_CERTS: &str = "system";

/// Connection settings of a PostgreSQL peer.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    #[serde(skip)]
    pub password: String,
    pub database: String,
    /// TLS use; peers stored before TLS existed read back as `prefer`, libpq's default.
    #[serde(default)]
    pub ssl_mode: SslMode,
    /// A PEM file (on Ferry's host) of the certificates to trust for `verify-ca` and
    /// `verify-full`, or [`SYSTEM_ROOT_CERTS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_root_cert: Option<String>,
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("ssl_mode", &self.ssl_mode)
            .finish_non_exhaustive()
    }
}

/// Connection settings of a ClickHouse peer (over its HTTP interface).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClickhouseConfig {
    pub host: String,
    /// The HTTP port (8123 by default).
    pub port: u16,
    pub user: String,
    #[serde(skip)]
    pub password: String,
    pub database: String,
    pub disable_tls: bool,
    /// A PEM file of the authorities to trust over HTTPS; `None` trusts the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_root_cert: Option<String>,
    /// Compression of inserts: `Some(true)` lz4, `Some(false)` none; `None` decides by host
    /// (none on loopback, where it only costs CPU; lz4 elsewhere).
    #[serde(default)]
    pub compression: Option<bool>,
}

impl ClickhouseConfig {
    /// Whether inserts are compressed (see [`ClickhouseConfig::compression`]).
    pub fn compress(&self) -> bool {
        self.compression.unwrap_or_else(|| {
            let h = self.host.trim_matches(|c| c == '[' || c == ']');
            !(h == "localhost" || h == "::1" || h.starts_with("127."))
        })
    }

    /// The base URL of the HTTP interface.
    pub fn url(&self) -> String {
        let scheme = if self.disable_tls { "http" } else { "https" };
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for ClickhouseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickhouseConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("disable_tls", &self.disable_tls)
            .finish_non_exhaustive()
    }
}

/// A peer's typed settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerConfig {
    Postgres(PostgresConfig),
    Clickhouse(ClickhouseConfig),
}

impl PeerConfig {
    /// The kind of peer.
    pub fn kind(&self) -> PeerKind {
        match self {
            PeerConfig::Postgres(_) => PeerKind::Postgres,
            PeerConfig::Clickhouse(_) => PeerKind::Clickhouse,
        }
    }

    /// The secret to store encrypted, apart from the other settings.
    pub fn password(&self) -> &str {
        match self {
            PeerConfig::Postgres(c) => &c.password,
            PeerConfig::Clickhouse(c) => &c.password,
        }
    }

    /// Sets the secret after the settings were read back from the catalog.
    pub fn set_password(&mut self, password: String) {
        match self {
            PeerConfig::Postgres(c) => c.password = password,
            PeerConfig::Clickhouse(c) => c.password = password,
        }
    }

    /// The settings other than the password, as stored in the catalog.
    pub fn to_json(&self) -> serde_json::Value {
        let v = match self {
            PeerConfig::Postgres(c) => serde_json::to_value(c),
            PeerConfig::Clickhouse(c) => serde_json::to_value(c),
        };
        v.unwrap_or(serde_json::Value::Null)
    }

    /// Reads settings stored by [`PeerConfig::to_json`]; the password is set apart.
    pub fn from_json(
        kind: PeerKind,
        value: serde_json::Value,
    ) -> Result<PeerConfig, serde_json::Error> {
        Ok(match kind {
            PeerKind::Postgres => PeerConfig::Postgres(serde_json::from_value(value)?),
            PeerKind::Clickhouse => PeerConfig::Clickhouse(serde_json::from_value(value)?),
        })
    }

    /// Types and checks a `CREATE PEER … WITH (…)` option list.
    pub fn from_options(
        kind: PeerKind,
        options: &[(String, OptionValue)],
    ) -> Result<PeerConfig, OptionError> {
        match kind {
            PeerKind::Postgres => {
                let mut r = OptionReader::new("a POSTGRES peer", options)?;
                let cfg = PostgresConfig {
                    host: r.required_string("host")?,
                    port: r.integer("port", 1, 65535)?.unwrap_or(5432) as u16,
                    user: r.required_string("user")?,
                    password: r.string("password")?.unwrap_or_default(),
                    database: r.required_string("database")?,
                    ssl_mode: match r.string("sslmode")? {
                        None => SslMode::default(),
                        Some(s) => SslMode::parse(&s).ok_or_else(|| OptionError::WrongType {
                            name: "sslmode".into(),
                            expected:
                                "one of disable, allow, prefer, require, verify-ca, verify-full",
                            got: format!("{s:?}"),
                        })?,
                    },
                    ssl_root_cert: r.string("sslrootcert")?.filter(|s| !s.is_empty()),
                };
                r.finish()?;
                if cfg.ssl_mode.verifies() && cfg.ssl_root_cert.is_none() {
                    return Err(OptionError::Missing {
                        name: "sslrootcert",
                        context: format!("sslmode = {}", cfg.ssl_mode),
                    });
                }
                Ok(PeerConfig::Postgres(cfg))
            }
            PeerKind::Clickhouse => {
                let mut r = OptionReader::new("a CLICKHOUSE peer", options)?;
                let cfg = ClickhouseConfig {
                    host: r.required_string("host")?,
                    port: r.integer("port", 1, 65535)?.unwrap_or(8123) as u16,
                    user: r.string("user")?.unwrap_or_else(|| "default".to_owned()),
                    password: r.string("password")?.unwrap_or_default(),
                    database: r
                        .string("database")?
                        .unwrap_or_else(|| "default".to_owned()),
                    disable_tls: r.boolean("disable_tls")?.unwrap_or(false),
                    ssl_root_cert: r.string("sslrootcert")?.filter(|s| !s.is_empty()),
                    compression: match r.string("compression")?.as_deref() {
                        None => None,
                        Some("lz4") => Some(true),
                        Some("none") => Some(false),
                        Some(other) => {
                            return Err(OptionError::WrongType {
                                name: "compression".into(),
                                expected: "'lz4' or 'none'",
                                got: format!("{other:?}"),
                            })
                        }
                    },
                };
                r.finish()?;
                Ok(PeerConfig::Clickhouse(cfg))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[(&str, OptionValue)]) -> Vec<(String, OptionValue)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect()
    }

    fn s(v: &str) -> OptionValue {
        OptionValue::String(v.into())
    }

    #[test]
    fn postgres_options_typed() {
        let o = opts(&[
            ("host", s("db")),
            ("port", OptionValue::Number("6543".into())),
            ("user", s("u")),
            ("password", s("p")),
            ("database", s("d")),
        ]);
        let PeerConfig::Postgres(c) = PeerConfig::from_options(PeerKind::Postgres, &o).unwrap()
        else {
            panic!("wrong kind")
        };
        assert_eq!(
            (c.host.as_str(), c.port, c.password.as_str()),
            ("db", 6543, "p")
        );
    }

    #[test]
    fn unknown_missing_and_wrong_type_name_the_option() {
        let base = [("host", s("h")), ("user", s("u")), ("database", s("d"))];
        let mut o = opts(&base);
        o.push(("hots".into(), s("x")));
        let e = PeerConfig::from_options(PeerKind::Postgres, &o).unwrap_err();
        assert!(
            matches!(&e, OptionError::Unknown { name, .. } if name == "hots"),
            "{e}"
        );
        assert!(e.hint().unwrap().contains("host"));

        let e = PeerConfig::from_options(PeerKind::Postgres, &opts(&base[..2])).unwrap_err();
        assert_eq!(
            e,
            OptionError::Missing {
                name: "database",
                context: "a POSTGRES peer".into()
            }
        );

        let mut o = opts(&base);
        o.push(("port".into(), s("abc")));
        let e = PeerConfig::from_options(PeerKind::Postgres, &o).unwrap_err();
        assert!(
            matches!(&e, OptionError::WrongType { name, .. } if name == "port"),
            "{e}"
        );

        let mut o = opts(&base);
        o.push(("port".into(), OptionValue::Number("70000".into())));
        assert!(PeerConfig::from_options(PeerKind::Postgres, &o).is_err());

        let o = opts(&[
            ("host", s("h")),
            ("disable_tls", OptionValue::Number("1".into())),
        ]);
        let e = PeerConfig::from_options(PeerKind::Clickhouse, &o).unwrap_err();
        assert!(
            matches!(&e, OptionError::WrongType { name, .. } if name == "disable_tls"),
            "{e}"
        );
    }

    #[test]
    fn booleans_are_only_true_and_false() {
        let with = |v: OptionValue| {
            let o = opts(&[("host", s("h")), ("disable_tls", v)]);
            PeerConfig::from_options(PeerKind::Clickhouse, &o)
        };
        assert!(matches!(
            with(OptionValue::Bool(true)),
            Ok(PeerConfig::Clickhouse(ClickhouseConfig {
                disable_tls: true,
                ..
            }))
        ));
        for v in [
            s("yes"),
            s("true"),
            s("on"),
            OptionValue::Ident("on".into()),
            OptionValue::Ident("yes".into()),
            OptionValue::Number("1".into()),
        ] {
            let e = with(v.clone()).unwrap_err();
            assert!(
                matches!(&e, OptionError::WrongType { name, expected, .. }
                    if name == "disable_tls" && expected.contains("true or false")),
                "{v:?}: {e}"
            );
        }
        let e = with(s("yes")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "option \"disable_tls\" must be true or false (unquoted), got the string 'yes'"
        );
    }

    #[test]
    fn sslmode_takes_libpq_names_including_allow() {
        for name in ["disable", "allow", "prefer", "require"] {
            let o = opts(&[
                ("host", s("h")),
                ("user", s("u")),
                ("database", s("d")),
                ("sslmode", s(name)),
            ]);
            let Ok(PeerConfig::Postgres(c)) = PeerConfig::from_options(PeerKind::Postgres, &o)
            else {
                panic!("sslmode {name} refused");
            };
            assert_eq!(c.ssl_mode.as_str(), name);
        }
        let o = opts(&[
            ("host", s("h")),
            ("user", s("u")),
            ("database", s("d")),
            ("sslmode", s("sometimes")),
        ]);
        assert!(PeerConfig::from_options(PeerKind::Postgres, &o).is_err());
    }

    #[test]
    fn duplicate_option_refused() {
        let o = opts(&[("host", s("a")), ("host", s("b"))]);
        assert_eq!(
            PeerConfig::from_options(PeerKind::Clickhouse, &o).unwrap_err(),
            OptionError::Duplicate {
                name: "host".into()
            }
        );
    }

    #[test]
    fn json_never_holds_the_password() {
        let o = opts(&[
            ("host", s("h")),
            ("password", s("secret")),
            ("disable_tls", OptionValue::Bool(true)),
        ]);
        let cfg = PeerConfig::from_options(PeerKind::Clickhouse, &o).unwrap();
        let json = cfg.to_json();
        assert!(!json.to_string().contains("secret"));
        let mut back = PeerConfig::from_json(PeerKind::Clickhouse, json).unwrap();
        back.set_password("secret".into());
        assert_eq!(back, cfg);
        assert!(!format!("{cfg:?}").contains("secret"));
    }

    #[test]
    fn compression_defaults_by_host_and_can_be_set() {
        let cfg = |host: &str, c: Option<&str>| {
            let mut o = opts(&[("host", s(host))]);
            if let Some(c) = c {
                o.push(("compression".into(), s(c)));
            }
            match PeerConfig::from_options(PeerKind::Clickhouse, &o) {
                Ok(PeerConfig::Clickhouse(c)) => Ok(c.compress()),
                Ok(_) => unreachable!(),
                Err(e) => Err(e),
            }
        };
        assert_eq!(cfg("127.0.0.1", None), Ok(false));
        assert_eq!(cfg("localhost", None), Ok(false));
        assert_eq!(cfg("ch.example.com", None), Ok(true));
        assert_eq!(cfg("127.0.0.1", Some("lz4")), Ok(true));
        assert_eq!(cfg("ch.example.com", Some("none")), Ok(false));
        assert!(cfg("h", Some("zstd")).is_err());
    }
}
