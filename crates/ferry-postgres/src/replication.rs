//! The replication connection: slots, exported snapshots and the logical change stream.
//!
//! tokio-postgres cannot open a connection in replication mode, so this module speaks the
//! frontend/backend protocol itself on top of `postgres-protocol`'s message writers and parser.
//!
//! # The flow
//!
//! 1. **Startup.** [`ReplicationConnection::connect`] sends a StartupMessage with
//!    `replication=database`, which makes the backend a *walsender* attached to one database.
//!    The session settings in [`STARTUP_OPTIONS`] are fixed here because pgoutput runs the
//!    columns' output functions inside this walsender: the text values it sends (dates,
//!    intervals, floats, bytea) are printed with these settings, and the decoder in
//!    [`crate::types`] expects exactly them. Authentication is SCRAM-SHA-256, MD5 or cleartext.
//! 2. **Commands.** A walsender accepts replication commands through the simple query protocol
//!    ([`ReplicationConnection::simple_query`]): `IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`,
//!    `DROP_REPLICATION_SLOT`, `SHOW`, and in database mode plain SQL too.
//! 3. **Slot and snapshot.** [`ReplicationConnection::create_slot`] creates a logical slot for
//!    pgoutput and asks the server to *export* the snapshot at which the slot becomes
//!    consistent. Every transaction that commits after that snapshot will be streamed from
//!    the slot, and none before it, so a table copy read in that snapshot (`BEGIN ISOLATION
//!    LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '…'`) plus the stream from the slot's
//!    `consistent_point` sees every row exactly once. The exported snapshot is valid only
//!    while this connection stays idle: the next command on it (including
//!    `START_REPLICATION`) or closing it releases the snapshot. Transactions that imported it
//!    before then keep it; so every snapshot reader must have run `SET TRANSACTION SNAPSHOT`
//!    before this connection is used again.
//! 4. **Streaming.** [`ReplicationConnection::start_replication`] sends `START_REPLICATION SLOT
//!    … LOGICAL <lsn> (…)`; the server answers CopyBothResponse and from then on both sides
//!    exchange CopyData messages ([`ReplicationStream`]). The server sends XLogData (`w`,
//!    one pgoutput message each, see [`crate::pgoutput`]) and primary keepalives (`k`). The
//!    client sends standby status updates (`r`) with three positions: written, flushed and
//!    applied. The *flushed* position becomes the slot's `confirmed_flush_lsn`: the server may
//!    then recycle the WAL before it and never sends what lies before it again (a later
//!    `START_REPLICATION` at an earlier position starts there instead). So a position may be
//!    reported as flushed only once every transaction that committed before it is durable at
//!    the destination: reporting too little only costs re-sending, reporting too much loses
//!    changes. A keepalive with `reply_requested` must be answered promptly, or the server
//!    ends the connection after `wal_sender_timeout`.
//! 5. **Stopping.** [`ReplicationStream::stop`] sends CopyDone; the server answers with
//!    CopyDone, CommandComplete and ReadyForQuery, after any data already on its way (which
//!    `stop` discards: it was not confirmed, so it will be sent again), and the connection
//!    accepts commands again.
//!
//! [`ReplicationStream::next`] is cancel-safe: it only takes complete messages out of a buffer
//! the stream owns, so it can be a `tokio::select!` branch next to a timer or a shutdown
//! signal.

mod stream;

use ferry_core::ident::{pg_ident, pg_literal};
use ferry_core::peer::PostgresConfig;
use ferry_core::Lsn;
use postgres_protocol::message::backend::{DataRowBody, Message};
use postgres_protocol::message::frontend;
use tokio_postgres::fallible_iterator::FallibleIterator;

use crate::connect::SourceError;
use crate::wire::{self, invalid_input, Backend, ServerError, Wire};
pub use stream::{ReplicationMessage, ReplicationStream};

pub use crate::connect::STARTUP_OPTIONS;

/// The longest message accepted from a walsender: an XLogData carries one pgoutput message,
/// which holds a whole row (a value may be up to 1 GiB).
const MAX_MESSAGE: usize = 1 << 31;

