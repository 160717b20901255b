//! Streaming changes: pgoutput from the slot, in batches, into the destination.
//!
//! # Checkpoints
//!
//! Changes gather in a batch ([`batch`]). A batch closes at a transaction boundary once it
//! holds `max_batch_size` rows (or 64 MiB), is `sync_interval` old, or the stream has caught
//! up with the server (then not more often than every 100 ms), so it holds whole transactions
//! and may pass `max_batch_size` by the rows of its last one; it is handed to the destination
//! (`Apply::write`) and committed there (`Apply::commit`), in the background ([`writer`]): the
//! stream receives and decodes the next changes meanwhile. Only after the destination has
//! acknowledged the commit does the catalog record the commit LSN of the batch's last
//! transaction, and only then is that LSN confirmed to PostgreSQL (the flush position of the
//! standby status update), which lets the server discard the WAL before it. A restart resumes
//! the slot from the catalog's LSN (or the destination's own, when it keeps one and is
//! further); what was written after it is written again, and the destination contract makes
//! that idempotent.
//!
//! Only a transaction that alone holds `max_batch_size` rows (or 64 MiB) is written before its
//! commit: the batch so far, with that transaction's rows, goes out in several chunks as the
//! rows arrive (pgoutput protocol 1 sends a transaction only once it has committed, so nothing
//! written can be rolled back); it is committed to the destination and confirmed only at its
//! commit. Memory stays bounded by the chunk size.
//!
//! When nothing is pending, keepalives move the confirmed LSN to the server's sent position,
//! so an idle mirror, or one whose tables see no writes, does not hold WAL back.
//!
//! # One table's trouble
//!
//! A destination error that concerns one table ([`ferry_core::destination::ApplyError`]) fails
//! that table alone: it is marked `failed` in the catalog with the error, and the stream
//! starts again from the last confirmed position without it, so the other tables lose
//! nothing. Its changes are skipped from then on, never applied half.
//!
//! The stream is split by concern: [`batch`] builds batches from row changes, [`relations`]
//! maps pgoutput's relations onto the mirror's tables and follows schema changes, [`writer`]
//! hands them to the destination, and this module runs the loop and moves positions.

mod batch;
mod relations;
mod scope;
mod writer;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_catalog::{BatchRecord, Catalog, TableRow};
use ferry_core::change::ChangeKind;
use ferry_core::destination::{ApplyError, Destination, TableSpec, Wire};
use ferry_core::mirror::TableState;
use ferry_core::peer::PostgresConfig;
use ferry_core::value::PG_EPOCH_UNIX_MICROS;
use ferry_core::{ErrorKind, Lsn, TableName};
use ferry_postgres::connect::SourceError;
use ferry_postgres::pgoutput::{OldTuple, PgOutputDecoder, PgOutputMessage};
use ferry_postgres::replication::{
    PgOutputOptions, ReplicationConnection, ReplicationMessage, ReplicationStream,
};
use futures::FutureExt;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use crate::FlowError;
use batch::Batch;
use relations::Relation;
use writer::{Done, Writer};

/// How often the position is reported to the source when nothing else happens.
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// How often an idle mirror's moving position is written to the catalog.
const IDLE_CATALOG_EVERY: Duration = Duration::from_secs(1);
/// A batch is written once the stream has caught up, but not more often than this.
const MIN_FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Messages taken in one go before the timers get a turn.
const DRAIN_MAX: usize = 4096;

