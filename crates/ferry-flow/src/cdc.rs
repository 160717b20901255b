//! Streaming changes: pgoutput from the slot, in batches, into ClickHouse.
//!
//! # Versions
//!
//! Every change is written as a row of the destination table with `_ferry_version` set to the
//! LSN of the change's own WAL record (what pgoutput sends as the XLogData start). A row's
//! changes reach the WAL in the order they commit — a writer holds the row's lock until it
//! commits, so the next writer's record comes later — and a change's LSN is the same every
//! time the WAL is decoded. So the newest change of each row wins in `ReplacingMergeTree`,
//! and replaying WAL after a crash writes exactly the rows it wrote before, which collapse
//! into them. Rows of the initial load have version 0, below every change.
//!
//! # Checkpoints
//!
//! Changes gather in a batch, closed at a transaction boundary once it holds `max_batch_size`
//! rows or is `sync_interval` old. A batch is one insert per table. Only after ClickHouse has
//! confirmed every insert of a batch does the catalog record the commit LSN of the batch's
//! last transaction, and only then is that LSN confirmed to PostgreSQL (the flush position of
//! the standby status update), which lets the server discard the WAL before it. A restart
//! resumes the slot from the catalog's LSN; what was written after it is written again, with
//! the same versions.
//!
//! A transaction too large for one batch is written in several inserts as it arrives (pgoutput
//! protocol 1 sends a transaction only once it has committed, so nothing written can be rolled
//! back); the confirmed LSN moves only past its commit. Memory stays bounded by the batch size.
//!
//! When nothing is pending, keepalives move the confirmed LSN to the server's sent position,
//! so an idle mirror, or one whose tables see no writes, does not hold WAL back.
//!
//! # Unchanged TOAST values
//!
//! An UPDATE that leaves a large (TOASTed) column alone does not carry its value. Ferry takes
//! it from an earlier change of the row in the batch, else from ClickHouse's version of the
//! row from before the batch (see [`toast`]). It never writes an empty or default value for
//! an unchanged column.
//!
//! # Schema changes
//!
//! A column added at the source is added to the destination table (`ALTER TABLE … ADD COLUMN`)
//! before the first row that carries it is written. A dropped column is no longer written; it
//! stays in ClickHouse. A column whose type changes stops the mirror with an error naming it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_catalog::{BatchRecord, Catalog, TableRow};
use ferry_clickhouse::table::{Destination, WriteError};
use ferry_core::ident::{ch_ident, ch_qualified};
use ferry_core::peer::PostgresConfig;
use ferry_core::value::PG_EPOCH_UNIX_MICROS;
use ferry_core::{ColumnSchema, ErrorKind, Lsn, TableName, Value, ValueKind};
use ferry_postgres::connect::{connect, SourceError};
use ferry_postgres::pgoutput::{
    PgOutputDecoder, PgOutputMessage, RelationBody, TupleColumn, TupleData,
};
use ferry_postgres::replication::{
    PgOutputOptions, ReplicationConnection, ReplicationMessage, ReplicationStream,
};
use ferry_postgres::types::decode_text;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::FlowError;

mod toast;

/// How often the position is reported to the source when nothing else happens.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// How often an idle mirror's moving position is written to the catalog.
const IDLE_CATALOG_EVERY: Duration = Duration::from_secs(5);

/// What the stream needs to know about its mirror.
pub struct StreamContext {
    pub mirror: String,
    pub mirror_id: i64,
    pub source: PostgresConfig,
    pub destination: Destination,
    pub catalog: Catalog,
    pub slot: String,
    pub publication: String,
    /// Where to resume: the catalog's confirmed LSN, or the snapshot's.
    pub start: Lsn,
    pub sync_interval: Duration,
    pub max_batch_size: usize,
    /// Warn and mark the mirror when the slot retains more WAL than this.
    pub max_slot_lag_bytes: Option<u64>,
    /// Stop once everything up to here is applied (catching up after a load); `None`: never.
    pub until: Option<Lsn>,
    /// For a schema mapping: source schema → destination database, where new tables are adopted.
    pub schemas: Vec<(String, String)>,
    pub stop: watch::Receiver<bool>,
}

/// A destination table and the columns written to it.
struct Target {
    row: TableRow,
    columns: Vec<ColumnSchema>,
}

/// The source's current description of a relation, mapped onto its target.
struct Relation {
    target: usize,
    /// For each column of the relation, its index among the target's columns.
    positions: Vec<usize>,
    /// The same indices, sorted: the columns a change of this relation writes.
    active: Vec<usize>,
}

