//! The initial load: every table cut into CTID ranges, copied in parallel into ClickHouse.
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
//! only once ClickHouse confirmed its insert. After a crash or a restart the exported snapshot
//! is gone: the ranges not done yet are read again, each in a fresh snapshot of its own, and
//! the catalog records that (`snapshot` NULL). This stays correct because the slot still holds
//! every change since the consistent point: rows of a range read later than the others already
//! contain some of those changes, and applying the stream from the consistent point replays
//! them, with versions above the load's, so every row converges to its current state at the
//! source. A mirror that streams does so anyway; an `initial_copy_only` mirror whose ranges were
//! not all read in the exported snapshot applies the slot's changes up to the then current WAL
//! position before it completes and drops its slot. Reading a range twice is harmless too: a row has the same key and version (0) in
//! both inserts, and `ReplacingMergeTree` keeps one.
//!
//! # Failures
//!
//! A range that fails with a transient error (a dropped connection, a server restarting) is
//! tried again on its own, with backoff, up to [`MAX_ATTEMPTS`] times; any other error fails
//! its table, which is recorded with the error while the other tables go on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_catalog::{Catalog, PartitionRow, TableRow};
use ferry_clickhouse::table::{Destination, WriteError};
use ferry_core::error::Backoff;
use ferry_core::ident::{pg_ident, pg_literal};
use ferry_core::peer::PostgresConfig;
use ferry_core::{ColumnSchema, ErrorKind};
use ferry_postgres::connect::{connect, SourceError};
use ferry_postgres::copy::BinaryCopyDecoder;
use ferry_postgres::ctid;
use ferry_postgres::source::{self, SourceTable};
use futures::StreamExt;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn, Instrument};

use crate::FlowError;

/// Attempts at one range before its table is failed.
pub const MAX_ATTEMPTS: i32 = 5;
/// How often progress is written to the catalog and the log.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Session settings for every snapshot read. The text forms of types carried as text depend on
/// them, and must match those the streaming path sees.
pub const SESSION_SETTINGS: &str =
    "SET LOCAL DateStyle = 'ISO'; SET LOCAL IntervalStyle = 'postgres';
     SET LOCAL TimeZone = 'UTC'; SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'hex'";

/// What the load needs to know about its mirror.
pub struct LoadContext {
    pub mirror: String,
    pub mirror_id: i64,
    pub source: PostgresConfig,
    pub destination: Destination,
    pub catalog: Catalog,
    /// The exported snapshot, while it is alive; `None` after a restart.
    pub snapshot: Option<String>,
    pub rows_per_partition: u64,
    pub workers_per_table: usize,
    pub tables_in_parallel: usize,
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
    columns: Vec<ColumnSchema>,
    /// The SELECT list, with the casts the column kinds need.
    select: String,
    /// Rows of ranges done, including those done before a restart.
    done: AtomicU64,
    /// Rows sent by ranges still being copied.
    inflight: AtomicU64,
}

impl TableJob {
    fn rows(&self) -> u64 {
        self.done.load(Ordering::Relaxed) + self.inflight.load(Ordering::Relaxed)
    }
}

/// Copies every table not done yet. Returns once all are done or failed, or when stopped.
pub async fn run(ctx: Arc<LoadContext>) -> Result<LoadOutcome, FlowError> {
    let tables = ctx.catalog.mirror_tables(ctx.mirror_id).await?;
    let pending: Vec<TableRow> = tables.into_iter().filter(|t| t.state != "done").collect();
    if pending.is_empty() {
        return Ok(LoadOutcome::Done);
    }
    let client = connect(&ctx.source, "ferry snapshot planner").await?;
    let money_scale = source::money_scale(&client, &ctx.source).await?;
    let mut jobs = Vec::with_capacity(pending.len());
    for row in pending {
        let columns: Vec<ColumnSchema> =
            serde_json::from_value(row.columns.clone()).map_err(|e| {
                FlowError::internal(format!(
                    "table {}: stored columns unreadable: {e}",
                    row.source
                ))
            })?;
        let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
        let described =
            source::describe_table(&client, &ctx.source, &row.source, &[], money_scale).await?;
        let Some(described) = described else {
            let e = format!("table {} no longer exists on the source", row.source);
            ctx.catalog
                .set_table_state(row.id, "failed", Some(&e))
                .await?;
            continue;
        };
        let select = select_list(&described, &names)?;
        let job = TableJob {
            row,
            columns,
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
                        ctx.catalog.set_table_state(table_id, "failed", Some(&e.message)).await?;
                        failed.push(name);
                    }
                }
            }
            _ = ticker.tick() => report(&ctx, &jobs, total, started).await,
        }
    }
    report(&ctx, &jobs, total, started).await;
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
    let secs = started.elapsed().as_secs_f64().max(0.001);
    info!(
        mirror = %ctx.mirror,
        rows_copied = rows,
        rows_per_second = ((rows.saturating_sub(before)) as f64 / secs) as u64,
        "initial load progress"
    );
}