/// What the stream needs to know about its mirror.
pub struct StreamContext {
    pub mirror: String,
    pub mirror_id: i64,
    pub source: PostgresConfig,
    pub destination: Arc<dyn Destination>,
    pub catalog: Catalog,
    pub slot: String,
    pub publication: String,
    /// Everything before this is in the destination for every table that streams: the
    /// catalog's confirmed LSN, or the snapshot's.
    pub applied: Lsn,
    /// While tables load on their own: where the slot is held (and the stream starts).
    pub hold: Option<Lsn>,
    pub sync_interval: Duration,
    pub max_batch_size: usize,
    /// Stop once everything up to here is applied (catching up after a load); `None`: never.
    pub until: Option<Lsn>,
    /// For a schema mapping: source schema → destination namespace, where new tables are
    /// adopted.
    pub schemas: Vec<(String, String)>,
    /// For a table mapping: the columns each table leaves out.
    pub excludes: HashMap<TableName, Vec<String>>,
    pub stop: watch::Receiver<bool>,
    /// Asks the stream to end at the next transaction boundary, so that it starts again with
    /// the tables' new states (a table's own load began or ended).
    pub wake: Arc<Notify>,
    /// What the monitor reads: pending changes, what is applied, rows per table.
    pub progress: Arc<crate::progress::MirrorProgress>,
}

/// Why the stream ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Asked to stop (pause, drop, shutdown).
    Stopped,
    /// Everything up to `until` is applied.
    CaughtUp,
    /// Woken: start again with the tables' new states.
    Restart,
}

impl StreamContext {
    fn excluded(&self, table: &TableName) -> Vec<String> {
        self.excludes.get(table).cloned().unwrap_or_default()
    }
}

/// A table of the mirror as the stream knows it.
pub(crate) struct Target {
    row: TableRow,
    /// Its destination table: the fresh one while it catches up.
    spec: Arc<TableSpec>,
}

fn now_pg_micros() -> i64 {
    pg_micros(SystemTime::now())
}

fn pg_micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
        - PG_EPOCH_UNIX_MICROS
}

/// The stream of one mirror.
pub struct Streamer {
    ctx: Arc<StreamContext>,
    targets: Vec<Target>,
    relations: HashMap<u32, Option<Arc<Relation>>>,
    batch: Batch,
    /// Writes to the destination, in the background (see [`writer`]).
    writer: Writer,
    /// What each commit sent to the writer and not yet acknowledged stands for.
    committing: VecDeque<BatchRecord>,
    /// Everything up to here is in the destination and the catalog, for every table that
    /// streams (it never goes back, not even while the stream goes over WAL again).
    applied: Lsn,
    /// The slot is not confirmed past here while tables load on their own.
    hold: Option<Lsn>,
    /// Going over WAL again from the hold: transactions that commit before this are in the
    /// destination already, except for tables catching up.
    skip_before: Lsn,
    /// Tables catching up join once the stream has received everything before this.
    rejoin_at: Option<Lsn>,
    /// End of the last transaction received in full.
    committed: Lsn,
    /// Where the server says it is.
    server_lsn: Lsn,
    in_transaction: bool,
    /// The commit position of the transaction being received (its commit record's LSN).
    commit_lsn: Lsn,
    /// And its commit time (microseconds since 2000-01-01 UTC).
    commit_micros: i64,
    /// A wake-up came in the middle of a transaction: end at its commit.
    restart_pending: bool,
    /// Everything the server had sent was taken in when last looked.
    caught_up: bool,
    /// pgoutput sends values in binary (see `binary_mode`).
    binary: bool,
    /// When a batch was last written.
    last_flush: Option<Instant>,
    /// The position last written to the catalog.
    recorded: Lsn,
    /// The position last reported to the source.
    reported: Lsn,
    /// When an idle advance was last recorded in the catalog.
    catalog_written: Option<Instant>,
}

