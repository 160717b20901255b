//! Copying a run's partitions with `parallelism` workers (see the module doc of
//! [`crate::qrep`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_catalog::{Catalog, QueryPartitionRow};
use ferry_core::destination::{Destination, Load, QueryPartition, QueryTable, TargetName};
use ferry_core::error::Backoff;
use ferry_core::mirror::PartitionState;
use ferry_core::peer::PostgresConfig;
use ferry_core::qrep::{Bounds, WatermarkKind};
use ferry_core::{ErrorKind, TableName};
use ferry_postgres::snapshot::RangeReader;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, warn};

use crate::load::MAX_ATTEMPTS;
use crate::FlowError;

/// What the workers of one run share.
pub(crate) struct RunCopy {
    pub catalog: Catalog,
    pub source: PostgresConfig,
    pub destination: Arc<dyn Destination>,
    pub table: QueryTable,
    /// Where the rows go: the live table, or overwrite's fresh one.
    pub into: TargetName,
    /// `COPY (SELECT … FROM (query) AS q) TO STDOUT (FORMAT binary)`.
    pub copy_sql: String,
    pub kind: Option<WatermarkKind>,
    /// The run snapshot, while the run that took it is alive.
    pub snapshot: Option<String>,
    pub run_id: i64,
    /// The run's version (upsert rows without their own).
    pub version: u64,
    pub workers: usize,
    pub stop: watch::Receiver<bool>,
}

/// Copies the partitions not done yet. `Ok(false)` when stopped before the end; an error
/// when a partition failed for good (it is recorded, with its run, as failed).
pub(crate) async fn copy_partitions(
    run: Arc<RunCopy>,
    partitions: Vec<QueryPartitionRow>,
) -> Result<bool, FlowError> {
    let workers = Arc::new(Semaphore::new(run.workers.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for p in partitions
        .into_iter()
        .filter(|p| p.state != PartitionState::Done)
    {
        let run = run.clone();
        let workers = workers.clone();
        tasks.spawn(async move {
            let _permit = workers.acquire_owned().await;
            if *run.stop.borrow() {
                return Ok(false);
            }
            with_retries(&run, &p).await
        });
    }
    let mut stopped = false;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(|e| FlowError::internal(format!("partition task failed: {e}")))? {
            Ok(true) => {}
            Ok(false) => stopped = true,
            Err(e) => {
                // The others stop at their next partition; those under way finish.
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(!stopped && !*run.stop.borrow()),
    }
}

/// Copies one partition, trying again after transient errors. `Ok(false)` when stopped.
async fn with_retries(run: &RunCopy, p: &QueryPartitionRow) -> Result<bool, FlowError> {
    let bounds: Bounds = serde_json::from_value(p.bounds.clone()).map_err(|e| {
        FlowError::internal(format!(
            "partition {} bounds unreadable: {e}",
            p.partition_no
        ))
    })?;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut tries = 0;
    loop {
        if *run.stop.borrow() {
            return Ok(false);
        }
        tries += 1;
        let started = Instant::now();
        let attempt = run
            .catalog
            .begin_query_partition(run.run_id, p.partition_no)
            .await?;
        let mut stop = run.stop.clone();
        let result = tokio::select! {
            r = copy_one(run, p.partition_no, attempt, &bounds) => r,
            _ = stop.wait_for(|s| *s) => return Ok(false),
        };
        match result {
            Ok(rows) => {
                debug!(
                    partition = p.partition_no,
                    rows,
                    secs = started.elapsed().as_secs_f64(),
                    "partition copied"
                );
                run.catalog
                    .finish_query_partition(run.run_id, p.partition_no, rows as i64)
                    .await?;
                return Ok(true);
            }
            Err(e) => {
                let retry = e.kind.is_retryable() && tries < MAX_ATTEMPTS;
                run.catalog
                    .fail_query_partition(run.run_id, p.partition_no, &e.message, !retry)
                    .await?;
                if !retry {
                    return Err(e.context(format!("partition {}", p.partition_no)));
                }
                let delay = backoff.next_delay();
                warn!(partition = p.partition_no, attempt, error = %e, retry_in = ?delay, "partition failed; trying it again");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Reads one partition with binary COPY and streams it into the destination.
async fn copy_one(
    run: &RunCopy,
    partition: i32,
    attempt: i32,
    bounds: &Bounds,
) -> Result<u64, FlowError> {
    let dest = run.destination.query().ok_or_else(|| {
        FlowError::new(
            ErrorKind::Unsupported,
            "0A000",
            format!("{} holds no query mirrors", run.destination.describe()),
        )
    })?;
    let part = QueryPartition {
        run: run.run_id,
        partition,
        attempt,
        version: run.version,
    };
    let mut sink = match dest.load_partition(&run.table, &run.into, &part).await? {
        Load::Sink(sink) => sink,
        Load::Done { rows } => return Ok(rows),
    };
    let mut reader = match RangeReader::open(&run.source, run.snapshot.as_deref()).await {
        // The run snapshot's transaction ended (a source's idle_in_transaction_session_timeout):
        // a fresh snapshot reads the same range (see the module doc).
        Err(e) if run.snapshot.is_some() && e.sqlstate == "22023" => {
            warn!(partition, error = %e, "the run snapshot is gone; reading in a fresh one");
            RangeReader::open(&run.source, None).await?
        }
        r => r?,
    };
    let mut rows =
        ferry_postgres::query::copy_partition(&mut reader, &run.copy_sql, run.kind, bounds).await?;
    while let Some(chunk) = rows.next().await? {
        sink.write(chunk).await?;
    }
    let summary = sink.finish().await?;
    reader.close().await?;
    let name = TableName::new("query", &run.table.target.table);
    crate::record_substitutions(&run.catalog, &name, &summary.substitutions).await?;
    Ok(summary.rows)
}
