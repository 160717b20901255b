//! A plain (non-replication) session spoken on the raw protocol, for reading COPY streams in
//! bulk: the initial load's ranges ([`crate::snapshot`]) and query mirrors' partitions.
//!
//! # Why not tokio-postgres
//!
//! `COPY … TO STDOUT` makes the server send one CopyData message per row. tokio-postgres runs
//! the socket in a connection task that parses every message, splits a buffer for it and
//! sends it over a channel to the task that consumes the copy: an allocation, a channel hop
//! and often a task switch per row, which at millions of rows costs more than the rows' own
//! handling. Here the task that consumes the copy reads the socket itself ([`Wire`], shared
//! with the replication connection), and [`CopyOut::next`] hands it many rows at once.
//!
//! # Reading a COPY
//!
//! The socket is read into one buffer. [`drain_copy_data`] walks the CopyData frames at its
//! front and copies their payloads, one after the other, into a chunk of at most
//! [`CHUNK_BYTES`]; the frames' own boundaries are dropped. That is safe because the binary
//! COPY format delimits its rows itself, and every consumer frames rows across chunk
//! boundaries (`ferry_core::binary_copy::CopyFramer`). A frame's payload need not be in the
//! buffer whole: it is copied as it arrives, so a row of any size passes through a read
//! buffer and a chunk of bounded size; a frame announced longer than the largest row Ferry
//! carries is an error as soon as its length is read. Any other message (a notice, a
//! parameter report, the error that ends a failed COPY, CopyDone, CommandComplete,
//! ReadyForQuery) is taken out whole through [`Wire::read`], within the session's message
//! limit [`MAX_MESSAGE`].
//!
//! An ErrorResponse keeps the server's SQLSTATE and becomes the [`SourceError`] the caller
//! classifies, exactly as tokio-postgres's errors did ([`SourceError::from_pg`]).
//!
//! Commands are not cancel-safe: a command or copy dropped half-way leaves the session out of
//! step with the server, and every later command is refused; drop the session then.

use bytes::{Buf, Bytes, BytesMut};
use ferry_core::binary_copy::DEFAULT_MAX_ROW_BYTES;
use ferry_core::peer::PostgresConfig;
use ferry_core::ErrorKind;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use postgres_protocol::IsNull;

use crate::connect::SourceError;
use crate::wire::{self, invalid_input, Backend, ServerError, Wire};