impl Streamer {
    pub async fn new(ctx: Arc<StreamContext>) -> Result<Streamer, FlowError> {
        let mut targets = Vec::new();
        let mut catching_up = false;
        for row in ctx.catalog.mirror_tables(ctx.mirror_id).await? {
            let mut spec = crate::table_spec(&row)?;
            if row.state == TableState::Catchup {
                // Its changes go to the fresh table it was loaded into.
                catching_up = true;
                if let Some(fresh) = &row.load_table {
                    spec.target.table = fresh.clone();
                }
            }
            targets.push(Target {
                row,
                spec: Arc::new(spec),
            });
        }
        let mut applied = ctx.applied;
        if ctx.destination.capabilities().stores_position {
            if let Some(p) = ctx.destination.position().await? {
                applied = applied.max(p);
            }
        }
        let hold = ctx.hold;
        let start = hold.map_or(applied, |h| h.min(applied));
        let apply = ctx.destination.begin_apply().await?;
        Ok(Streamer {
            ctx,
            targets,
            relations: HashMap::new(),
            batch: Batch::default(),
            writer: Writer::new(apply),
            committing: VecDeque::new(),
            applied,
            hold,
            skip_before: applied,
            rejoin_at: catching_up.then_some(applied),
            committed: start,
            server_lsn: start,
            in_transaction: false,
            commit_lsn: start,
            commit_micros: 0,
            restart_pending: false,
            caught_up: false,
            binary: false,
            last_flush: None,
            recorded: applied,
            reported: Lsn::ZERO,
            catalog_written: None,
        })
    }

    /// Where the stream starts: the hold, else where everything is applied.
    fn start(&self) -> Lsn {
        self.hold.map_or(self.applied, |h| h.min(self.applied))
    }

    /// The position confirmed to the source: what is applied, but never past the hold.
    fn slot_position(&self) -> Lsn {
        self.hold.map_or(self.applied, |h| h.min(self.applied))
    }

