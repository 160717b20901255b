//! The initial load: every table cut into CTID ranges, copied in parallel into the destination.
//!
//! # Consistency
//!
//! The mirror's slot was created with an exported snapshot; it shows the database exactly as
//! of the slot's consistent point, the LSN where streaming later starts. Every worker opens a
//! `REPEATABLE READ` transaction and imports that snapshot before it reads its range, so all
//! ranges of all tables are read as of the same instant and the stream continues from exactly
//! there. The snapshot lives only as long as the replication connection that exported it runs
//! no other command, so that connection is kept open and idle until the load is over.
//!
//! # Restarts
//!
//! Each range's state is in the catalog (`ferry.mirror_partition`), and a range is marked done
//! only once the destination has it durably ([`LoadSink::finish`]). After a crash or a restart the exported snapshot
//! is gone: the ranges not done yet are read again, each in a fresh snapshot of its own, and
//! the catalog records that (`snapshot` NULL). This stays correct because the slot still holds
//! every change since the consistent point: rows of a range read later than the others already
//! contain some of those changes, and applying the stream from the consistent point replays
//! them, and a destination applies a change to a row by its key, so every row converges to its
//! current state at the source. A mirror that streams does so anyway; an `initial_copy_only`
//! mirror whose ranges were not all read in the exported snapshot applies the slot's changes up
//! to the then current WAL position before it completes and drops its slot. Reading a range
//! twice is harmless too: the destination keeps one row per key, or recognises a range it
//! already holds (the destination contract, `ferry_core::destination`).
//!
//! # Failures
//!
//! A range that fails with a transient error (a dropped connection, a server restarting) is
//! tried again on its own, with backoff, up to [`MAX_ATTEMPTS`] times; any other error fails
//! its table, which is recorded with the error while the other tables go on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_catalog::{Catalog, PartitionRow, TableRow};
use ferry_core::destination::{Destination, Load, LoadSink, TableSpec, TargetName};
use ferry_core::error::Backoff;
use ferry_core::mirror::{PartitionState, TableState};
use ferry_core::peer::PostgresConfig;
use ferry_postgres::connect::connect;
use ferry_postgres::ctid;
use ferry_postgres::snapshot::{select_list, RangeReader};
use ferry_postgres::source::{self, SourceTable};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn, Instrument};

use crate::FlowError;

/// Attempts at one range before its table is failed.
pub const MAX_ATTEMPTS: i32 = 5;
/// How often progress is written to the catalog (and every fifth time, to the log).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What the load needs to know about its mirror.
pub struct LoadContext {
    pub mirror: String,
    pub mirror_id: i64,
    pub source: PostgresConfig,
    pub destination: Arc<dyn Destination>,
    pub catalog: Catalog,
    /// The exported snapshot, while it is alive; `None` after a restart.
    pub snapshot: Option<String>,
    pub rows_per_partition: u64,
    pub workers_per_table: usize,
    pub tables_in_parallel: usize,
    /// Which tables: `None` for the mirror's initial load (every table not loaded yet); a
    /// table's own load names it.
    pub only: Option<i64>,
    /// Turns true when the load must stop (pause, drop, shutdown).
    pub stop: watch::Receiver<bool>,
}

/// How the load ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadOutcome {
    /// Every table is done.
    Done,
    /// Some tables failed; the others are done.
    Failed { tables: Vec<String> },
    /// Stopped before the end; the catalog has what is left.
    Stopped,
}

struct TableJob {
    row: TableRow,
    spec: TableSpec,
    /// Where the rows go: the live table, or the fresh one of a resync.
    into: TargetName,
    /// The SELECT list, with the casts the column kinds need.
    select: String,
    /// Rows of ranges done, including those done before a restart.
    done: AtomicU64,
    /// Rows sent by ranges still being copied.
    inflight: AtomicU64,
}

impl TableJob {
    fn rows(&self) -> u64 {
        self.done
            .load(Ordering::Relaxed)
            .saturating_add(self.inflight.load(Ordering::Relaxed))
    }
}