/// The longest slot name PostgreSQL accepts (`NAMEDATALEN - 1`).
const MAX_SLOT_NAME_LEN: usize = 63;

/// What `IDENTIFY_SYSTEM` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    /// The cluster's system identifier; it changes when a cluster is re-created from scratch.
    pub systemid: u64,
    pub timeline: u32,
    /// The current end of WAL.
    pub xlogpos: Lsn,
    pub dbname: String,
}

/// A slot made by [`ReplicationConnection::create_slot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    pub slot_name: String,
    /// The LSN from which the slot streams every committed transaction not in the snapshot.
    pub consistent_point: Lsn,
    /// The exported snapshot, valid until the connection runs its next command.
    pub snapshot_name: Option<String>,
}

/// The options of pgoutput for `START_REPLICATION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOutputOptions {
    pub publication_names: Vec<String>,
    /// 1, or 2 for `streaming` (PostgreSQL 14+).
    pub proto_version: u32,
    /// Stream large in-progress transactions (Stream Start/Stop/Commit/Abort).
    pub streaming: bool,
    /// Send `pg_logical_emit_message` messages (PostgreSQL 14+).
    pub messages: bool,
    /// Send values in their types' binary send format where the type has one, instead of
    /// their text output (PostgreSQL 14+).
    pub binary: bool,
}

impl Default for PgOutputOptions {
    fn default() -> Self {
        PgOutputOptions {
            publication_names: Vec::new(),
            proto_version: 1,
            streaming: false,
            messages: false,
            binary: false,
        }
    }
}

/// A connection in logical replication mode (`replication=database`).
///
/// Commands are not cancel-safe: dropping a command's future half-way leaves the connection
/// out of step with the server, and it must then be dropped too.
pub struct ReplicationConnection {
    wire: Wire,
    server_version_num: u32,
}

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("peer", &self.wire.peer)
            .field("server_version_num", &self.server_version_num)
            .field("backend_pid", &self.wire.backend_pid)
            .finish_non_exhaustive()
    }
}

impl ReplicationConnection {
    /// Connects and authenticates, within [`crate::connect::CONNECT_TIMEOUT`].
    pub async fn connect(cfg: &PostgresConfig) -> Result<Self, SourceError> {
        if cfg.host.starts_with('/') {
            return Err(invalid_input(format!(
                "replication connections need a TCP host, not the socket directory {}",
                cfg.host
            )));
        }
        let wire = wire::connect(
            cfg,
            "replication connection",
            MAX_MESSAGE,
            &[("replication", "database"), ("application_name", "ferry")],
        )
        .await?;
        let server_version_num = wire
            .parameters
            .get("server_version")
            .and_then(|v| parse_server_version(v))
            .unwrap_or(0);
        Ok(ReplicationConnection {
            wire,
            server_version_num,
        })
    }

    /// The server's version as `server_version_num` prints it (150004 for 15.4); 0 when the
    /// server did not report a version Ferry can read.
    pub fn server_version_num(&self) -> u32 {
        self.server_version_num
    }

