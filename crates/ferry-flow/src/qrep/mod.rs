//! Query mirrors: a SQL query run again and again over the next range of a watermark, its
//! result landing in one destination table (`CREATE MIRROR … FOR $$query$$`, PeerDB's query
//! replication).
//!
//! # A run
//!
//! A query mirror's task waits until a run is due (`refresh_interval` seconds after the last
//! one ended, or at once after `EXECUTE MIRROR`), then:
//!
//! 1. **One snapshot.** It opens a `REPEATABLE READ READ ONLY` transaction on the source and
//!    exports its snapshot (`pg_export_snapshot()`); every partition of the run imports it, so
//!    the whole run reads the database as of one instant. The transaction stays open until
//!    the run has read everything. (A source that exports no snapshot — an old standby — gets
//!    a fresh snapshot per partition; the range below is fixed either way.)
//! 2. **The range**, read in that snapshot. For a watermark column `w` of `table`: the rows
//!    with `w` above the last watermark (above `last - watermark_lag`, with a lag), their
//!    smallest and largest value and their count (`min(w)`, `max(w)`, `count(w)`); the run
//!    covers `min ..= max` and will move the watermark to `max`. No row above it: no run, the
//!    next is due a `refresh_interval` later. For `xmin`: the transactions from the last
//!    watermark up to and excluding the snapshot's `xmin` — every transaction before that had
//!    ended when the snapshot was taken, so none of their rows can appear later; a
//!    transaction still running waits for a later run (a long one holds the watermark back).
//! 3. **Partitions.** A watermark range is cut into contiguous ranges of values of about
//!    `num_rows_per_partition` rows each, evenly by value (`plan::value_partitions`): the
//!    values are discrete, so `{{.start}}` and `{{.end}}` are a partition's first and last
//!    value, both included, and consecutive partitions meet without gap or overlap. An xmin
//!    run is cut into CTID block ranges of the table instead (transaction ids are scattered
//!    over the table, and every run reads all of it), each read with the run's id condition.
//!    A query read whole (`initial_copy_only` without placeholders) is one partition.
//! 4. **Recorded before copied.** The run (its range, its snapshot) and its partitions are
//!    stored in the catalog in one transaction before any partition is read.
//! 5. **Copied.** `parallelism` workers copy the partitions: each imports the run snapshot,
//!    binds the partition's bounds (`ferry_postgres::query` explains how, without splicing
//!    text) and streams `COPY (SELECT … FROM (query) AS q) TO STDOUT (FORMAT binary)` into
//!    the destination's sink ([`ferry_core::destination::QueryDestination::load_partition`]),
//!    the same binary path as the initial load of a mirror of tables. A partition is marked
//!    done in the catalog only after the sink's `finish` said its rows are durable.
//! 6. **The watermark advances** to the run's end only when every partition is done, in the
//!    catalog transaction that ends the run and schedules the next one. Overwrite mode loads
//!    into a fresh table and swaps it in (`Destination::swap_in`, atomic) before that.
//!
//! # Crashes and idempotency
//!
//! A run that did not end (a crash, a stop, an error) is finished before any new one starts:
//! its range and partitions are in the catalog, and the partitions not done are copied again
//! — in fresh snapshots, since the exported one died with its transaction. That is still
//! right: the range is fixed, rows changed since then have moved past its end (or are read
//! again in their newer state, which upsert keeps). Each attempt at a partition is counted in
//! the catalog before anything is written, and the destination is told which attempt it is:
//! it must end with the partition's rows once, however many attempts wrote some of them (the
//! destination contract; ClickHouse removes what an earlier attempt left, a PostgreSQL
//! destination commits the rows with the partition's record). A partition done is never
//! copied again; the watermark never passes a partition not done.
//!
//! # What a watermark cannot see
//!
//! - **Late commits.** A row written by a transaction that commits after a run read past its
//!   watermark value (a long transaction stamping `updated_at = now()` at its start) is below
//!   the watermark when it becomes visible, and is never read. `watermark_lag` makes each run
//!   read again the values that far below the watermark; only upsert mode may do that (the
//!   same rows again are harmless there). xmin runs never miss a late commit (step 2).
//! - **Deletions** are not seen: a query sees the rows that are there. Updates are seen when
//!   they move the watermark (a timestamp set on update, or xmin, which every update renews).
//! - **xmin and wraparound.** Transaction ids are compared through the epoch, as 64-bit ids;
//!   a row frozen more than 2^32 transactions ago may be read again once (see
//!   `ferry_core::qrep::XidRange`).