    /// Streams until stopped, caught up, woken, or an error.
    pub async fn run(mut self) -> Result<StreamEnd, FlowError> {
        let _reading = self.ctx.progress.reading(self.applied);
        let result = self.stream_changes().await;
        self.writer.shut_down().await;
        if result.is_err() && self.server_lsn > self.applied {
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
            .confirm(self.ctx.mirror_id, self.applied, self.server_lsn, None)
            .await?;
        self.catalog_written = Some(Instant::now());
        self.recorded = self.applied;
        Ok(())
    }

    async fn stream_changes(&mut self) -> Result<StreamEnd, FlowError> {
        let conn = ReplicationConnection::connect(&self.ctx.source).await?;
        self.binary = self.binary_mode();
        let options = PgOutputOptions {
            publication_names: vec![self.ctx.publication.clone()],
            proto_version: 1,
            streaming: false,
            messages: false,
            binary: self.binary,
        };
        let start = self.start();
        let mut stream = conn
            .start_replication(&self.ctx.slot, start, &options)
            .await
            .map_err(slot_trouble)?;
        info!(slot = %self.ctx.slot, lsn = %start, applied = %self.applied, binary = options.binary, "streaming changes");
        let wake = self.ctx.wake.clone();
        let mut decoder = PgOutputDecoder::new();
        let mut stop = self.ctx.stop.clone();
        let mut status = tokio::time::interval(STATUS_EVERY);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut scope = tokio::time::interval(scope::SCOPE_EVERY);
        scope.tick().await;
        let mut ticks = 0u64;
        loop {
            if self.restart_pending && !self.in_transaction {
                self.flush().await?;
                self.drain().await?;
                self.report(&mut stream).await?;
                let _ = stream.stop().await;
                return Ok(StreamEnd::Restart);
            }
            if self.ctx.until.is_some_and(|u| self.applied >= u) && self.rejoin_at.is_none() {
                info!(lsn = %self.applied, "caught up");
                let _ = stream.stop().await;
                return Ok(StreamEnd::CaughtUp);
            }
            if self.slot_position() > self.reported {
                self.report(&mut stream).await?;
            }
            tokio::select! {
                done = self.writer.next(), if !self.writer.idle() => {
                    self.on_done(done?).await?;
                }
                msg = stream.next() => {
                    // Everything the server has sent already is taken in one go (a bounded
                    // number of messages, so the timers are still served under load).
                    let mut msg = msg.map_err(slot_trouble)?;
                    let mut taken = 0;
                    loop {
                        let Some(m) = msg else {
                            return Err(FlowError::transient("08006", "the source ended the replication stream"));
                        };
                        self.on_message(m, &mut decoder, &mut stream).await?;
                        taken += 1;
                        if taken == DRAIN_MAX {
                            self.caught_up = false;
                            break;
                        }
                        match stream.next().now_or_never() {
                            Some(next) => msg = next.map_err(slot_trouble)?,
                            None => {
                                self.caught_up = true;
                                break;
                            }
                        }
                    }
                    if self.flush_due() {
                        self.flush().await?;
                    }
                }
                _ = tick.tick() => {
                    ticks += 1;
                    if self.flush_due() {
                        self.flush().await?;
                    }
                    let idle = self.batch.rows == 0 && !self.in_transaction && self.writer.idle();
                    // Caught up and idle: ask for a keepalive now and then, which says how far
                    // the server has read, and moves an idle position forward promptly.
                    if idle && (self.caught_up || self.ctx.until.is_some()) && ticks % 10 == 0 {
                        let at = self.slot_position();
                        stream.send_status(at, at, at, true).await?;
                    }
                    if idle
                        && self.applied > self.recorded
                        && self.catalog_written.is_none_or(|t| t.elapsed() >= IDLE_CATALOG_EVERY)
                    {
                        self.record_position().await?;
                    }
                }
                _ = status.tick() => {
                    self.report(&mut stream).await?;
                    if self.catalog_written.is_none_or(|t| t.elapsed() >= STATUS_EVERY) {
                        self.record_position().await?;
                    }
                }
                _ = scope.tick() => {
                    if !self.in_transaction {
                        self.check_scope().await?;
                    }
                }
                _ = wake.notified() => {
                    self.restart_pending = true;
                }
                _ = crate::stopped(&mut stop) => {
                    if !self.in_transaction && self.batch.rows > 0 {
                        self.flush().await?;
                    }
                    self.drain().await?;
                    self.record_position().await?;
                    let _ = stream.stop().await;
                    return Ok(StreamEnd::Stopped);
                }
            }
        }
    }

    /// Whether to ask pgoutput for binary values: always for a destination that takes each
    /// column's own binary form; for one that takes the canonical form, when every column of
    /// every table that streams is sent in it already (else text mode, re-encoded).
    fn binary_mode(&self) -> bool {
        match self.ctx.destination.wire() {
            Wire::Native => true,
            Wire::Canonical => self
                .targets
                .iter()
                .filter(|t| t.row.state.streams())
                .all(|t| {
                    t.spec
                        .columns
                        .iter()
                        .all(ferry_postgres::types::binary_is_canonical)
                }),
        }
    }

    /// Takes in one message of the stream.
    async fn on_message(
        &mut self,
        msg: ReplicationMessage,
        decoder: &mut PgOutputDecoder,
        stream: &mut ReplicationStream,
    ) -> Result<(), FlowError> {
        match msg {
            ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                data,
                ..
            } => {
                self.server_lsn = self.server_lsn.max(wal_end);
                let message = decoder.decode(data).map_err(SourceError::from)?;
                self.handle(wal_start, message).await
            }
            ReplicationMessage::PrimaryKeepalive {
                wal_end,
                reply_requested,
                ..
            } => {
                self.server_lsn = self.server_lsn.max(wal_end);
                if self.batch.rows == 0
                    && !self.in_transaction
                    && self.writer.idle()
                    && wal_end > self.committed
                {
                    // Nothing pending: everything the server sent is applied.
                    self.advance_idle(wal_end, stream).await?;
                }
                if reply_requested {
                    self.report(stream).await?;
                }
                Ok(())
            }
        }
    }

    /// Whether the batch is to be written now: at a transaction boundary, once it is
    /// `sync_interval` old, or as soon as the stream has caught up with the server (nothing
    /// more to read), but then not more often than every [`MIN_FLUSH_EVERY`], so that a busy
    /// source does not turn into a stream of tiny inserts.
    fn flush_due(&self) -> bool {
        if self.in_transaction || self.batch.rows == 0 {
            return false;
        }
        let old = self
            .batch
            .opened
            .is_some_and(|t| t.elapsed() >= self.ctx.sync_interval);
        let caught_up = self.caught_up
            && self
                .last_flush
                .is_none_or(|t| t.elapsed() >= MIN_FLUSH_EVERY);
        old || caught_up
    }

