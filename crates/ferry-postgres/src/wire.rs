//! Framing of the frontend/backend protocol over one stream, and the startup handshake.
//!
//! The connections Ferry speaks the protocol on itself (the replication connection, and the
//! sessions that read the initial load with COPY, [`crate::session`]) share this: [`connect`]
//! opens the stream ([`crate::tls::open`]), authenticates and reads the server's parameters.
//!
//! Reads go into a buffer owned by [`Wire`] and a message is taken out of it only once it is
//! complete, so a read future dropped half-way (a `tokio::select!` branch that lost) loses
//! nothing. Writes are staged in a second buffer and flushed with `write_buf`, which advances
//! it only by what the socket took, so an interrupted flush resumes where it stopped.
//!
//! The server is untrusted input: a message longer than the connection's limit
//! ([`Wire::new`]'s `max_message`) is an error as soon as its length word is read, before
//! anything is allocated for it.

use std::collections::HashMap;
use std::io;

use bytes::{Buf, BytesMut};
use ferry_core::peer::PostgresConfig;
use ferry_core::ErrorKind;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::fallible_iterator::FallibleIterator;
use tracing::debug;

use crate::connect::{SourceError, CONNECT_TIMEOUT, STARTUP_OPTIONS};
use crate::tls::Stream;

/// The tag of CopyBothResponse, which `Message::parse` does not know.
const COPY_BOTH_RESPONSE_TAG: u8 = b'W';

/// How much to make room for before each socket read.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// One message from the server.
pub(crate) enum Backend {
    /// `W`: the server entered COPY BOTH mode (START_REPLICATION succeeded).
    CopyBothResponse,
    Message(Message),
}

/// The socket, its buffers, and what the server told us about itself.
pub(crate) struct Wire {
    pub(crate) stream: Stream,
    pub(crate) read_buf: BytesMut,
    write_buf: BytesMut,
    /// What kind of connection this is ("replication connection"), for messages.
    role: &'static str,
    /// The longest message accepted, its tag and length word included.
    max_message: usize,
    /// `host:port`, for messages.
    pub(crate) peer: String,
    /// The latest ParameterStatus values.
    pub(crate) parameters: HashMap<String, String>,
    pub(crate) backend_pid: Option<i32>,
}

impl Wire {
    pub(crate) fn new(
        stream: Stream,
        peer: String,
        role: &'static str,
        max_message: usize,
    ) -> Wire {
        Wire {
            stream,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::new(),
            role,
            max_message,
            peer,
            parameters: HashMap::new(),
            backend_pid: None,
        }
    }