mod copy;
pub(crate) mod plan;
mod setup;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_catalog::{Catalog, MirrorRow, NewRun, QueryMirrorRow, StoredPeer};
use ferry_core::destination::{Destination, TableToken, TargetName};
use ferry_core::error::Backoff;
use ferry_core::mirror::{MirrorKind, MirrorState, TableState};
use ferry_core::peer::PostgresConfig;
use ferry_core::qrep::{
    Bounds, QueryMode, QuerySpec, Watermark, WatermarkKind, WatermarkSource, XidRange,
};
use ferry_core::{ColumnSchema, ErrorKind};
use ferry_postgres::connect::connect;
use ferry_postgres::query::RunSnapshot;
use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

use crate::{peers, Engine, FlowError};

/// A request to create a query mirror, analysed.
pub struct CreateQueryMirror {
    pub name: String,
    pub if_not_exists: bool,
    pub source: StoredPeer,
    pub destination: StoredPeer,
    pub spec: QuerySpec,
}

/// The suffix of overwrite mode's fresh table.
const FRESH_SUFFIX: &str = "_ferry_overwrite";

fn spec_of(row: &MirrorRow) -> Result<QuerySpec, FlowError> {
    serde_json::from_value(row.spec.clone()).map_err(|e| {
        FlowError::internal(format!(
            "mirror {}: stored query spec unreadable: {e}",
            row.name
        ))
    })
}

impl Engine {
    /// Checks, sets up and starts a query mirror (see [`setup`]). `Ok(false)` when it exists
    /// and `IF NOT EXISTS` was given.
    pub async fn create_query_mirror(
        self: &Arc<Self>,
        req: CreateQueryMirror,
    ) -> Result<bool, FlowError> {
        setup::create(self, req).await
    }

    /// `EXECUTE MIRROR`: a query mirror's next run is due now. Returns at once; the run shows
    /// in `qrep_runs`.
    pub async fn execute_mirror(&self, name: &str) -> Result<(), FlowError> {
        let row = self
            .catalog
            .mirror(name)
            .await?
            .ok_or_else(|| crate::not_found(name))?;
        if row.kind != MirrorKind::Query {
            return Err(FlowError::invalid(
                "42809",
                format!(
                    "mirror \"{name}\" is a mirror of tables; EXECUTE MIRROR runs a query mirror"
                ),
            ));
        }
        match row.state {
            MirrorState::Running => {}
            MirrorState::Paused | MirrorState::Failed => {
                return Err(FlowError::invalid(
                    "55000",
                    format!("mirror \"{name}\" is {}", row.state),
                )
                .with_hint(format!("RESUME MIRROR {name} first.")))
            }
            other => {
                return Err(FlowError::invalid(
                    "55000",
                    format!("mirror \"{name}\" is {other} and runs no more"),
                ))
            }
        }
        self.catalog.run_now(row.id).await?;
        if let Some(r) = self.lock().get(name) {
            r.wake.notify_one();
        }
        info!(mirror = %name, "query mirror run requested");
        Ok(())
    }

    /// Starts a query mirror's task.
    pub(crate) async fn spawn_query(self: &Arc<Self>, row: MirrorRow) -> Result<(), FlowError> {
        let spec = spec_of(&row)?;
        let source = peers::source_config(&self.peer_by_id(row.source_peer).await?)?;
        let destination = peers::destination_for(
            &self.peer_by_id(row.destination_peer).await?,
            &row.name,
            Some(row.id),
            spec.options.unrepresentable_values,
        )?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        let task = QueryTask {
            catalog: self.catalog.clone(),
            row: row.clone(),
            spec,
            source,
            destination,
            stop: stop_rx,
            wake: wake.clone(),
        };
        self.register(&row.name, stop_tx, wake, task.run());
        Ok(())
    }