    async fn report(&mut self, stream: &mut ReplicationStream) -> Result<(), FlowError> {
        let at = self.slot_position();
        stream.send_status(at, at, at, false).await?;
        self.reported = at;
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
        self.committed = self.committed.max(to);
        self.applied = self.applied.max(to);
        self.ctx.progress.caught_up(self.applied);
        self.report(stream).await?;
        self.rejoin().await?;
        if self
            .catalog_written
            .is_none_or(|t| t.elapsed() >= IDLE_CATALOG_EVERY)
        {
            self.record_position().await?;
        }
        Ok(())
    }

    /// Once the stream is back where it was when it started again, the tables catching up
    /// have every change since their snapshot: each fresh table is swapped in, and the table
    /// streams like the others. With no table loading any more, the hold goes.
    async fn rejoin(&mut self) -> Result<(), FlowError> {
        let Some(at) = self.rejoin_at else {
            return Ok(());
        };
        if self.committed < at || self.batch.rows > 0 || self.in_transaction || !self.writer.idle()
        {
            return Ok(());
        }
        for t in 0..self.targets.len() {
            if self.targets[t].row.state != TableState::Catchup {
                continue;
            }
            let row = self.targets[t].row.clone();
            let live = crate::table_spec(&row)?;
            if let (Some(fresh), Some(token)) = (&row.load_table, &row.load_table_uuid) {
                let fresh = ferry_core::destination::TargetName::new(
                    row.destination_database.clone(),
                    fresh.clone(),
                );
                self.ctx
                    .destination
                    .swap_in(
                        &live,
                        &fresh,
                        &ferry_core::destination::TableToken(token.clone()),
                    )
                    .await?;
            }
            self.ctx.catalog.end_table_sync(row.id).await?;
            info!(table = %row.source, "the table loaded on its own has joined the stream");
            self.targets[t].row.state = TableState::Done;
            // Its relation stays mapped (pgoutput does not send it again): from now on its
            // changes go to the live table.
            self.targets[t].spec = Arc::new(live);
        }
        self.rejoin_at = None;
        let loading = self
            .targets
            .iter()
            .any(|x| matches!(x.row.state, TableState::Syncing | TableState::Catchup));
        if !loading && self.hold.is_some() {
            self.ctx.catalog.set_hold(self.ctx.mirror_id, None).await?;
            self.hold = None;
            info!("no table is loading on its own; the slot is no longer held");
        }
        Ok(())
    }