/// Copies every table not done yet (or the one table of `ctx.only`). Returns once all are
/// done or failed, or when stopped.
///
/// A table without a key whose load did not finish in the mirror's exported snapshot is not
/// read again range by range in fresh snapshots: identical rows cannot be told apart, so a row
/// read twice, or read and then streamed, would be one row too many. It is loaded again on its
/// own instead (state `syncing`, see [`crate::sync`]).
pub async fn run(ctx: Arc<LoadContext>) -> Result<LoadOutcome, FlowError> {
    let tables = ctx.catalog.mirror_tables(ctx.mirror_id).await?;
    let mut pending: Vec<TableRow> = Vec::new();
    for t in tables {
        match ctx.only {
            Some(id) if t.id == id => pending.push(t),
            Some(_) => {}
            None => match t.state {
                TableState::Pending | TableState::Copying => {
                    if ctx.snapshot.is_none() && !crate::table_spec(&t)?.has_key() {
                        info!(table = %t.source, "the snapshot of the load is gone; a table without a key is loaded again on its own");
                        ctx.catalog
                            .request_table_syncs(ctx.mirror_id, &[t.id])
                            .await?;
                    } else {
                        pending.push(t);
                    }
                }
                _ => {}
            },
        }
    }
    if pending.is_empty() {
        return Ok(LoadOutcome::Done);
    }
    let client = connect(&ctx.source, "ferry snapshot planner").await?;
    let money_scale = source::money_scale(&client, &ctx.source).await?;
    let mut jobs = Vec::with_capacity(pending.len());
    for row in pending {
        let spec = crate::table_spec(&row)?;
        let names: Vec<String> = spec.columns.iter().map(|c| c.name.clone()).collect();
        let described =
            source::describe_table(&client, &ctx.source, &row.source, &[], money_scale).await?;
        let Some(described) = described else {
            let e = format!("table {} no longer exists on the source", row.source);
            ctx.catalog
                .set_table_state(row.id, TableState::Failed, Some(&e))
                .await?;
            continue;
        };
        let select = select_list(&described, &names, ctx.destination.wire())?;
        let into = TargetName::new(spec.target.namespace.clone(), row.target_table());
        let job = TableJob {
            row,
            spec,
            into,
            select,
            done: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
        };
        jobs.push(Arc::new((job, described)));
    }
    drop(client);

    let total: u64 = jobs.iter().map(|j| j.0.row.rows_copied.max(0) as u64).sum();
    let started = Instant::now();
    let table_slots = Arc::new(Semaphore::new(ctx.tables_in_parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for job in &jobs {
        let ctx = ctx.clone();
        let job = job.clone();
        let slots = table_slots.clone();
        let span = tracing::info_span!("table", mirror = %ctx.mirror, table = %job.0.row.source);
        tasks.spawn(
            async move {
                let _permit = slots.acquire_owned().await;
                let result = copy_table(&ctx, &job).await;
                (job.0.row.source.to_string(), job.0.row.id, result)
            }
            .instrument(span),
        );
    }

    let mut failed = Vec::new();
    let mut stopped = false;
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    ticker.tick().await;
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            next = tasks.join_next() => {
                let Some(joined) = next else { break };
                let (name, table_id, result) = joined.map_err(|e| FlowError::internal(format!("copy task failed: {e}")))?;
                match result {
                    Ok(true) => {}
                    Ok(false) => stopped = true,
                    Err(e) => {
                        warn!(mirror = %ctx.mirror, table = %name, error = %e, "table failed");
                        ctx.catalog.set_table_state(table_id, TableState::Failed, Some(&e.message)).await?;
                        failed.push(name);
                    }
                }
            }
            _ = ticker.tick() => {
                ticks += 1;
                report(&ctx, &jobs, total, started, ticks % 5 == 0).await;
            }
        }
    }
    report(&ctx, &jobs, total, started, true).await;
    Ok(if stopped || *ctx.stop.borrow() {
        LoadOutcome::Stopped
    } else if failed.is_empty() {
        LoadOutcome::Done
    } else {
        LoadOutcome::Failed { tables: failed }
    })
}