    /// `RESUME MIRROR` of a paused or failed query mirror: a failed run is tried again.
    pub(crate) async fn resume_query_mirror(
        self: &Arc<Self>,
        row: MirrorRow,
    ) -> Result<(), FlowError> {
        self.catalog.retry_failed_run(row.id).await?;
        self.catalog
            .set_mirror_state(row.id, MirrorState::Running, None)
            .await?;
        let name = row.name.clone();
        let row = self
            .catalog
            .mirror(&name)
            .await?
            .ok_or_else(|| crate::not_found(&name))?;
        self.spawn_query(row).await?;
        info!(mirror = %name, "query mirror resumed");
        Ok(())
    }

    /// `DROP MIRROR` of a query mirror (already stopped): nothing at the source to drop; the
    /// destination table stays.
    pub(crate) async fn drop_query_mirror(&self, row: &MirrorRow) -> Result<(), FlowError> {
        let spec = spec_of(row)?;
        let dest = peers::destination_for(
            &self.peer_by_id(row.destination_peer).await?,
            &row.name,
            Some(row.id),
            spec.options.unrepresentable_values,
        )?;
        dest.forget().await?;
        self.catalog.delete_mirror(row.id).await?;
        info!(mirror = %row.name, "query mirror dropped");
        Ok(())
    }
}

/// An error for a statement that is for mirrors of tables only.
pub(crate) fn tables_only(name: &str, statement: &str) -> FlowError {
    FlowError::new(
        ErrorKind::Unsupported,
        "0A000",
        format!("mirror \"{name}\" is a query mirror; {statement} is for mirrors of tables"),
    )
    .with_hint("To copy a query mirror's result from scratch, DROP MIRROR and CREATE it again.")
}

/// What a turn of the task did.
enum Turn {
    /// Nothing is due before this long.
    Wait(Duration),
    /// A run ended; look again.
    Again,
    /// The mirror is completed.
    Done,
    /// Stopped (pause, drop, shutdown).
    Stopped,
}

struct QueryTask {
    catalog: Catalog,
    row: MirrorRow,
    spec: QuerySpec,
    source: PostgresConfig,
    destination: Arc<dyn Destination>,
    stop: watch::Receiver<bool>,
    wake: Arc<Notify>,
}