    /// A setting the server reported with ParameterStatus (`server_version`, `TimeZone`, …).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.wire.parameters.get(name).map(String::as_str)
    }

    /// The walsender's process id, as `pg_stat_replication.pid` shows it.
    pub fn backend_pid(&self) -> Option<i32> {
        self.wire.backend_pid
    }

    /// Runs a replication command (or SQL) and returns its rows as text.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, SourceError> {
        frontend::query(sql, self.wire.out())
            .map_err(|e| invalid_input(format!("invalid replication command: {e}")))?;
        self.wire.flush().await?;
        let mut rows = Vec::new();
        let mut error: Option<ServerError> = None;
        loop {
            match self.wire.read_significant().await? {
                Backend::Message(Message::DataRow(row)) => {
                    if error.is_none() {
                        rows.push(self.text_row(&row)?);
                    }
                }
                Backend::Message(
                    Message::RowDescription(_)
                    | Message::CommandComplete(_)
                    | Message::EmptyQueryResponse,
                ) => {}
                Backend::Message(Message::ErrorResponse(e)) => {
                    let e = ServerError::parse(e.fields());
                    if e.is_fatal() {
                        return Err(e.into_source_error(&self.wire.peer));
                    }
                    error = Some(e);
                }
                Backend::Message(Message::ReadyForQuery(_)) => {
                    return match error {
                        Some(e) => Err(e.into_source_error(&self.wire.peer)),
                        None => Ok(rows),
                    };
                }
                other => return Err(self.wire.unexpected(&other, "a replication command")),
            }
        }
    }

    fn text_row(&self, row: &DataRowBody) -> Result<Vec<Option<String>>, SourceError> {
        let buf = row.buffer();
        let mut ranges = row.ranges();
        let mut out = Vec::new();
        while let Some(range) = ranges
            .next()
            .map_err(|e| self.wire.protocol_error(format!("invalid DataRow: {e}")))?
        {
            let value = match range {
                None => None,
                Some(r) => {
                    let bytes = buf
                        .get(r)
                        .ok_or_else(|| self.wire.protocol_error("invalid DataRow".into()))?;
                    let text = std::str::from_utf8(bytes).map_err(|_| {
                        self.wire
                            .protocol_error("DataRow value is not valid UTF-8".into())
                    })?;
                    Some(text.to_owned())
                }
            };
            out.push(value);
        }
        Ok(out)
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, SourceError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = self.single_row(rows, "IDENTIFY_SYSTEM", 4)?;
        let field = |i: usize| row[i].as_deref().unwrap_or_default();
        let bad = |what: &str| {
            self.wire
                .protocol_error(format!("IDENTIFY_SYSTEM returned an invalid {what}"))
        };
        Ok(SystemInfo {
            systemid: field(0).parse().map_err(|_| bad("systemid"))?,
            timeline: field(1).parse().map_err(|_| bad("timeline"))?,
            xlogpos: field(2).parse().map_err(|_| bad("xlogpos"))?,
            dbname: row[3].clone().ok_or_else(|| bad("dbname"))?,
        })
    }

    /// Creates a logical slot for pgoutput and exports its snapshot.
    ///
    /// The snapshot named in the answer stays valid only while this connection runs no
    /// other command; see the module documentation. A `temporary` slot disappears when the
    /// connection closes.
    pub async fn create_slot(
        &mut self,
        name: &str,
        temporary: bool,
    ) -> Result<CreatedSlot, SourceError> {
        validate_slot_name(name)?;
        let sql = create_slot_command(name, temporary, self.server_version_num);
        let rows = self.simple_query(&sql).await?;
        let row = self.single_row(rows, "CREATE_REPLICATION_SLOT", 4)?;
        let bad = |what: &str| {
            self.wire.protocol_error(format!(
                "CREATE_REPLICATION_SLOT returned an invalid {what}"
            ))
        };
        Ok(CreatedSlot {
            slot_name: row[0].clone().ok_or_else(|| bad("slot_name"))?,
            consistent_point: row[1]
                .as_deref()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad("consistent_point"))?,
            snapshot_name: row[2].clone(),
        })
    }

    /// Drops a slot; with `wait`, waits for a walsender that still uses it to let go
    /// instead of failing with SQLSTATE 55006.
    pub async fn drop_slot(&mut self, name: &str, wait: bool) -> Result<(), SourceError> {
        validate_slot_name(name)?;
        let mut sql = format!("DROP_REPLICATION_SLOT {}", pg_ident(name));
        if wait {
            sql.push_str(" WAIT");
        }
        self.simple_query(&sql).await?;
        Ok(())
    }

    /// Starts streaming changes from `slot` at `start` (`Lsn::ZERO`: where the slot
    /// confirmed last). The connection becomes the stream; [`ReplicationStream::stop`] gives
    /// it back.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        options: &PgOutputOptions,
    ) -> Result<ReplicationStream, SourceError> {
        validate_slot_name(slot)?;
        let sql = start_replication_command(slot, start, options)?;
        frontend::query(&sql, self.wire.out())
            .map_err(|e| invalid_input(format!("invalid START_REPLICATION options: {e}")))?;
        self.wire.flush().await?;
        match self.wire.read_significant().await? {
            Backend::CopyBothResponse => Ok(ReplicationStream::new(self)),
            Backend::Message(Message::ErrorResponse(e)) => Err(self.wire.server_error(e.fields())),
            other => Err(self.wire.unexpected(&other, "START_REPLICATION")),
        }
    }

    /// Says goodbye to the server (Terminate) and closes the socket.
    pub async fn close(mut self) -> Result<(), SourceError> {
        frontend::terminate(self.wire.out());
        self.wire.flush().await
    }

    fn single_row(
        &self,
        mut rows: Vec<Vec<Option<String>>>,
        command: &str,
        columns: usize,
    ) -> Result<Vec<Option<String>>, SourceError> {
        match rows.pop() {
            Some(row) if rows.is_empty() && row.len() >= columns => Ok(row),
            _ => Err(self.wire.protocol_error(format!(
                "{command} did not return one row of {columns} columns"
            ))),
        }
    }
}