/// One change, as a destination row.
struct PendingRow {
    /// Values of the active columns (see [`Batch::active`]).
    values: Vec<Value>,
    /// Columns whose value was an unchanged TOAST value not found in the batch.
    unresolved: Vec<usize>,
    /// Values of `unresolved` columns found again, as ClickHouse holds them (RowBinary), by
    /// column; they take the place of `values` there.
    encoded: Vec<(usize, Vec<u8>)>,
    /// The batch's earlier row of the same row whose unchanged values are unresolved too:
    /// this row's take theirs, once found.
    depends_on: Option<usize>,
    /// For an update that moved the row to a new key: the batch's deletion row of its old
    /// key, under which its earlier values are stored.
    moved_from: Option<usize>,
    version: u64,
    deleted: bool,
}

#[derive(Default)]
struct TableBatch {
    /// Target column indices written by this batch, in insert order.
    active: Vec<usize>,
    rows: Vec<PendingRow>,
    /// The latest row of each key in `rows`, for unchanged TOAST values.
    latest: HashMap<String, usize>,
}

#[derive(Default)]
struct Batch {
    tables: HashMap<usize, TableBatch>,
    rows: usize,
    first_lsn: Option<Lsn>,
    started: Option<SystemTime>,
    inserted: i64,
    updated: i64,
    deleted: i64,
    last_commit_micros: Option<i64>,
}

fn now_pg_micros() -> i64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    unix - PG_EPOCH_UNIX_MICROS
}

fn pg_micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
        - PG_EPOCH_UNIX_MICROS
}

/// A stand-in for a column a change does not carry, in a row that only marks a deletion.
fn placeholder(kind: &ValueKind, nullable: bool) -> Value {
    if nullable {
        return Value::Null;
    }
    match kind {
        ValueKind::Bool => Value::Bool(false),
        ValueKind::Int16 => Value::Int16(0),
        ValueKind::Int32 => Value::Int32(0),
        ValueKind::Int64 => Value::Int64(0),
        ValueKind::UInt32 => Value::UInt32(0),
        ValueKind::Float32 => Value::Float32(0.0),
        ValueKind::Float64 => Value::Float64(0.0),
        ValueKind::Decimal { .. } => Value::Numeric(ferry_core::Numeric::Finite("0".into())),
        ValueKind::Text => Value::Text(String::new()),
        ValueKind::Bytes => Value::Bytes(Vec::new()),
        ValueKind::Uuid => Value::Uuid([0; 16]),
        ValueKind::Date => Value::Date(0),
        ValueKind::Timestamp => Value::Timestamp(0),
        ValueKind::TimestampTz => Value::TimestampTz(0),
        ValueKind::Array { .. } => Value::Array {
            dims: Vec::new(),
            elements: Vec::new(),
        },
    }
}

/// The stream of one mirror.
pub struct Streamer {
    ctx: Arc<StreamContext>,
    targets: Vec<Target>,
    relations: HashMap<u32, Option<Arc<Relation>>>,
    batch: Batch,
    /// Everything up to here is in ClickHouse and the catalog.
    confirmed: Lsn,
    /// End of the last transaction received in full.
    committed: Lsn,
    /// Where the server says it is.
    server_lsn: Lsn,
    in_transaction: bool,
    commit_micros: i64,
    batch_opened: Option<Instant>,
    /// Whether the mirror is marked for retaining too much WAL.
    lag_marked: bool,
    /// When an idle advance was last recorded in the catalog.
    catalog_written: Option<Instant>,
}

impl Streamer {
    pub async fn new(ctx: Arc<StreamContext>) -> Result<Streamer, FlowError> {
        let mut targets = Vec::new();
        for row in ctx.catalog.mirror_tables(ctx.mirror_id).await? {
            let columns: Vec<ColumnSchema> =
                serde_json::from_value(row.columns.clone()).map_err(|e| {
                    FlowError::internal(format!(
                        "table {}: stored columns unreadable: {e}",
                        row.source
                    ))
                })?;
            targets.push(Target { row, columns });
        }
        let start = ctx.start;
        Ok(Streamer {
            ctx,
            targets,
            relations: HashMap::new(),
            batch: Batch::default(),
            confirmed: start,
            committed: start,
            server_lsn: start,
            in_transaction: false,
            commit_micros: 0,
            batch_opened: None,
            lag_marked: false,
            catalog_written: None,
        })
    }