async fn report(
    ctx: &LoadContext,
    jobs: &[Arc<(TableJob, SourceTable)>],
    before: u64,
    started: Instant,
    log: bool,
) {
    let mut rows = 0;
    for j in jobs {
        let t = &j.0;
        let n = t.rows();
        rows += n;
        if let Err(e) = ctx.catalog.set_table_progress(t.row.id, n as i64).await {
            debug!(error = %e, "could not record progress");
        }
    }
    if !log {
        return;
    }
    let secs = started.elapsed().as_secs_f64().max(0.001);
    info!(
        mirror = %ctx.mirror,
        rows_copied = rows,
        rows_per_second = ((rows.saturating_sub(before)) as f64 / secs) as u64,
        "initial load progress"
    );
}

/// Copies one table's pending ranges. `Ok(false)` when stopped before the end.
async fn copy_table(
    ctx: &Arc<LoadContext>,
    job: &Arc<(TableJob, SourceTable)>,
) -> Result<bool, FlowError> {
    let (table, described) = (&job.0, &job.1);
    let catalog = &ctx.catalog;
    // Ranges are planned once; a restart finds them in the catalog.
    let mut planned = Vec::new();
    // A partitioned table's leaves as loaded: one attached or detached later makes it load
    // again (stream::scope).
    if described.heaps.iter().any(|h| h.name != table.row.source) {
        let mut leaves: Vec<String> = described.heaps.iter().map(|h| h.name.to_string()).collect();
        leaves.sort();
        catalog.set_table_leaves(table.row.id, &leaves).await?;
    }
    for heap in &described.heaps {
        for r in ctid::plan(heap.pages, heap.tuples, ctx.rows_per_partition) {
            planned.push((heap.name.quoted(), r.start as i64, r.end.map(|e| e as i64)));
        }
    }
    let partitions = catalog.plan_partitions(table.row.id, &planned).await?;
    let done_rows: i64 = partitions
        .iter()
        .filter(|p| p.state == PartitionState::Done)
        .map(|p| p.rows_copied)
        .sum();
    table.done.store(done_rows.max(0) as u64, Ordering::Relaxed);
    let pending: Vec<PartitionRow> = partitions
        .into_iter()
        .filter(|p| p.state != PartitionState::Done)
        .collect();
    if pending.is_empty() {
        catalog.set_table_progress(table.row.id, done_rows).await?;
        finish_table(ctx, table).await?;
        return Ok(true);
    }
    if ctx.only.is_none() {
        catalog
            .set_table_state(table.row.id, TableState::Copying, None)
            .await?;
    }
    info!(
        partitions = pending.len(),
        snapshot = ctx.snapshot.as_deref().unwrap_or("fresh"),
        "copying table"
    );

    let workers = Arc::new(Semaphore::new(ctx.workers_per_table.max(1)));
    // Ranges are read in the table's order, whichever task gets a worker first (tasks start
    // in no particular order): the source reads its heap front to back, and a load stopped
    // half-way leaves the end of the table to do, not scattered ranges.
    let ranges = pending.len();
    let queue = Arc::new(std::sync::Mutex::new(VecDeque::from(pending)));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..ranges {
        let ctx = ctx.clone();
        let workers = workers.clone();
        let job = job.clone();
        let queue = queue.clone();
        tasks.spawn(async move {
            let _permit = workers.acquire_owned().await;
            let p = queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop_front()?;
            if *ctx.stop.borrow() {
                return Some((p, Ok(None)));
            }
            let r = copy_partition_with_retries(&ctx, &p, &job.0).await;
            Some((p, r))
        });
    }
    let mut stopped = false;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let Some((p, result)) =
            joined.map_err(|e| FlowError::internal(format!("copy task failed: {e}")))?
        else {
            continue;
        };
        match result {
            Ok(Some(rows)) => {
                // The count, with the range's rows, is recorded first, so that it never
                // trails the ranges recorded done.
                table.done.fetch_add(rows, Ordering::Relaxed);
                catalog
                    .set_table_progress(table.row.id, table.rows() as i64)
                    .await?;
                catalog
                    .finish_partition(
                        p.table_id,
                        p.partition_no,
                        rows as i64,
                        ctx.snapshot.as_deref(),
                    )
                    .await?;
            }
            Ok(None) => stopped = true,
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(e);
                }
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if stopped {
        return Ok(false);
    }
    catalog
        .set_table_progress(table.row.id, table.done.load(Ordering::Relaxed) as i64)
        .await?;
    finish_table(ctx, table).await?;
    Ok(true)
}