/// The SELECT list for the stored columns: each column with the cast its kind needs.
fn select_list(table: &SourceTable, names: &[String]) -> Result<String, FlowError> {
    let mut parts = Vec::with_capacity(names.len());
    for n in names {
        let idx = table
            .columns
            .iter()
            .position(|c| &c.name == n)
            .ok_or_else(|| {
                FlowError::new(
                    ErrorKind::Unsupported,
                    "42703",
                    format!("column \"{n}\" of table {} no longer exists", table.name),
                )
            })?;
        parts.push(table.mappings[idx].select_expr(&pg_ident(n)));
    }
    Ok(parts.join(", "))
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
    for heap in &described.heaps {
        for r in ctid::plan(heap.pages, heap.tuples, ctx.rows_per_partition) {
            planned.push((heap.name.quoted(), r.start as i64, r.end.map(|e| e as i64)));
        }
    }
    let partitions = catalog.plan_partitions(table.row.id, &planned).await?;
    let done_rows: i64 = partitions
        .iter()
        .filter(|p| p.state == "done")
        .map(|p| p.rows_copied)
        .sum();
    table.done.store(done_rows.max(0) as u64, Ordering::Relaxed);
    let pending: Vec<PartitionRow> = partitions
        .into_iter()
        .filter(|p| p.state != "done")
        .collect();
    if pending.is_empty() {
        catalog.set_table_progress(table.row.id, done_rows).await?;
        catalog.set_table_state(table.row.id, "done", None).await?;
        return Ok(true);
    }
    catalog
        .set_table_state(table.row.id, "copying", None)
        .await?;
    info!(
        partitions = pending.len(),
        snapshot = ctx.snapshot.as_deref().unwrap_or("fresh"),
        "copying table"
    );

    let workers = Arc::new(Semaphore::new(ctx.workers_per_table.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for p in pending {
        let ctx = ctx.clone();
        let workers = workers.clone();
        let job = job.clone();
        tasks.spawn(async move {
            let _permit = workers.acquire_owned().await;
            if *ctx.stop.borrow() {
                return (p, Ok(None));
            }
            let r = copy_partition_with_retries(&ctx, &p, &job.0).await;
            (p, r)
        });
    }
    let mut stopped = false;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let (p, result) =
            joined.map_err(|e| FlowError::internal(format!("copy task failed: {e}")))?;
        match result {
            Ok(Some(rows)) => {
                catalog
                    .finish_partition(
                        p.table_id,
                        p.partition_no,
                        rows as i64,
                        ctx.snapshot.as_deref(),
                    )
                    .await?;
                table.inflight.fetch_sub(rows, Ordering::Relaxed);
                table.done.fetch_add(rows, Ordering::Relaxed);
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
    catalog.set_table_state(table.row.id, "done", None).await?;
    Ok(true)
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
            r = copy_partition(ctx, &p.relation, &range, table, &sent) => Some(r),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(result) = result else {
            table
                .inflight
                .fetch_sub(sent.load(Ordering::Relaxed), Ordering::Relaxed);
            return Ok(None);
        };
        if result.is_err() {
            table
                .inflight
                .fetch_sub(sent.load(Ordering::Relaxed), Ordering::Relaxed);
        }
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
                warn!(partition = p.partition_no, attempt, error = %e, retry_in = ?delay, "partition failed; trying it again");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Reads one range with binary COPY and streams it into ClickHouse as one insert. Counts the
/// rows it sends in `sent` and in the table's `inflight`.
async fn copy_partition(
    ctx: &LoadContext,
    relation: &str,
    range: &ctid::BlockRange,
    table: &TableJob,
    sent: &AtomicU64,
) -> Result<u64, FlowError> {
    let (select, columns) = (&table.select, &table.columns);
    let (db, dest_table) = (&table.row.destination_database, table.row.target_table());
    let cfg = &ctx.source;
    let pg = |e: tokio_postgres::Error| FlowError::from(SourceError::from_pg(cfg, e));
    let client = connect(cfg, "ferry snapshot").await?;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(pg)?;
    if let Some(s) = &ctx.snapshot {
        client
            .batch_execute(&format!("SET TRANSACTION SNAPSHOT {}", pg_literal(s)))
            .await
            .map_err(pg)?;
    }
    client.batch_execute(SESSION_SETTINGS).await.map_err(pg)?;
    let sql = format!(
        "COPY (SELECT {select} FROM ONLY {relation} WHERE {}) TO STDOUT (FORMAT binary)",
        range.predicate()
    );
    let stream = client.copy_out(sql.as_str()).await.map_err(pg)?;
    futures::pin_mut!(stream);
    let mut decoder = BinaryCopyDecoder::new(columns.iter().map(|c| c.kind.clone()).collect());
    let mut insert = ctx.destination.insert(db, dest_table, columns);
    let name_column = |e: WriteError| match e {
        WriteError::Encode { column, source } => FlowError::new(
            source.kind(),
            "22000",
            format!(
                "column \"{}\": {source}",
                columns.get(column).map(|c| c.name.as_str()).unwrap_or("?")
            ),
        ),
        other => FlowError::from(other),
    };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(pg)?;
        decoder.push(&chunk);
        while let Some(row) = decoder.next_row()? {
            insert.push(&row, 0, false).await.map_err(name_column)?;
            sent.fetch_add(1, Ordering::Relaxed);
            table.inflight.fetch_add(1, Ordering::Relaxed);
        }
    }
    decoder.finish()?;
    let clamped = insert.clamped();
    let rows = insert.finish().await?;
    client.batch_execute("COMMIT").await.map_err(pg)?;
    if clamped > 0 {
        warn!(
            rows = clamped,
            "dates or timestamps outside ClickHouse's range were clamped to its bounds"
        );
    }
    Ok(rows)
}