    /// Streams until stopped (`Ok`) or an error.
    pub async fn run(mut self) -> Result<(), FlowError> {
        let result = self.stream_changes().await;
        if result.is_err() && self.server_lsn > self.confirmed {
            // The source got further than the destination: record that, so the mirror's lag
            // shows while it retries (best effort: the catalog may be what failed).
            let _ = self.record_position().await;
        }
        result
    }

    /// Records the confirmed position and the source's in the catalog, without a batch.
    async fn record_position(&mut self) -> Result<(), FlowError> {
        self.ctx
            .catalog
            .confirm(
                self.ctx.mirror_id,
                &self.confirmed.to_string(),
                &self.server_lsn.to_string(),
                None,
            )
            .await?;
        self.catalog_written = Some(Instant::now());
        Ok(())
    }

    async fn stream_changes(&mut self) -> Result<(), FlowError> {
        let conn = ReplicationConnection::connect(&self.ctx.source).await?;
        let options = PgOutputOptions {
            publication_names: vec![self.ctx.publication.clone()],
            proto_version: 1,
            streaming: false,
            messages: false,
        };
        let mut stream = conn
            .start_replication(&self.ctx.slot, self.ctx.start, &options)
            .await?;
        info!(slot = %self.ctx.slot, lsn = %self.ctx.start, "streaming changes");
        let mut decoder = PgOutputDecoder::new();
        let mut stop = self.ctx.stop.clone();
        let mut status = tokio::time::interval(STATUS_EVERY);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut ticks = 0u64;
        loop {
            if self.ctx.until.is_some_and(|u| self.confirmed >= u) {
                info!(lsn = %self.confirmed, "caught up");
                let _ = stream.stop().await;
                return Ok(());
            }
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg? else {
                        return Err(FlowError::new(ErrorKind::Transient, "08006", "the source ended the replication stream"));
                    };
                    match msg {
                        ReplicationMessage::XLogData { wal_start, wal_end, data, .. } => {
                            self.server_lsn = self.server_lsn.max(wal_end);
                            let message = decoder.decode(data).map_err(SourceError::from)?;
                            self.handle(wal_start, message).await?;
                            if self.batch.rows >= self.ctx.max_batch_size {
                                self.flush(&mut stream).await?;
                            }
                        }
                        ReplicationMessage::PrimaryKeepalive { wal_end, reply_requested, .. } => {
                            self.server_lsn = self.server_lsn.max(wal_end);
                            if self.batch.rows == 0 && !self.in_transaction && wal_end > self.confirmed {
                                // Nothing pending: everything the server sent is applied.
                                self.advance_idle(wal_end, &mut stream).await?;
                            }
                            if reply_requested {
                                self.report(&mut stream).await?;
                            }
                        }
                    }
                }
                _ = tick.tick() => {
                    ticks += 1;
                    let due = self.batch_opened.is_some_and(|t| t.elapsed() >= self.ctx.sync_interval);
                    if due && !self.in_transaction {
                        self.flush(&mut stream).await?;
                    }
                    // Catching up: ask for a keepalive, which moves an idle position forward.
                    if self.ctx.until.is_some() && ticks % 5 == 0 && self.batch.rows == 0 && !self.in_transaction {
                        stream.send_status(self.confirmed, self.confirmed, self.confirmed, true).await?;
                    }
                }
                _ = status.tick() => {
                    self.report(&mut stream).await?;
                    if self.catalog_written.is_none_or(|t| t.elapsed() >= STATUS_EVERY) {
                        self.record_position().await?;
                    }
                }
                _ = crate::stopped(&mut stop) => {
                    if !self.in_transaction && self.batch.rows > 0 {
                        self.flush(&mut stream).await?;
                    }
                    self.record_position().await?;
                    let _ = stream.stop().await;
                    return Ok(());
                }
            }
        }
    }

    async fn report(&mut self, stream: &mut ReplicationStream) -> Result<(), FlowError> {
        stream
            .send_status(self.confirmed, self.confirmed, self.confirmed, false)
            .await?;
        self.check_slot_lag().await
    }

    /// Warns, and marks the mirror, while the slot retains more WAL than allowed.
    async fn check_slot_lag(&mut self) -> Result<(), FlowError> {
        let Some(limit) = self.ctx.max_slot_lag_bytes else {
            return Ok(());
        };
        let lag = self.server_lsn.0.saturating_sub(self.confirmed.0);
        if lag > limit && !self.lag_marked {
            warn!(
                lag_bytes = lag,
                limit_bytes = limit,
                "the slot retains more WAL than max_slot_lag_bytes"
            );
            let message = format!("the replication slot retains {lag} bytes of WAL, more than max_slot_lag_bytes ({limit})");
            let hint = "ClickHouse may be slow or unreachable; see the daemon's log. The source keeps WAL until Ferry catches up.";
            self.ctx
                .catalog
                .set_mirror_warning(self.ctx.mirror_id, Some((&message, hint)))
                .await?;
            self.lag_marked = true;
        } else if lag <= limit && self.lag_marked {
            info!(
                lag_bytes = lag,
                "the slot's WAL is back under max_slot_lag_bytes"
            );
            self.ctx
                .catalog
                .set_mirror_warning(self.ctx.mirror_id, None)
                .await?;
            self.lag_marked = false;
        }
        Ok(())
    }

    /// Moves the position of a mirror with nothing pending. The server sends a keepalive each
    /// time it has sent all WAL and the client's position is behind, which on a busy server is
    /// often: the source hears of the new position at once (so it stops asking), the catalog
    /// every few seconds. Confirming to the source ahead of the catalog is safe here: nothing
    /// between the two positions concerns the mirror.
    async fn advance_idle(
        &mut self,
        to: Lsn,
        stream: &mut ReplicationStream,
    ) -> Result<(), FlowError> {
        self.confirmed = to;
        self.committed = self.committed.max(to);
        stream.send_status(to, to, to, false).await?;
        if self
            .catalog_written
            .is_none_or(|t| t.elapsed() >= IDLE_CATALOG_EVERY)
        {
            self.record_position().await?;
        }
        Ok(())
    }

    async fn handle(&mut self, lsn: Lsn, message: PgOutputMessage) -> Result<(), FlowError> {
        match message {
            PgOutputMessage::Begin {
                commit_time_micros, ..
            } => {
                self.in_transaction = true;
                self.commit_micros = commit_time_micros;
            }
            PgOutputMessage::Commit {
                end_lsn,
                commit_time_micros,
                ..
            } => {
                self.in_transaction = false;
                self.committed = self.committed.max(end_lsn);
                if self.batch.rows > 0 {
                    self.batch.last_commit_micros = Some(commit_time_micros);
                }
            }
            PgOutputMessage::Relation(body) => self.relation(body).await?,
            PgOutputMessage::Insert {
                relation_id, new, ..
            } => {
                if let Some((t, relation)) = self.route(relation_id) {
                    self.push(t, &relation, &new, lsn, false, None).await?;
                    self.batch.inserted += 1;
                }
            }
            PgOutputMessage::Update {
                relation_id,
                old,
                new,
                ..
            } => {
                if let Some((t, relation)) = self.route(relation_id) {
                    // Unchanged TOAST values are those of the row before the update: under
                    // its old key when the key changed.
                    let mut previous_key = None;
                    if let Some(old) = &old {
                        let old_key = self.key_of(t, &relation.positions, old.tuple());
                        if old_key != self.key_of(t, &relation.positions, &new) {
                            // The key changed: the row under the old key is gone.
                            let earlier = self.latest_row(t, &old_key);
                            self.push(t, &relation, old.tuple(), lsn, true, None)
                                .await?;
                            previous_key = Some(earlier);
                        }
                    }
                    self.push(t, &relation, &new, lsn, false, previous_key)
                        .await?;
                    self.batch.updated += 1;
                }
            }
            PgOutputMessage::Delete {
                relation_id, old, ..
            } => {
                if let Some((t, relation)) = self.route(relation_id) {
                    self.push(t, &relation, old.tuple(), lsn, true, None)
                        .await?;
                    self.batch.deleted += 1;
                }
            }
            PgOutputMessage::Truncate { relation_ids, .. } => {
                let targets: Vec<usize> = relation_ids
                    .iter()
                    .filter_map(|id| self.route(*id).map(|(t, _)| t))
                    .collect();
                if !targets.is_empty() {
                    // Changes before the TRUNCATE must land first.
                    self.write_batch().await?;
                    for t in targets {
                        let target = &self.targets[t];
                        let sql = format!(
                            "TRUNCATE TABLE {}",
                            ch_qualified(
                                &target.row.destination_database,
                                &target.row.destination_table
                            )
                        );
                        self.ctx.destination.execute(&sql).await?;
                        info!(table = %target.row.source, "source table truncated; destination emptied");
                    }
                }
            }
            PgOutputMessage::Origin { .. }
            | PgOutputMessage::Type(_)
            | PgOutputMessage::Message { .. } => {}
            PgOutputMessage::StreamStart { .. }
            | PgOutputMessage::StreamStop
            | PgOutputMessage::StreamCommit { .. }
            | PgOutputMessage::StreamAbort { .. } => {
                return Err(FlowError::internal(
                    "a streamed-transaction message arrived on a protocol 1 stream",
                ));
            }
        }
        Ok(())
    }

    fn route(&self, relation_id: u32) -> Option<(usize, Arc<Relation>)> {
        match self.relations.get(&relation_id) {
            Some(Some(r)) => Some((r.target, r.clone())),
            _ => None,
        }
    }

    /// Takes in a Relation message: maps its columns onto the target, adding new ones.
    async fn relation(&mut self, body: RelationBody) -> Result<(), FlowError> {
        let name = TableName::new(body.namespace.clone(), body.name.clone());
        let known = self.targets.iter().position(|x| x.row.source == name);
        let t = match known {
            Some(t) => t,
            None => match self.adopt(&name).await? {
                Some(t) => t,
                None => {
                    debug!(table = %name, "changes of a table outside the mirror are skipped");
                    self.relations.insert(body.id, None);
                    return Ok(());
                }
            },
        };
        // Rows gathered under the old shape go out first.
        if self
            .batch
            .tables
            .get(&t)
            .is_some_and(|b| !b.rows.is_empty())
        {
            self.write_batch().await?;
        }
        let missing: Vec<String> = body
            .columns
            .iter()
            .filter(|c| !self.targets[t].columns.iter().any(|x| x.name == c.name))
            .map(|c| c.name.clone())
            .collect();
        if !missing.is_empty() {
            self.add_columns(t, &missing).await?;
        }
        let mut positions = Vec::with_capacity(body.columns.len());
        for c in &body.columns {
            let target = &self.targets[t];
            let i = target
                .columns
                .iter()
                .position(|x| x.name == c.name)
                .ok_or_else(|| {
                    FlowError::internal(format!("column {} of {name} was not added", c.name))
                })?;
            let known_oid = target.columns[i].type_oid;
            // The catalog holds a domain's base type; pgoutput names the domain.
            if known_oid != c.type_oid && known_oid != self.base_type(c.type_oid).await? {
                let known = &self.targets[t].columns[i];
                return Err(FlowError::new(
                    ErrorKind::Unsupported,
                    "0A000",
                    format!(
                        "column \"{}\" of table {name} changed type at the source (type oid {} → {}); the destination cannot follow",
                        c.name, known.type_oid, c.type_oid
                    ),
                )
                .with_hint("RESYNC MIRROR reloads the table with its new shape."));
            }
            positions.push(i);
        }
        let mut active = positions.clone();
        active.sort_unstable();
        self.relations.insert(
            body.id,
            Some(Arc::new(Relation {
                target: t,
                positions,
                active,
            })),
        );
        Ok(())
    }

    /// The base type of a domain (through domains over domains); any other type itself.
    async fn base_type(&self, oid: u32) -> Result<u32, FlowError> {
        let client = connect(&self.ctx.source, "ferry type lookup").await?;
        let row = client
            .query_one(
                "WITH RECURSIVE walk(oid, typtype, typbasetype) AS (
                     SELECT oid, typtype, typbasetype FROM pg_type WHERE oid = $1
                     UNION ALL
                     SELECT t.oid, t.typtype, t.typbasetype FROM pg_type t JOIN walk w ON t.oid = w.typbasetype
                     WHERE w.typtype = 'd')
                 SELECT coalesce((SELECT oid FROM walk WHERE typtype <> 'd' LIMIT 1), $1)",
                &[&oid],
            )
            .await
            .map_err(|e| SourceError::from_pg(&self.ctx.source, e))?;
        Ok(row.get(0))
    }

    /// A table created in a mapped schema after the mirror started: its destination table is
    /// created and it joins the mirror. Its rows all come through the stream, since the
    /// publication covered the schema when the table was created.
    async fn adopt(&mut self, name: &TableName) -> Result<Option<usize>, FlowError> {
        let Some((_, db)) = self.ctx.schemas.iter().find(|(s, _)| *s == name.schema) else {
            return Ok(None);
        };
        let client = connect(&self.ctx.source, "ferry new table").await?;
        let scale = ferry_postgres::source::money_scale(&client, &self.ctx.source).await?;
        let Some(described) =
            ferry_postgres::source::describe_table(&client, &self.ctx.source, name, &[], scale)
                .await?
        else {
            return Ok(None);
        };
        if !described.has_identity() {
            let message = format!("new table {name} has no primary key and is not replicated");
            warn!(table = %name, "a new table in a mapped schema has no primary key; not replicated");
            self.ctx
                .catalog
                .set_mirror_warning(
                    self.ctx.mirror_id,
                    Some((
                        &message,
                        "Add a primary key, or set REPLICA IDENTITY FULL, then RESYNC MIRROR.",
                    )),
                )
                .await?;
            return Ok(None);
        }
        let destination = &self.ctx.destination;
        destination.ensure_database(db).await?;
        if !destination.table_exists(db, &name.name).await? {
            destination
                .create_table(db, &name.name, &described.columns)
                .await?;
        }
        let new = ferry_catalog::NewTable {
            source: name.clone(),
            source_oid: described.oid,
            destination_database: db.clone(),
            destination_table: name.name.clone(),
            columns: serde_json::to_value(&described.columns)
                .map_err(|e| FlowError::internal(e.to_string()))?,
            rows_estimated: 0,
        };
        let row = self
            .ctx
            .catalog
            .add_streamed_table(self.ctx.mirror_id, &new)
            .await?;
        info!(table = %name, destination = %format!("{db}.{}", name.name), "new table in a mapped schema joins the mirror");
        self.targets.push(Target {
            row,
            columns: described.columns,
        });
        Ok(Some(self.targets.len() - 1))
    }

    async fn add_columns(&mut self, t: usize, names: &[String]) -> Result<(), FlowError> {
        let target = &self.targets[t];
        let client = connect(&self.ctx.source, "ferry schema change").await?;
        let scale = ferry_postgres::source::money_scale(&client, &self.ctx.source).await?;
        let described = ferry_postgres::source::describe_table(
            &client,
            &self.ctx.source,
            &target.row.source,
            &[],
            scale,
        )
        .await?
        .ok_or_else(|| {
            FlowError::new(
                ErrorKind::NotFound,
                "42P01",
                format!("table {} is gone", target.row.source),
            )
        })?;
        let mut added = Vec::new();
        for n in names {
            let Some(c) = described.columns.iter().find(|c| &c.name == n) else {
                return Err(FlowError::new(
                    ErrorKind::Transient,
                    "55000",
                    format!(
                        "column \"{n}\" of table {} is in the stream but not in the catalog yet",
                        target.row.source
                    ),
                ));
            };
            // Rows written before the column existed have no value for it: always nullable.
            let mut c = c.clone();
            c.nullable = true;
            c.key_position = None;
            let sql = format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}",
                ch_qualified(
                    &target.row.destination_database,
                    &target.row.destination_table
                ),
                ch_ident(&c.name),
                ferry_clickhouse::types::clickhouse_type(&c.kind, true),
            );
            self.ctx.destination.execute(&sql).await?;
            info!(table = %target.row.source, column = %c.name, "column added at the source; added to the destination");
            added.push(c);
        }
        let target = &mut self.targets[t];
        target.columns.extend(added);
        let json = serde_json::to_value(&target.columns)
            .map_err(|e| FlowError::internal(e.to_string()))?;
        self.ctx
            .catalog
            .set_table_columns(target.row.id, &json)
            .await?;
        Ok(())
    }

    fn decode_column(
        &self,
        t: usize,
        col: usize,
        value: &TupleColumn,
    ) -> Result<Option<Value>, FlowError> {
        let c = &self.targets[t].columns[col];
        Ok(Some(match value {
            TupleColumn::Null => Value::Null,
            TupleColumn::UnchangedToast => return Ok(None),
            TupleColumn::Text(b) | TupleColumn::Binary(b) => {
                let text = std::str::from_utf8(b).map_err(|_| {
                    FlowError::new(
                        ErrorKind::Unsupported,
                        "22021",
                        format!("column \"{}\": value is not UTF-8", c.name),
                    )
                })?;
                decode_text(&c.kind, text).map_err(|e| {
                    FlowError::new(
                        e.kind(),
                        "22P02",
                        format!(
                            "table {}, column \"{}\": {e}",
                            self.targets[t].row.source, c.name
                        ),
                    )
                })?
            }
        }))
    }

    /// The batch's latest row for a key of table `t`.
    fn latest_row(&self, t: usize, key: &str) -> Option<usize> {
        self.batch
            .tables
            .get(&t)
            .and_then(|b| b.latest.get(key).copied())
    }

    /// The key of a tuple, as text, for lookups within the batch.
    fn key_of(&self, t: usize, positions: &[usize], tuple: &TupleData) -> String {
        let mut key = String::new();
        for (i, v) in tuple.columns.iter().enumerate() {
            let Some(&col) = positions.get(i) else {
                continue;
            };
            if self.is_key(t, col) {
                match v {
                    TupleColumn::Text(b) | TupleColumn::Binary(b) => {
                        key.push_str(&String::from_utf8_lossy(b))
                    }
                    TupleColumn::Null => key.push('\u{0}'),
                    TupleColumn::UnchangedToast => key.push('\u{2}'),
                }
                key.push('\u{1}');
            }
        }
        key
    }

    /// Whether a column identifies rows: a key column, or any column of a table without a key
    /// (REPLICA IDENTITY FULL).
    fn is_key(&self, t: usize, col: usize) -> bool {
        let columns = &self.targets[t].columns;
        columns[col].key_position.is_some() || columns.iter().all(|c| c.key_position.is_none())
    }

    /// Adds a change of a row to the batch.
    async fn push(
        &mut self,
        t: usize,
        relation: &Relation,
        tuple: &TupleData,
        lsn: Lsn,
        deleted: bool,
        // For an update that moved the row to a new key: the batch's row of its old key, if
        // any (`Some(None)`: the old key has none), where its unchanged values are.
        previous_key: Option<Option<usize>>,
    ) -> Result<(), FlowError> {
        let positions = &relation.positions;
        // The columns this change writes: those the relation has now.
        let active = &relation.active;
        {
            let tb = self.batch.tables.entry(t).or_default();
            if tb.active.is_empty() {
                tb.active = active.clone();
            }
            if &tb.active != active {
                // Cannot happen: a Relation message flushes the table first.
                return Err(FlowError::internal("columns changed within a batch"));
            }
        }
        let key = self.key_of(t, positions, tuple);
        let mut values: Vec<Option<Value>> = vec![None; active.len()];
        let mut present = vec![false; active.len()];
        for (i, v) in tuple.columns.iter().enumerate() {
            let Some(&col) = positions.get(i) else {
                continue;
            };
            let slot = active
                .binary_search(&col)
                .map_err(|_| FlowError::internal("column not active"))?;
            // A deletion carries the key (or, with REPLICA IDENTITY FULL, the whole old row).
            if deleted
                && !self.is_key(t, col)
                && !matches!(v, TupleColumn::Text(_) | TupleColumn::Binary(_))
            {
                continue;
            }
            present[slot] = true;
            values[slot] = self.decode_column(t, col, v)?;
        }
        let columns = &self.targets[t].columns;
        let tb = self
            .batch
            .tables
            .get_mut(&t)
            .ok_or_else(|| FlowError::internal("batch table missing"))?;
        let previous = match previous_key {
            Some(p) => p,
            None => tb.latest.get(&key).copied(),
        };
        let mut unresolved = Vec::new();
        let mut depends_on = None;
        let mut row = Vec::with_capacity(active.len());
        for (slot, v) in values.into_iter().enumerate() {
            let col = &columns[active[slot]];
            row.push(match v {
                Some(v) => v,
                // A deletion's row has no values to give.
                None if deleted || !present[slot] => placeholder(&col.kind, col.nullable),
                None => match previous.filter(|&p| tb.rows.get(p).is_some_and(|p| !p.deleted)) {
                    Some(p) if !tb.rows[p].unresolved.contains(&slot) => {
                        tb.rows[p].values[slot].clone()
                    }
                    earlier => {
                        depends_on = earlier;
                        unresolved.push(slot);
                        placeholder(&col.kind, col.nullable)
                    }
                },
            });
        }
        // The deletion of the old key was pushed just before this row.
        let moved_from = previous_key
            .filter(|_| !unresolved.is_empty() && depends_on.is_none())
            .and_then(|_| tb.rows.len().checked_sub(1));
        tb.rows.push(PendingRow {
            values: row,
            unresolved,
            encoded: Vec::new(),
            depends_on,
            moved_from,
            version: lsn.0,
            deleted,
        });
        let index = tb.rows.len() - 1;
        tb.latest.insert(key, index);
        self.batch.rows += 1;
        if self.batch.first_lsn.is_none() {
            self.batch.first_lsn = Some(lsn);
            self.batch.started = Some(SystemTime::now());
            self.batch_opened = Some(Instant::now());
        }
        Ok(())
    }

    /// Writes the batch's rows to ClickHouse: one insert per table.
    async fn write_batch(&mut self) -> Result<(), FlowError> {
        let tables: Vec<usize> = self.batch.tables.keys().copied().collect();
        for t in &tables {
            self.resolve_unchanged(*t).await?;
        }
        for t in tables {
            let Some(tb) = self.batch.tables.remove(&t) else {
                continue;
            };
            if tb.rows.is_empty() {
                continue;
            }
            let target = &self.targets[t];
            let columns: Vec<ColumnSchema> = tb
                .active
                .iter()
                .map(|&c| target.columns[c].clone())
                .collect();
            let mut insert = self.ctx.destination.insert(
                &target.row.destination_database,
                &target.row.destination_table,
                &columns,
            );
            for r in &tb.rows {
                let encoded: Vec<(usize, &[u8])> =
                    r.encoded.iter().map(|(s, b)| (*s, b.as_slice())).collect();
                insert
                    .push_with(&r.values, &encoded, r.version, r.deleted)
                    .await
                    .map_err(|e| match e {
                        WriteError::Encode { column, source } => FlowError::new(
                            source.kind(),
                            "22000",
                            format!(
                                "table {}, column \"{}\": {source}",
                                target.row.source,
                                columns.get(column).map(|c| c.name.as_str()).unwrap_or("?")
                            ),
                        ),
                        other => FlowError::from(other),
                    })?;
            }
            insert.finish().await?;
        }
        Ok(())
    }

    /// Writes the batch, then records and confirms the last complete transaction.
    async fn flush(&mut self, stream: &mut ReplicationStream) -> Result<(), FlowError> {
        let started = self.batch.started;
        self.write_batch().await?;
        let batch = std::mem::take(&mut self.batch);
        self.batch_opened = None;
        if batch.rows > 0 {
            let record = BatchRecord {
                rows: batch.rows as i64,
                first_lsn: batch.first_lsn.unwrap_or(self.committed).to_string(),
                last_lsn: self.committed.to_string(),
                started_micros: started.map(pg_micros).unwrap_or_else(now_pg_micros),
                finished_micros: now_pg_micros(),
                inserted: batch.inserted,
                updated: batch.updated,
                deleted: batch.deleted,
                last_commit_micros: batch.last_commit_micros,
            };
            self.ctx
                .catalog
                .confirm(
                    self.ctx.mirror_id,
                    &self.committed.to_string(),
                    &self.server_lsn.to_string(),
                    Some(&record),
                )
                .await?;
            self.catalog_written = Some(Instant::now());
            debug!(rows = batch.rows, lsn = %self.committed, "batch applied");
        }
        if self.committed > self.confirmed {
            self.confirmed = self.committed;
            self.report(stream).await?;
        }
        Ok(())
    }
}