    async fn handle(&mut self, lsn: Lsn, message: PgOutputMessage) -> Result<(), FlowError> {
        match message {
            PgOutputMessage::Begin {
                final_lsn,
                commit_time_micros,
                ..
            } => {
                // A full batch closes at this transaction boundary.
                if self.batch.full(self.ctx.max_batch_size) {
                    self.flush().await?;
                }
                self.in_transaction = true;
                self.commit_lsn = final_lsn;
                self.commit_micros = commit_time_micros;
                self.batch.begin_transaction();
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
                let rejoin_due = self.rejoin_at.is_some_and(|at| self.committed >= at);
                if self.batch.full(self.ctx.max_batch_size) || rejoin_due {
                    self.flush().await?;
                }
                if rejoin_due {
                    // Everything before the rejoin point goes in before the tables join.
                    self.drain().await?;
                }
            }
            PgOutputMessage::Relation(body) => self.relation(body).await?,
            PgOutputMessage::Insert {
                relation_id, new, ..
            } => {
                self.push(relation_id, ChangeKind::Insert, lsn, Some(&new), None)
                    .await?
            }
            PgOutputMessage::Update {
                relation_id,
                old,
                new,
                ..
            } => {
                let old = old
                    .as_ref()
                    .map(|o| (o.tuple(), matches!(o, OldTuple::Full(_))));
                self.push(relation_id, ChangeKind::Update, lsn, Some(&new), old)
                    .await?
            }
            PgOutputMessage::Delete {
                relation_id, old, ..
            } => {
                let full = matches!(old, OldTuple::Full(_));
                self.push(
                    relation_id,
                    ChangeKind::Delete,
                    lsn,
                    None,
                    Some((old.tuple(), full)),
                )
                .await?
            }
            PgOutputMessage::Truncate { relation_ids, .. } => {
                for id in relation_ids {
                    if let Some((t, relation)) = self.route(id) {
                        let spec = self.targets[t].spec.clone();
                        self.batch.push_truncate(t, &spec, &relation, lsn);
                        info!(table = %spec.source, "source table truncated; the destination is emptied");
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

    async fn push(
        &mut self,
        relation_id: u32,
        kind: ChangeKind,
        lsn: Lsn,
        new: Option<&ferry_postgres::pgoutput::TupleData>,
        old: Option<(&ferry_postgres::pgoutput::TupleData, bool)>,
    ) -> Result<(), FlowError> {
        let Some((t, relation)) = self.route(relation_id) else {
            debug!(relation_id, "change of an unmapped relation skipped");
            return Ok(());
        };
        // Going over WAL again: what is applied already stays as it is; a table catching up
        // takes the transactions from its snapshot on.
        let from = match self.targets[t].row.state {
            TableState::Catchup => self.targets[t].row.sync_lsn.unwrap_or(Lsn::ZERO),
            _ => self.skip_before,
        };
        if self.commit_lsn < from {
            debug!(table = %self.targets[t].row.source, commit = %self.commit_lsn, from = %from, "change applied before skipped");
            return Ok(());
        }
        let spec = self.targets[t].spec.clone();
        if let Err(e) =
            self.batch
                .push_row(t, &spec, &relation, kind, lsn, self.commit_lsn, new, old)
        {
            // A value the source sent that cannot be read concerns its table alone.
            self.fail_table(t, &e).await?;
            self.relations
                .retain(|_, r| r.as_ref().is_none_or(|r| r.target != t));
            return Err(restart(&spec.source));
        }
        self.ctx
            .progress
            .pending(self.targets[t].row.id, self.commit_lsn, self.commit_micros);
        // Only a transaction too large for a batch on its own is written before its commit.
        if self.batch.transaction_full(self.ctx.max_batch_size) {
            self.write_chunk().await?;
        }
        Ok(())
    }

    /// Hands the chunk gathered so far to the destination, without committing. It is written
    /// in the background once the chunk before it is in.
    async fn write_chunk(&mut self) -> Result<(), FlowError> {
        let chunk = self.batch.take_chunk();
        if chunk.is_empty() {
            return Ok(());
        }
        while !self.writer.ready_for_write() {
            let done = self.writer.next().await?;
            self.on_done(done).await?;
        }
        self.writer.write(chunk)
    }

    /// Writes the chunk gathered so far and waits until the destination has everything sent
    /// to it: before the destination's tables change shape or a table leaves the stream.
    async fn write_out(&mut self) -> Result<(), FlowError> {
        self.write_chunk().await?;
        self.drain().await
    }

    /// Waits until the destination has done everything sent to it.
    async fn drain(&mut self) -> Result<(), FlowError> {
        while !self.writer.idle() {
            let done = self.writer.next().await?;
            self.on_done(done).await?;
        }
        self.rejoin().await
    }

    /// Takes in what became of a job of the writer: a commit acknowledged moves the position
    /// (the catalog's now; the source's at the top of the loop).
    async fn on_done(&mut self, done: Done) -> Result<(), FlowError> {
        match done {
            Done::Written(summary) => {
                for s in &summary.substitutions {
                    let name = self
                        .targets
                        .iter()
                        .find(|t| t.row.id == s.table)
                        .map(|t| t.row.source.clone())
                        .unwrap_or_else(|| TableName::new("?", "?"));
                    crate::record_substitutions(&self.ctx.catalog, &name, std::slice::from_ref(s))
                        .await?;
                }
            }
            Done::Failed(e) => return Err(self.apply_failed(e).await),
            Done::Committed(position) => {
                let mut record = self
                    .committing
                    .pop_front()
                    .ok_or_else(|| FlowError::internal("a commit acknowledged twice"))?;
                record.finished_micros = now_pg_micros();
                self.ctx
                    .catalog
                    .confirm(self.ctx.mirror_id, position, self.server_lsn, Some(&record))
                    .await?;
                self.catalog_written = Some(Instant::now());
                self.recorded = position;
                self.applied = self.applied.max(position);
                self.ctx
                    .progress
                    .applied(position, record.last_commit_micros);
                debug!(rows = record.rows, lsn = %position, "batch applied");
                if self.writer.idle() && self.batch.rows == 0 && !self.in_transaction {
                    // Transactions since then had nothing for the mirror.
                    self.applied = self.applied.max(self.committed);
                }
                self.rejoin().await?;
            }
        }
        Ok(())
    }

    /// A failed write: a table's own trouble fails that table (and the stream starts again
    /// without it); anything else is the mirror's.
    async fn apply_failed(&mut self, e: ApplyError) -> FlowError {
        let Some(id) = e.table else {
            return e.error;
        };
        let Some(t) = self.targets.iter().position(|x| x.row.id == id) else {
            return e.error;
        };
        if let Err(catalog) = self.fail_table(t, &e.error).await {
            return catalog;
        }
        restart(&self.targets[t].row.source)
    }

    /// Marks a table failed in the catalog; its changes are skipped from now on.
    async fn fail_table(&mut self, t: usize, e: &FlowError) -> Result<(), FlowError> {
        let target = &mut self.targets[t];
        warn!(table = %target.row.source, error = %e, "table failed; the other tables go on");
        let message = match &e.hint {
            Some(h) => format!("{} ({h})", e.message),
            None => e.message.clone(),
        };
        self.ctx
            .catalog
            .set_table_state(target.row.id, TableState::Failed, Some(&message))
            .await?;
        target.row.state = TableState::Failed;
        Ok(())
    }

    /// Closes the batch: its last chunk is written and the destination commits it. Once the
    /// commit is acknowledged ([`Streamer::on_done`]), the catalog records the last complete
    /// transaction, then the source hears of it.
    async fn flush(&mut self) -> Result<(), FlowError> {
        self.write_chunk().await?;
        let batch = std::mem::take(&mut self.batch);
        self.last_flush = Some(Instant::now());
        let position = self.committed.max(self.applied);
        if batch.rows > 0 {
            self.writer.commit(position)?;
            self.committing.push_back(BatchRecord {
                rows: batch.rows as i64,
                first_lsn: batch.first_lsn.unwrap_or(self.committed),
                last_lsn: self.committed,
                started_micros: batch.started.map(pg_micros).unwrap_or_else(now_pg_micros),
                finished_micros: 0,
                inserted: batch.inserted,
                updated: batch.updated,
                deleted: batch.deleted,
                last_commit_micros: batch.last_commit_micros,
            });
        } else if self.writer.idle() {
            self.applied = self.applied.max(self.committed);
        }
        self.rejoin().await
    }
}

/// Says what to do when the slot is gone or can no longer give changes: nothing short of
/// loading everything again from a new slot brings the mirror back.
fn slot_trouble(e: SourceError) -> FlowError {
    let lost = e.sqlstate == "42704"
        || (e.sqlstate == "55000"
            && (e.message.contains("invalidated") || e.message.contains("no longer get changes")));
    let mut e = FlowError::from(e);
    if lost {
        e.kind = ErrorKind::Misconfigured;
        e.hint = Some(
            "The mirror's replication slot was dropped or invalidated (for example by max_slot_wal_keep_size): the changes since it was last read are gone from the source. RESYNC MIRROR loads every table again from a new slot."
                .into(),
        );
    }
    e
}

/// The error that starts the stream again from the confirmed position, after a table failed.
fn restart(table: &TableName) -> FlowError {
    FlowError::new(
        ErrorKind::Transient,
        "XX000",
        format!("table {table} failed; streaming the other tables again from the last confirmed position"),
    )
}