/// Every range of a table is in: the destination finishes the table (builds what is better
/// built after a load), then the catalog marks it done; a table loaded on its own goes on to
/// catch up with the stream.
async fn finish_table(ctx: &LoadContext, table: &TableJob) -> Result<(), FlowError> {
    ctx.destination
        .finish_load(&table.spec, &table.into)
        .await?;
    let state = if ctx.only.is_some() {
        TableState::Catchup
    } else {
        TableState::Done
    };
    ctx.catalog
        .set_table_state(table.row.id, state, None)
        .await?;
    Ok(())
}

/// Copies a range, trying again after transient errors. `Ok(None)` when stopped.
async fn copy_partition_with_retries(
    ctx: &LoadContext,
    p: &PartitionRow,
    table: &TableJob,
) -> Result<Option<u64>, FlowError> {
    let range = ctid::BlockRange {
        start: p.start_block.max(0) as u64,
        end: p.end_block.map(|e| e.max(0) as u64),
    };
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut attempt = p.attempts;
    loop {
        if *ctx.stop.borrow() {
            return Ok(None);
        }
        attempt += 1;
        let sent = AtomicU64::new(0);
        let started = Instant::now();
        let mut stop = ctx.stop.clone();
        let result = tokio::select! {
            r = copy_partition(ctx, p, &range, table, &sent) => Some(r),
            _ = stop.wait_for(|s| *s) => None,
        };
        // What this attempt counted as in flight leaves it whatever the outcome: on success
        // the caller counts the range's rows as done (a range the destination held already
        // was never in flight, and a sink's final count may differ from its running one).
        table
            .inflight
            .fetch_sub(sent.load(Ordering::Relaxed), Ordering::Relaxed);
        let Some(result) = result else {
            return Ok(None);
        };
        match result {
            Ok(rows) => {
                debug!(partition = p.partition_no, %range, rows, secs = started.elapsed().as_secs_f64(), "partition copied");
                return Ok(Some(rows));
            }
            Err(e) => {
                let retry = e.kind.is_retryable() && attempt < MAX_ATTEMPTS;
                ctx.catalog
                    .fail_partition(p.table_id, p.partition_no, &e.message, !retry)
                    .await?;
                if !retry {
                    return Err(e.context(format!("partition {} ({range})", p.partition_no)));
                }
                let delay = backoff.next_delay();
                warn!(partition = p.partition_no, attempt, error = %e, retry_in_ms = delay.as_millis() as u64, "partition failed; trying it again");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Reads one range with binary COPY and streams it into the destination. Counts the rows it
/// sends in `sent` and in the table's `inflight`.
async fn copy_partition(
    ctx: &LoadContext,
    p: &PartitionRow,
    range: &ctid::BlockRange,
    table: &TableJob,
    sent: &AtomicU64,
) -> Result<u64, FlowError> {
    let mut sink: Box<dyn LoadSink> = match ctx
        .destination
        .load(&table.spec, &table.into, p.partition_no)
        .await?
    {
        Load::Sink(sink) => sink,
        Load::Done { rows } => {
            debug!(
                partition = p.partition_no,
                rows, "the destination holds this range already"
            );
            return Ok(rows);
        }
    };
    let mut reader = RangeReader::open(&ctx.source, ctx.snapshot.as_deref()).await?;
    // Each chunk holds many rows, cut anywhere: a sink frames rows across chunk boundaries.
    let mut rows = reader.copy(&table.select, &p.relation, range).await?;
    let mut counted = 0u64;
    while let Some(chunk) = rows.next().await? {
        sink.write(chunk).await?;
        let now = sink.rows();
        let delta = now.saturating_sub(counted);
        counted = now;
        sent.fetch_add(delta, Ordering::Relaxed);
        table.inflight.fetch_add(delta, Ordering::Relaxed);
    }
    let summary = sink.finish().await?;
    reader.close().await?;
    crate::record_substitutions(&ctx.catalog, &table.row.source, &summary.substitutions).await?;
    Ok(summary.rows)
}