/// The longest message other than CopyData accepted from the server (errors, notices,
/// parameter reports, the rows of a command's answer).
pub const MAX_MESSAGE: usize = 8 << 20;
/// The longest CopyData payload accepted: a row as large as the framer admits, with the
/// stream's header in front of it.
pub const MAX_COPY_DATA: usize = DEFAULT_MAX_ROW_BYTES + 64;
/// How many bytes of rows [`CopyOut::next`] hands out at once, at most.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// A parameter of [`Session::execute`], in the format the server is to read it in.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    /// Text, read by the parameter type's input function.
    Text(&'a str),
    /// The parameter type's binary send format.
    Binary(&'a [u8]),
}

/// One session with the source.
pub struct Session {
    wire: Wire,
    /// A command or copy was dropped half-way: the session no longer knows where the server is.
    out_of_step: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.wire.peer)
            .field("backend_pid", &self.wire.backend_pid)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Connects and authenticates (TLS as the peer's `sslmode` asks), within
    /// [`crate::connect::CONNECT_TIMEOUT`].
    pub async fn connect(
        cfg: &PostgresConfig,
        application_name: &str,
    ) -> Result<Session, SourceError> {
        let wire = wire::connect(
            cfg,
            "connection",
            MAX_MESSAGE,
            &[("application_name", application_name)],
        )
        .await?;
        Ok(Session {
            wire,
            out_of_step: false,
        })
    }

    /// The backend's process id, as `pg_stat_activity.pid` shows it.
    pub fn backend_pid(&self) -> Option<i32> {
        self.wire.backend_pid
    }

    /// Runs SQL (one or more statements, no parameters) with the simple query protocol;
    /// rows it returns are discarded.
    pub async fn batch_execute(&mut self, sql: &str) -> Result<(), SourceError> {
        self.begin()?;
        frontend::query(sql, self.wire.out())
            .map_err(|e| invalid_input(format!("invalid statement: {e}")))?;
        self.wire.flush().await?;
        self.finish_command("a statement").await
    }

    /// Runs one statement with the extended query protocol, its parameters bound (never
    /// spliced into the text), their types inferred by the server; rows it returns are
    /// discarded.
    pub async fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<(), SourceError> {
        self.begin()?;
        let out = self.wire.out();
        frontend::parse("", sql, std::iter::empty(), out)
            .map_err(|e| invalid_input(format!("invalid statement: {e}")))?;
        let formats = params.iter().map(|p| match p {
            Param::Text(_) => 0i16,
            Param::Binary(_) => 1i16,
        });
        frontend::bind(
            "",
            "",
            formats,
            params.iter(),
            |p, buf| {
                match p {
                    Param::Text(t) => buf.extend_from_slice(t.as_bytes()),
                    Param::Binary(b) => buf.extend_from_slice(b),
                }
                Ok(IsNull::No)
            },
            std::iter::empty(),
            out,
        )
        .map_err(|_| invalid_input("a statement parameter is too long".into()))?;
        frontend::execute("", 0, out).map_err(|e| invalid_input(format!("{e}")))?;
        frontend::sync(out);
        self.wire.flush().await?;
        self.finish_command("a statement").await
    }

    /// Starts `sql`, a `COPY … TO STDOUT`, with the simple query protocol; read its rows from
    /// the returned [`CopyOut`] to the end before the session runs anything else.
    pub async fn copy_out(&mut self, sql: &str) -> Result<CopyOut<'_>, SourceError> {
        self.begin()?;
        frontend::query(sql, self.wire.out())
            .map_err(|e| invalid_input(format!("invalid statement: {e}")))?;
        self.wire.flush().await?;
        match self.wire.read_significant().await? {
            Backend::Message(Message::CopyOutResponse(_)) => {}
            Backend::Message(Message::ErrorResponse(e)) => {
                let e = ServerError::parse(e.fields());
                return Err(self.after_error(e).await);
            }
            other => return Err(self.wire.unexpected(&other, "the start of a COPY")),
        }
        Ok(CopyOut {
            session: self,
            frame_left: 0,
            copy_done: false,
            finished: false,
        })
    }

    /// Says goodbye to the server (Terminate) and closes the socket.
    pub async fn close(mut self) -> Result<(), SourceError> {
        frontend::terminate(self.wire.out());
        self.wire.flush().await
    }

    /// Marks the session busy until its command has been read to ReadyForQuery.
    fn begin(&mut self) -> Result<(), SourceError> {
        if self.out_of_step {
            return Err(SourceError {
                kind: ErrorKind::Internal,
                sqlstate: "08P01".into(),
                message: format!(
                    "the connection to PostgreSQL at {} was left in the middle of a command",
                    self.wire.peer
                ),
                hint: None,
                source: None,
            });
        }
        self.out_of_step = true;
        Ok(())
    }

    /// Reads a command's answer up to ReadyForQuery; the first error the server reported, if
    /// any, is the result.
    async fn finish_command(&mut self, during: &str) -> Result<(), SourceError> {
        loop {
            match self.wire.read_significant().await? {
                Backend::Message(
                    Message::ParseComplete
                    | Message::BindComplete
                    | Message::NoData
                    | Message::RowDescription(_)
                    | Message::DataRow(_)
                    | Message::CommandComplete(_)
                    | Message::EmptyQueryResponse,
                ) => {}
                Backend::Message(Message::ReadyForQuery(_)) => {
                    self.out_of_step = false;
                    return Ok(());
                }
                Backend::Message(Message::ErrorResponse(e)) => {
                    let e = ServerError::parse(e.fields());
                    return Err(self.after_error(e).await);
                }
                other => return Err(self.wire.unexpected(&other, during)),
            }
        }
    }

    /// The error a command ended with, once the server is ready again (after a FATAL one it
    /// closes the connection instead, and the session stays out of step).
    async fn after_error(&mut self, e: ServerError) -> SourceError {
        if e.is_fatal() {
            return e.into_source_error(&self.wire.peer);
        }
        loop {
            match self.wire.read_significant().await {
                Ok(Backend::Message(Message::ReadyForQuery(_))) => {
                    self.out_of_step = false;
                    break;
                }
                // Whatever else the failed command still sends is of no use.
                Ok(_) => {}
                // The server's error says more than the failure to read past it.
                Err(_) => break,
            }
        }
        e.into_source_error(&self.wire.peer)
    }
}