/// A key value as pgoutput would print it, for looking rows up by key.
fn value_text(v: &Value) -> Result<String, FlowError> {
    Ok(match v {
        Value::Null => String::new(),
        Value::Bool(b) => if *b { "t" } else { "f" }.to_owned(),
        Value::Int16(x) => x.to_string(),
        Value::Int32(x) => x.to_string(),
        Value::Int64(x) => x.to_string(),
        Value::UInt32(x) => x.to_string(),
        Value::Numeric(n) => n.to_string(),
        Value::Text(s) => s.clone(),
        Value::Uuid(u) => {
            let h = hex_lower(u);
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        }
        other => {
            return Err(FlowError::new(
                ErrorKind::Unsupported,
                "0A000",
                format!("looking rows up by a key of this type is not supported ({other:?})"),
            ))
        }
    })
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_fit_their_kind() {
        for kind in [
            ValueKind::Int32,
            ValueKind::Text,
            ValueKind::Uuid,
            ValueKind::Decimal {
                precision: 10,
                scale: 2,
            },
        ] {
            let mut out = Vec::new();
            ferry_clickhouse::rowbinary::encode(&kind, false, &placeholder(&kind, false), &mut out)
                .unwrap();
            assert!(!out.is_empty());
        }
        assert_eq!(placeholder(&ValueKind::Int32, true), Value::Null);
    }

    #[test]
    fn key_text_matches_postgres_output() {
        assert_eq!(value_text(&Value::Bool(true)).unwrap(), "t");
        assert_eq!(value_text(&Value::Int64(-5)).unwrap(), "-5");
        let u = [
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11,
        ];
        assert_eq!(
            value_text(&Value::Uuid(u)).unwrap(),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
    }
}