    /// Bytes received but not yet taken out as a message (for tests of cancel safety).
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.read_buf.len()
    }

    /// The buffer that [`Wire::flush`] sends.
    pub(crate) fn out(&mut self) -> &mut BytesMut {
        &mut self.write_buf
    }

    /// Sends everything staged in the write buffer.
    pub(crate) async fn flush(&mut self) -> Result<(), SourceError> {
        while self.write_buf.has_remaining() {
            let n = self
                .stream
                .write_buf(&mut self.write_buf)
                .await
                .map_err(|e| self.io_error(e))?;
            if n == 0 {
                return Err(self.io_error(io::ErrorKind::WriteZero.into()));
            }
        }
        Ok(())
    }

    /// The next complete message, reading from the socket as needed. Cancel-safe.
    pub(crate) async fn read(&mut self) -> Result<Backend, SourceError> {
        loop {
            if let Some(m) = self.take_message()? {
                return Ok(m);
            }
            self.fill().await?;
        }
    }

    /// Reads what the socket has (at least one byte) into the read buffer. Cancel-safe. The
    /// buffer grows only by [`READ_CHUNK`] at a time beyond what [`Wire::take_message`]
    /// reserved for a message it knows the length of.
    pub(crate) async fn fill(&mut self) -> Result<(), SourceError> {
        if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
            self.read_buf.reserve(READ_CHUNK);
        }
        let n = self
            .stream
            .read_buf(&mut self.read_buf)
            .await
            .map_err(|e| self.io_error(e))?;
        if n == 0 {
            return Err(self.io_error(io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }

    /// Takes one complete message out of the read buffer, if there is one.
    fn take_message(&mut self) -> Result<Option<Backend>, SourceError> {
        let buf = &self.read_buf;
        if buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        if !(4..=i32::MAX as u32).contains(&len) {
            return Err(self.protocol_error(format!("invalid message length {len}")));
        }
        let total = len as usize + 1;
        if total > self.max_message {
            return Err(self.protocol_error(format!(
                "a message of {total} bytes is longer than the limit of {} bytes",
                self.max_message
            )));
        }
        if buf.len() < total {
            self.read_buf.reserve(total - buf.len());
            return Ok(None);
        }
        if buf[0] == COPY_BOTH_RESPONSE_TAG {
            // Overall format and per-column formats: always text/binary 0 for replication.
            self.read_buf.advance(total);
            return Ok(Some(Backend::CopyBothResponse));
        }
        match Message::parse(&mut self.read_buf) {
            Ok(Some(m)) => Ok(Some(Backend::Message(m))),
            Ok(None) => Err(self.protocol_error("incomplete message after length check".into())),
            Err(e) => Err(self.protocol_error(e.to_string())),
        }
    }

    /// Records ParameterStatus, BackendKeyData and notices; returns the messages it did not
    /// absorb. These may arrive at any time, so every reader passes messages through here.
    pub(crate) fn absorb(&mut self, m: Backend) -> Result<Option<Backend>, SourceError> {
        match m {
            Backend::Message(Message::ParameterStatus(p)) => {
                let (name, value) = match (p.name(), p.value()) {
                    (Ok(n), Ok(v)) => (n.to_owned(), v.to_owned()),
                    _ => return Err(self.protocol_error("invalid ParameterStatus".into())),
                };
                self.parameters.insert(name, value);
                Ok(None)
            }
            Backend::Message(Message::BackendKeyData(k)) => {
                self.backend_pid = Some(k.process_id());
                Ok(None)
            }
            Backend::Message(Message::NoticeResponse(n)) => {
                let f = ServerError::parse(n.fields());
                debug!(peer = %self.peer, connection = self.role, severity = %f.severity,
                       code = %f.code, message = %f.message, "notice from the source");
                Ok(None)
            }
            other => Ok(Some(other)),
        }
    }

    /// Reads the next message that is not a notice or parameter report.
    pub(crate) async fn read_significant(&mut self) -> Result<Backend, SourceError> {
        loop {
            let m = self.read().await?;
            if let Some(m) = self.absorb(m)? {
                return Ok(m);
            }
        }
    }

    pub(crate) fn io_error(&self, e: io::Error) -> SourceError {
        let detail = if e.kind() == io::ErrorKind::UnexpectedEof {
            "the server closed the connection".to_owned()
        } else {
            e.to_string()
        };
        SourceError {
            kind: ErrorKind::Transient,
            sqlstate: "08006".into(),
            message: format!(
                "{} to PostgreSQL at {} failed: {detail}",
                self.role, self.peer
            ),
            hint: None,
            source: None,
        }
    }

    pub(crate) fn protocol_error(&self, what: String) -> SourceError {
        SourceError {
            kind: ErrorKind::Internal,
            sqlstate: "08P01".into(),
            message: format!(
                "protocol violation on the {} to PostgreSQL at {}: {what}",
                self.role, self.peer
            ),
            hint: None,
            source: None,
        }
    }

    /// The error for an ErrorResponse.
    pub(crate) fn server_error(&self, fields: ErrorFields<'_>) -> SourceError {
        ServerError::parse(fields).into_source_error(&self.peer)
    }

    /// An error for a message that has no business arriving now.
    pub(crate) fn unexpected(&self, m: &Backend, during: &str) -> SourceError {
        let what = match m {
            Backend::CopyBothResponse => "CopyBothResponse".to_owned(),
            Backend::Message(m) => message_name(m).to_owned(),
        };
        self.protocol_error(format!("unexpected {what} during {during}"))
    }
}

/// The fields of an ErrorResponse or NoticeResponse that Ferry uses.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ServerError {
    /// The non-localized severity (`V`), falling back to the localized one (`S`).
    pub(crate) severity: String,
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) detail: Option<String>,
    pub(crate) hint: Option<String>,
}

impl ServerError {
    pub(crate) fn parse(mut fields: ErrorFields<'_>) -> ServerError {
        let mut e = ServerError::default();
        // A malformed field list ends the loop; what was read so far is still worth reporting.
        while let Ok(Some(f)) = fields.next() {
            let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
            match f.type_() {
                b'V' => e.severity = v,
                b'S' if e.severity.is_empty() => e.severity = v,
                b'C' => e.code = v,
                b'M' => e.message = v,
                b'D' => e.detail = Some(v),
                b'H' => e.hint = Some(v),
                _ => {}
            }
        }
        if e.code.is_empty() {
            e.code = "XX000".into();
        }
        e
    }

