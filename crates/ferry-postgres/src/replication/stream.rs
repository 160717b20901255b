//! The COPY BOTH phase: XLogData and keepalives in, standby status updates out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes};
use ferry_core::value::PG_EPOCH_UNIX_MICROS;
use ferry_core::{ErrorKind, Lsn};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::ReplicationConnection;
use crate::connect::SourceError;
use crate::wire::Backend;

/// How long [`ReplicationStream::stop`] waits for the server to acknowledge CopyDone.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A message of the streaming replication protocol from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// `w`: one pgoutput message, decoded by [`crate::pgoutput`].
    XLogData {
        /// Where the WAL record this message came from starts.
        wal_start: Lsn,
        /// The current end of WAL on the server.
        wal_end: Lsn,
        /// The server's clock when it sent this, in µs since 2000-01-01 UTC.
        server_time_micros: i64,
        data: Bytes,
    },
    /// `k`: the server is alive; answer soon with a status update when `reply_requested`.
    PrimaryKeepalive {
        wal_end: Lsn,
        server_time_micros: i64,
        reply_requested: bool,
    },
}

/// A replication connection in COPY BOTH mode, made by
/// [`ReplicationConnection::start_replication`].
pub struct ReplicationStream {
    conn: ReplicationConnection,
    /// The server ended the COPY with CopyDone; [`ReplicationStream::next`] returns `None`.
    server_done: bool,
}

impl std::fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("conn", &self.conn)
            .field("server_done", &self.server_done)
            .finish()
    }
}

impl ReplicationStream {
    pub(super) fn new(conn: ReplicationConnection) -> ReplicationStream {
        ReplicationStream {
            conn,
            server_done: false,
        }
    }

    /// The next message; `None` once the server has ended the stream.
    ///
    /// Cancel-safe: if the future is dropped, bytes already read stay buffered and the next
    /// call resumes with them.
    pub async fn next(&mut self) -> Result<Option<ReplicationMessage>, SourceError> {
        if self.server_done {
            return Ok(None);
        }
        let wire = &mut self.conn.wire;
        match wire.read_significant().await? {
            Backend::Message(Message::CopyData(body)) => parse_copy_data(body.into_bytes())
                .map(Some)
                .map_err(|what| wire.protocol_error(what)),
            Backend::Message(Message::CopyDone) => {
                self.server_done = true;
                Ok(None)
            }
            // A walsender that shuts down once the client has confirmed everything it sent
            // ends the COPY with CommandComplete alone, without CopyDone.
            Backend::Message(Message::CommandComplete(_)) => {
                self.server_done = true;
                Ok(None)
            }
            Backend::Message(Message::ErrorResponse(e)) => Err(wire.server_error(e.fields())),
            other => Err(wire.unexpected(&other, "replication")),
        }
    }

    /// Sends a standby status update: everything before `write` is received, before `flush`
    /// durable (this becomes the slot's `confirmed_flush_lsn`), before `apply` applied.
    /// With `reply_requested` the server answers with a keepalive at once.
    ///
    /// If this future is dropped half-way, the unsent rest of the message stays queued and
    /// goes out first with the next update, so the stream never carries a torn message.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), SourceError> {
        let body = standby_status_update(write, flush, apply, now_micros(), reply_requested);
        let wire = &mut self.conn.wire;
        frontend::CopyData::new(&body[..])
            .map_err(|e| wire.protocol_error(e.to_string()))?
            .write(wire.out());
        wire.flush().await
    }

    /// Ends streaming: sends CopyDone and reads up to ReadyForQuery, discarding data the
    /// server sent before it saw CopyDone (it was not confirmed, so it will be sent again).
    /// The connection accepts commands again afterwards.
    pub async fn stop(mut self) -> Result<ReplicationConnection, SourceError> {
        frontend::copy_done(self.conn.wire.out());
        match tokio::time::timeout(STOP_TIMEOUT, self.drain()).await {
            Ok(Ok(())) => Ok(self.conn),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(SourceError {
                kind: ErrorKind::Transient,
                sqlstate: "08006".into(),
                message: format!(
                    "PostgreSQL at {} did not end replication within {}s",
                    self.conn.wire.peer,
                    STOP_TIMEOUT.as_secs()
                ),
                hint: None,
                source: None,
            }),
        }
    }

    async fn drain(&mut self) -> Result<(), SourceError> {
        let wire = &mut self.conn.wire;
        wire.flush().await?;
        loop {
            match wire.read_significant().await? {
                Backend::Message(Message::CopyData(_) | Message::CommandComplete(_)) => {}
                Backend::Message(Message::CopyDone) => self.server_done = true,
                Backend::Message(Message::ReadyForQuery(_)) => return Ok(()),
                Backend::Message(Message::ErrorResponse(e)) => {
                    return Err(wire.server_error(e.fields()))
                }
                other => return Err(wire.unexpected(&other, "the end of replication")),
            }
        }
    }

    /// Bytes received but not yet returned by `next` (for tests of cancel safety).
    #[cfg(test)]
    pub(super) fn buffered(&self) -> usize {
        self.conn.wire.buffered()
    }
}

/// Decodes the payload of a CopyData message from a walsender.
pub(super) fn parse_copy_data(mut bytes: Bytes) -> Result<ReplicationMessage, String> {
    match bytes.first() {
        Some(b'w') if bytes.len() >= 25 => {
            let data = bytes.split_off(25);
            let mut h = &bytes[1..];
            Ok(ReplicationMessage::XLogData {
                wal_start: Lsn(h.get_u64()),
                wal_end: Lsn(h.get_u64()),
                server_time_micros: h.get_i64(),
                data,
            })
        }
        Some(b'k') if bytes.len() >= 18 => {
            let mut h = &bytes[1..];
            Ok(ReplicationMessage::PrimaryKeepalive {
                wal_end: Lsn(h.get_u64()),
                server_time_micros: h.get_i64(),
                reply_requested: h.get_u8() != 0,
            })
        }
        Some(b'w') => Err(format!("XLogData of {} bytes is too short", bytes.len())),
        Some(b'k') => Err(format!("keepalive of {} bytes is too short", bytes.len())),
        Some(t) => Err(format!("unknown replication message type {:?}", *t as char)),
        None => Err("empty CopyData message".into()),
    }
}

/// The body of a standby status update (`r`).
pub(super) fn standby_status_update(
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    client_time_micros: i64,
    reply_requested: bool,
) -> [u8; 34] {
    let mut out = [0u8; 34];
    let mut b = &mut out[..];
    b.put_u8(b'r');
    b.put_u64(write.0);
    b.put_u64(flush.0);
    b.put_u64(apply.0);
    b.put_i64(client_time_micros);
    b.put_u8(u8::from(reply_requested));
    out
}

/// Now, in µs since 2000-01-01 UTC (PostgreSQL's epoch).
fn now_micros() -> i64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    unix - PG_EPOCH_UNIX_MICROS
}