/// Checks a slot name against PostgreSQL's rule: lowercase letters, digits and underscores,
/// at most 63 of them.
pub fn validate_slot_name(name: &str) -> Result<(), SourceError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_SLOT_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        return Ok(());
    }
    Err(SourceError {
        hint: Some(format!(
            "Slot names contain only lowercase letters, digits and underscores, \
             at most {MAX_SLOT_NAME_LEN} of them."
        )),
        ..invalid_input(format!("invalid replication slot name {name:?}"))
    })
}

/// Reads `server_version` ("15.4 (Debian 15.4-1.pgdg120+1)", "9.6.24", "17beta1") as
/// `server_version_num` would print it.
pub fn parse_server_version(version: &str) -> Option<u32> {
    let numeric: &str = version
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?;
    let mut parts = numeric.split('.').map(|p| p.parse::<u32>());
    let major = parts.next()?.ok()?;
    let minor = parts.next().and_then(Result::ok).unwrap_or(0);
    if major >= 10 {
        Some(major * 10_000 + minor)
    } else {
        let patch = parts.next().and_then(Result::ok).unwrap_or(0);
        Some(major * 10_000 + minor * 100 + patch)
    }
}

/// `CREATE_REPLICATION_SLOT` for pgoutput with an exported snapshot, in the option syntax of
/// PostgreSQL 15+ or the keyword syntax before it.
fn create_slot_command(name: &str, temporary: bool, server_version_num: u32) -> String {
    let temporary = if temporary { " TEMPORARY" } else { "" };
    let export = if server_version_num >= 150_000 {
        "(SNAPSHOT 'export')"
    } else {
        "EXPORT_SNAPSHOT"
    };
    format!(
        "CREATE_REPLICATION_SLOT {}{temporary} LOGICAL pgoutput {export}",
        pg_ident(name)
    )
}

/// `START_REPLICATION SLOT … LOGICAL …` with pgoutput's options. Every option value is a
/// string literal; `publication_names` is a list of quoted identifiers inside one.
fn start_replication_command(
    slot: &str,
    start: Lsn,
    options: &PgOutputOptions,
) -> Result<String, SourceError> {
    if options.publication_names.is_empty() {
        return Err(invalid_input(
            "START_REPLICATION needs at least one publication".into(),
        ));
    }
    if options.streaming && options.proto_version < 2 {
        return Err(invalid_input(format!(
            "streaming needs pgoutput protocol version 2 or later, not {}",
            options.proto_version
        )));
    }
    let publications = options
        .publication_names
        .iter()
        .map(|p| pg_ident(p))
        .collect::<Vec<_>>()
        .join(",");
    let mut sql = format!(
        "START_REPLICATION SLOT {} LOGICAL {start} (proto_version {}, publication_names {}",
        pg_ident(slot),
        pg_literal(&options.proto_version.to_string()),
        pg_literal(&publications),
    );
    if options.messages {
        sql.push_str(", messages 'true'");
    }
    if options.streaming {
        sql.push_str(", streaming 'on'");
    }
    if options.binary {
        sql.push_str(", binary 'true'");
    }
    sql.push(')');
    Ok(sql)
}

#[cfg(test)]
mod tests;