/// A `COPY … TO STDOUT` in progress, made by [`Session::copy_out`].
pub struct CopyOut<'s> {
    session: &'s mut Session,
    /// Bytes of the current CopyData payload not read yet.
    frame_left: usize,
    /// The server sent CopyDone.
    copy_done: bool,
    /// The server sent ReadyForQuery: the COPY is over.
    finished: bool,
}

impl CopyOut<'_> {
    /// The next bytes of the COPY stream, up to [`CHUNK_BYTES`] of them and cut anywhere
    /// (not at row boundaries); `None` once the COPY ended well.
    pub async fn next(&mut self) -> Result<Option<Bytes>, SourceError> {
        if self.finished {
            return Ok(None);
        }
        let mut out = BytesMut::with_capacity(CHUNK_BYTES);
        loop {
            if !self.copy_done {
                let wire = &mut self.session.wire;
                let drained = drain_copy_data(
                    &mut wire.read_buf,
                    &mut self.frame_left,
                    &mut out,
                    CHUNK_BYTES,
                    MAX_COPY_DATA,
                )
                .map_err(|what| wire.protocol_error(what))?;
                match drained {
                    Drained::Full => return Ok(Some(out.freeze())),
                    Drained::NeedInput => {
                        wire.fill().await?;
                        continue;
                    }
                    Drained::Message => {}
                }
            }
            let session = &mut *self.session;
            let m = session.wire.read().await?;
            let Some(m) = session.wire.absorb(m)? else {
                continue;
            };
            match m {
                Backend::Message(Message::CopyDone) if !self.copy_done => self.copy_done = true,
                Backend::Message(Message::CommandComplete(_)) if self.copy_done => {}
                Backend::Message(Message::ReadyForQuery(_)) if self.copy_done => {
                    session.out_of_step = false;
                    self.finished = true;
                    return Ok((!out.is_empty()).then(|| out.freeze()));
                }
                Backend::Message(Message::ErrorResponse(e)) => {
                    let e = ServerError::parse(e.fields());
                    self.finished = true;
                    return Err(session.after_error(e).await);
                }
                other => return Err(session.wire.unexpected(&other, "a COPY")),
            }
        }
    }
}

/// Where [`drain_copy_data`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drained {
    /// The chunk is full.
    Full,
    /// The buffer ends inside a frame's header, or at a frame's end.
    NeedInput,
    /// A message other than CopyData starts the buffer.
    Message,
}

/// Moves CopyData payloads from the front of `buf` into `out`, until `out` holds `cap` bytes,
/// `buf` runs out, or a message other than CopyData is next. `frame_left` carries the part of
/// a payload still to come from one call to the next. A frame longer than `max_payload` is an
/// error (its description, for a protocol error).
pub(crate) fn drain_copy_data(
    buf: &mut BytesMut,
    frame_left: &mut usize,
    out: &mut BytesMut,
    cap: usize,
    max_payload: usize,
) -> Result<Drained, String> {
    let data = &buf[..];
    let mut pos = 0;
    let stopped = loop {
        if *frame_left > 0 {
            let room = cap.saturating_sub(out.len());
            if room == 0 {
                break Drained::Full;
            }
            let available = data.len() - pos;
            if available == 0 {
                break Drained::NeedInput;
            }
            let n = (*frame_left).min(available).min(room);
            out.extend_from_slice(&data[pos..pos + n]);
            pos += n;
            *frame_left -= n;
            continue;
        }
        let Some(header) = data.get(pos..pos + 5) else {
            break Drained::NeedInput;
        };
        if header[0] != b'd' {
            break Drained::Message;
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let Some(payload) = len.checked_sub(4) else {
            buf.advance(pos);
            return Err(format!("invalid CopyData length {len}"));
        };
        if payload > max_payload {
            buf.advance(pos);
            return Err(format!(
                "a CopyData message of {payload} bytes is longer than the limit of \
                 {max_payload} bytes"
            ));
        }
        *frame_left = payload;
        pos += 5;
    };
    buf.advance(pos);
    Ok(stopped)
}

#[cfg(test)]
mod tests;