impl QueryTask {
    async fn run(self) {
        let mut backoff = Backoff::default();
        loop {
            if *self.stop.borrow() {
                return;
            }
            let mut stop = self.stop.clone();
            match self.turn().await {
                Ok(Turn::Wait(delay)) => {
                    backoff = Backoff::default();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.wake.notified() => {}
                        _ = crate::stopped(&mut stop) => return,
                    }
                }
                Ok(Turn::Again) => backoff = Backoff::default(),
                Ok(Turn::Done | Turn::Stopped) => return,
                Err(e) if e.kind.is_retryable() => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, retry_in = ?delay, "query mirror hit a transient error; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = crate::stopped(&mut stop) => return,
                    }
                }
                Err(e) => {
                    error!(error = %e, "query mirror failed");
                    if let Ok(state) = self.catalog.query_mirror(self.row.id).await {
                        let _ = self
                            .catalog
                            .set_table_state(state.table_id, TableState::Failed, Some(&e.message))
                            .await;
                    }
                    let _ = self
                        .catalog
                        .set_mirror_state(
                            self.row.id,
                            MirrorState::Failed,
                            Some((&e.message, e.hint.as_deref())),
                        )
                        .await;
                    return;
                }
            }
        }
    }

    fn refresh(&self) -> Duration {
        Duration::from_secs(u64::from(self.spec.options.refresh_interval_secs))
    }

    /// Finishes the open run, or starts the next one when it is due.
    async fn turn(&self) -> Result<Turn, FlowError> {
        let state = self.catalog.query_mirror(self.row.id).await?;
        let open = self.catalog.open_run(self.row.id).await?;
        if open.is_none() && state.next_run_in > 0.0 {
            return Ok(Turn::Wait(Duration::from_secs_f64(state.next_run_in)));
        }
        let table_row = self
            .catalog
            .mirror_tables(self.row.id)
            .await?
            .into_iter()
            .find(|t| t.id == state.table_id)
            .ok_or_else(|| FlowError::internal("the query mirror's table vanished"))?;
        let target = TargetName::new(
            table_row.destination_database.clone(),
            table_row.destination_table.clone(),
        );
        let client = connect(&self.source, "ferry query run").await?;
        let money_scale = ferry_postgres::source::money_scale(&client, &self.source).await?;
        let prepared = setup::prepare(
            &client,
            &self.source,
            &self.spec,
            state.watermark_kind,
            money_scale,
            state.table_id,
            target.clone(),
        )
        .await?;
        let stored: Vec<ColumnSchema> = serde_json::from_value(table_row.columns.clone())
            .map_err(|e| FlowError::internal(format!("stored columns unreadable: {e}")))?;
        check_columns(&stored, &prepared.table.columns, &self.row.name)?;
        let qdest = setup::query_destination(self.destination.as_ref())?;
        let fresh = TargetName::new(
            target.namespace.clone(),
            format!("{}{FRESH_SUFFIX}", target.table),
        );
        let overwrite = self.spec.options.mode == QueryMode::Overwrite;

        let started = Instant::now();
        let (run, partitions, holder) = match open {
            Some((run, partitions)) => {
                info!(run = run.run_no, "finishing an interrupted run");
                (run, partitions, None)
            }
            None => {
                let holder = RunSnapshot::open(&self.source).await?;
                let Some(new) = self.plan(&state, &client, &holder).await? else {
                    drop(holder);
                    self.catalog
                        .schedule_run(self.row.id, self.refresh().as_secs_f64())
                        .await?;
                    return Ok(Turn::Wait(self.refresh()));
                };
                let mut new = new;
                if overwrite {
                    self.destination.drop_table(&fresh).await?;
                    let token = qdest.create_query_table(&prepared.table, &fresh).await?;
                    new.load_token = Some(token.0);
                }
                let (run, partitions) = self.catalog.begin_run(self.row.id, &new).await?;
                (run, partitions, Some(holder))
            }
        };
        drop(client);
        let into = if overwrite {
            fresh.clone()
        } else {
            target.clone()
        };
        let version = match (run.through, state.watermark_kind) {
            (Some(t), Some(k)) => Watermark::new(k, t).version(),
            _ => run.id as u64,
        };
        let job = Arc::new(copy::RunCopy {
            catalog: self.catalog.clone(),
            source: self.source.clone(),
            destination: self.destination.clone(),
            table: prepared.table.clone(),
            into,
            copy_sql: prepared
                .query
                .copy_sql(&prepared.columns, self.destination.wire()),
            kind: state.watermark_kind,
            snapshot: holder.as_ref().and_then(|h| h.exported.clone()),
            run_id: run.id,
            version,
            workers: usize::from(self.spec.options.parallelism),
            stop: self.stop.clone(),
        });
        let pending = partitions
            .iter()
            .filter(|p| p.state != ferry_core::mirror::PartitionState::Done)
            .count();
        info!(run = run.run_no, partitions = partitions.len(), pending, watermark_through = ?run.through_text, "query run");
        let finished = copy::copy_partitions(job, partitions).await?;
        if let Some(h) = holder {
            if let Err(e) = h.close().await {
                warn!(error = %e, "could not end the run's snapshot transaction");
            }
        }
        if !finished {
            return Ok(Turn::Stopped);
        }
        if overwrite {
            let token = run.load_token.clone().ok_or_else(|| {
                FlowError::internal("an overwrite run has no fresh table recorded")
            })?;
            self.destination
                .swap_in(&prepared.table.spec(), &fresh, &TableToken(token))
                .await?;
        }
        let rows = self
            .catalog
            .finish_run(&state, &run, self.refresh().as_secs_f64())
            .await?;
        info!(
            run = run.run_no,
            rows,
            secs = started.elapsed().as_secs_f64(),
            watermark = ?run.through_text,
            "query run done"
        );
        if self.spec.options.initial_copy_only {
            self.catalog
                .set_mirror_state(self.row.id, MirrorState::Completed, None)
                .await?;
            info!("initial copy done; the query mirror is completed");
            return Ok(Turn::Done);
        }
        Ok(Turn::Again)
    }

    /// The next run's range and partitions, read in the run snapshot; `None` when there is
    /// nothing new to read.
    async fn plan(
        &self,
        state: &QueryMirrorRow,
        client: &tokio_postgres::Client,
        snap: &RunSnapshot,
    ) -> Result<Option<NewRun>, FlowError> {
        let o = &self.spec.options;
        let rpp = o.rows_per_partition;
        let once = o.initial_copy_only;
        let to_json = |b: Vec<Bounds>| -> Result<Vec<serde_json::Value>, FlowError> {
            b.iter()
                .map(|b| serde_json::to_value(b).map_err(|e| FlowError::internal(e.to_string())))
                .collect()
        };
        let mut run = NewRun {
            after: None,
            through: None,
            snapshot: snap.exported.clone(),
            load_token: None,
            partitions: Vec::new(),
        };
        match (&o.watermark, state.watermark_kind) {
            (None, _) => run.partitions = to_json(vec![Bounds::Whole])?,
            (Some(WatermarkSource::Xmin { table }), Some(WatermarkKind::Xid)) => {
                let (xmin, next) = snap.xid_horizon().await?;
                let after = state.watermark.map(|w| w.max(0) as u64);
                let through = xmin.saturating_sub(1);
                if after.is_some_and(|a| through <= a) && !once {
                    return Ok(None);
                }
                let described =
                    ferry_postgres::source::describe_table(client, &self.source, table, &[], 0)
                        .await?
                        .ok_or_else(|| {
                            FlowError::new(
                                ErrorKind::NotFound,
                                "42P01",
                                format!("watermark table {table} no longer exists on the source"),
                            )
                        })?;
                let heap = described
                    .heaps
                    .iter()
                    .max_by_key(|h| h.pages)
                    .cloned()
                    .unwrap_or(ferry_postgres::source::HeapRelation {
                        name: table.clone(),
                        pages: 0,
                        tuples: 0.0,
                    });
                let xids = XidRange {
                    after,
                    through,
                    next,
                };
                run.after = after.map(|a| (a as i64, a.to_string()));
                run.through = Some((through as i64, through.to_string()));
                run.partitions =
                    to_json(plan::block_partitions(heap.pages, heap.tuples, rpp, xids))?;
            }
            (Some(WatermarkSource::Column { table, column }), Some(k)) => {
                let after = plan::read_after(k, state.watermark, o.watermark_lag);
                let range = snap.column_range(table, column, k, after).await?;
                run.after = after.map(|a| (a, Watermark::new(k, a).to_string()));
                match range {
                    None if !once => return Ok(None),
                    None => {}
                    Some(r) => {
                        let through = r.max.max(state.watermark.unwrap_or(i64::MIN));
                        run.through = Some((through, Watermark::new(k, through).to_string()));
                        run.partitions =
                            to_json(plan::value_partitions(k, r.min, r.max, r.rows, rpp))?;
                    }
                }
            }
            (w, k) => {
                return Err(FlowError::internal(format!(
                    "watermark {w:?} stored with kind {k:?}"
                )))
            }
        }
        Ok(Some(run))
    }
}

/// The query's result must still be what the mirror was created with.
fn check_columns(
    stored: &[ColumnSchema],
    now: &[ColumnSchema],
    mirror: &str,
) -> Result<(), FlowError> {
    let show = |c: &[ColumnSchema]| {
        c.iter()
            .map(|c| format!("{} {}", c.name, c.type_name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let same = stored.len() == now.len()
        && stored
            .iter()
            .zip(now)
            .all(|(a, b)| a.name == b.name && a.kind == b.kind && a.nullable == b.nullable);
    if same {
        return Ok(());
    }
    Err(FlowError::new(
        ErrorKind::Unsupported,
        "0A000",
        format!(
            "the result of mirror \"{mirror}\"'s query changed: it was ({}), it is ({})",
            show(stored),
            show(now)
        ),
    )
    .with_hint(
        "A query mirror's columns are fixed when it is created: DROP MIRROR and CREATE it again.",
    ))
}