    /// Whether the server ends the session after this error.
    pub(crate) fn is_fatal(&self) -> bool {
        matches!(self.severity.as_str(), "FATAL" | "PANIC")
    }

    pub(crate) fn into_source_error(self, peer: &str) -> SourceError {
        let message = match &self.detail {
            Some(d) => format!("PostgreSQL at {peer}: {} ({d})", self.message),
            None => format!("PostgreSQL at {peer}: {}", self.message),
        };
        SourceError {
            kind: crate::connect::kind_of_sqlstate(&self.code),
            sqlstate: self.code,
            message,
            hint: self.hint,
            source: None,
        }
    }
}

fn message_name(m: &Message) -> &'static str {
    match m {
        Message::AuthenticationOk => "AuthenticationOk",
        Message::BackendKeyData(_) => "BackendKeyData",
        Message::CommandComplete(_) => "CommandComplete",
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::EmptyQueryResponse => "EmptyQueryResponse",
        Message::ErrorResponse(_) => "ErrorResponse",
        Message::ParameterStatus(_) => "ParameterStatus",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::RowDescription(_) => "RowDescription",
        _ => "message",
    }
}

/// Opens a connection and authenticates, within [`CONNECT_TIMEOUT`]: the stream from
/// [`crate::tls::open`], a StartupMessage with the session settings of every source connection
/// ([`STARTUP_OPTIONS`]) and `extra` parameters, then the server's parameters up to the first
/// ReadyForQuery. With `sslmode = allow`, a server that refuses the plain connection is tried
/// again over TLS ([`crate::tls::allow_fallback`]).
pub(crate) async fn connect(
    cfg: &PostgresConfig,
    role: &'static str,
    max_message: usize,
    extra: &[(&str, &str)],
) -> Result<Wire, SourceError> {
    let peer = format!("{}:{}", cfg.host, cfg.port);
    let attempt = async {
        match connect_once(cfg, role, max_message, extra).await {
            Err(e) if crate::tls::refused_in_plain(&e.sqlstate) => {
                match crate::tls::allow_fallback(cfg) {
                    Some(with_tls) => connect_once(&with_tls, role, max_message, extra).await,
                    None => Err(e),
                }
            }
            other => other,
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err(SourceError {
            kind: ErrorKind::Transient,
            sqlstate: "08001".into(),
            message: format!(
                "could not connect to PostgreSQL at {peer}: timed out after {}s",
                CONNECT_TIMEOUT.as_secs()
            ),
            hint: Some("Check that the host is reachable from Ferry.".into()),
            source: None,
        }),
    }
}

async fn connect_once(
    cfg: &PostgresConfig,
    role: &'static str,
    max_message: usize,
    extra: &[(&str, &str)],
) -> Result<Wire, SourceError> {
    let stream = crate::tls::open(cfg).await?;
    let mut wire = Wire::new(
        stream,
        format!("{}:{}", cfg.host, cfg.port),
        role,
        max_message,
    );
    let mut params = vec![
        ("user", cfg.user.as_str()),
        ("database", cfg.database.as_str()),
        ("client_encoding", "UTF8"),
        ("options", STARTUP_OPTIONS),
    ];
    params.extend_from_slice(extra);
    startup(&mut wire, cfg, &params).await?;
    Ok(wire)
}

/// Runs the startup handshake: StartupMessage, authentication, then parameters up to the
/// first ReadyForQuery.
pub(crate) async fn startup(
    wire: &mut Wire,
    cfg: &PostgresConfig,
    params: &[(&str, &str)],
) -> Result<(), SourceError> {
    frontend::startup_message(params.iter().copied(), wire.out())
        .map_err(|e| invalid_input(format!("invalid connection parameter: {e}")))?;
    wire.flush().await?;
    authenticate(wire, cfg).await?;
    // ParameterStatus and BackendKeyData are absorbed on the way to ReadyForQuery.
    match wire.read_significant().await? {
        Backend::Message(Message::ReadyForQuery(_)) => Ok(()),
        Backend::Message(Message::ErrorResponse(e)) => Err(wire.server_error(e.fields())),
        other => Err(wire.unexpected(&other, "startup")),
    }
}

async fn authenticate(wire: &mut Wire, cfg: &PostgresConfig) -> Result<(), SourceError> {
    loop {
        let m = match wire.read_significant().await? {
            Backend::Message(m) => m,
            other => return Err(wire.unexpected(&other, "authentication")),
        };
        match m {
            Message::AuthenticationOk => return Ok(()),
            Message::ErrorResponse(e) => return Err(wire.server_error(e.fields())),
            Message::AuthenticationCleartextPassword => {
                let password = password(wire, cfg)?;
                frontend::password_message(password.as_bytes(), wire.out())
                    .map_err(|e| invalid_input(format!("invalid password: {e}")))?;
                wire.flush().await?;
            }
            Message::AuthenticationMd5Password(body) => {
                let password = password(wire, cfg)?;
                let hash = md5_hash(cfg.user.as_bytes(), password.as_bytes(), body.salt());
                frontend::password_message(hash.as_bytes(), wire.out())
                    .map_err(|e| invalid_input(format!("invalid password: {e}")))?;
                wire.flush().await?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let mut scram = false;
                while let Some(m) = mechanisms
                    .next()
                    .map_err(|e| wire.protocol_error(e.to_string()))?
                {
                    scram |= m == SCRAM_SHA_256;
                }
                if !scram {
                    return Err(unsupported_auth(
                        wire,
                        "a SASL mechanism other than SCRAM-SHA-256",
                    ));
                }
                scram_sha_256(wire, cfg).await?;
            }
            Message::AuthenticationKerberosV5 => return Err(unsupported_auth(wire, "Kerberos")),
            Message::AuthenticationScmCredential => {
                return Err(unsupported_auth(wire, "SCM credentials"))
            }
            Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => {
                return Err(unsupported_auth(wire, "GSSAPI"))
            }
            Message::AuthenticationSspi => return Err(unsupported_auth(wire, "SSPI")),
            other => {
                return Err(wire.unexpected(&Backend::Message(other), "authentication"));
            }
        }
    }
}

/// SCRAM-SHA-256 without channel binding.
async fn scram_sha_256(wire: &mut Wire, cfg: &PostgresConfig) -> Result<(), SourceError> {
    let password = password(wire, cfg)?;
    let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), wire.out())
        .map_err(|e| wire.protocol_error(e.to_string()))?;
    wire.flush().await?;

    match wire.read_significant().await? {
        Backend::Message(Message::AuthenticationSaslContinue(body)) => {
            scram
                .update(body.data())
                .map_err(|e| wire.protocol_error(format!("SCRAM: {e}")))?;
        }
        Backend::Message(Message::ErrorResponse(e)) => return Err(wire.server_error(e.fields())),
        other => return Err(wire.unexpected(&other, "SCRAM authentication")),
    }
    frontend::sasl_response(scram.message(), wire.out())
        .map_err(|e| wire.protocol_error(e.to_string()))?;
    wire.flush().await?;

    match wire.read_significant().await? {
        Backend::Message(Message::AuthenticationSaslFinal(body)) => {
            scram.finish(body.data()).map_err(|e| SourceError {
                kind: ErrorKind::Permission,
                sqlstate: "28000".into(),
                message: format!(
                    "PostgreSQL at {} failed to prove that it knows the password: {e}",
                    wire.peer
                ),
                hint: None,
                source: None,
            })
        }
        Backend::Message(Message::ErrorResponse(e)) => Err(wire.server_error(e.fields())),
        other => Err(wire.unexpected(&other, "SCRAM authentication")),
    }
}

fn password<'a>(wire: &Wire, cfg: &'a PostgresConfig) -> Result<&'a str, SourceError> {
    if cfg.password.is_empty() {
        return Err(SourceError {
            kind: ErrorKind::Permission,
            sqlstate: "28P01".into(),
            message: format!(
                "PostgreSQL at {} asks for a password but the peer has none",
                wire.peer
            ),
            hint: Some("Set the peer's password option.".into()),
            source: None,
        });
    }
    Ok(&cfg.password)
}

fn unsupported_auth(wire: &Wire, method: &str) -> SourceError {
    SourceError {
        kind: ErrorKind::Unsupported,
        sqlstate: "28000".into(),
        message: format!(
            "PostgreSQL at {} asks for {method} authentication, which Ferry does not support",
            wire.peer
        ),
        hint: Some(
            "Let the user log in with scram-sha-256, md5 or password in pg_hba.conf.".into(),
        ),
        source: None,
    }
}

pub(crate) fn invalid_input(message: String) -> SourceError {
    SourceError {
        kind: ErrorKind::InvalidInput,
        sqlstate: "22023".into(),
        message,
        hint: None,
        source: None,
    }
}
