//! Loading one table again while the others stream, and joining it to the stream exactly.
//!
//! A table is loaded on its own when `RESYNC MIRROR m TABLE t` asks for it, when `RESUME
//! MIRROR` retries a failed table, and when a table without a key lost the initial load's
//! snapshot. It goes `syncing` → `catchup` → `done`.
//!
//! # The hand-off
//!
//! 1. **Hold.** Before the table's load starts, the mirror's stream is restarted with the
//!    table `syncing`: it skips the table's changes, and from then on it does not confirm the
//!    slot past the position it started at, `hold_lsn` (the slot keeps the WAL from there).
//!    Everything else streams as usual, and `confirmed_lsn` in the catalog keeps saying what
//!    the destination has.
//! 2. **Snapshot.** The load creates a *temporary* logical slot with an exported snapshot, on a
//!    replication connection of its own. The slot's consistent point `L` is the table's
//!    `sync_lsn`: the snapshot shows exactly the transactions whose commit record is before
//!    `L`, and pgoutput sends every transaction whose commit record is at or after `L` (a
//!    slot decodes a transaction iff its commit is at or after the slot's start). `L` is past
//!    the hold, because the slot was made after the stream held.
//! 3. **Load.** The table is copied under that snapshot into a fresh destination table, in
//!    CTID ranges, exactly as in the initial load. The temporary slot goes with its
//!    connection once the load is over.
//! 4. **Catch-up.** The table turns `catchup`, and the stream starts again *from the hold*.
//!    Going over WAL it has seen, it applies to the table (into its fresh table) the
//!    transactions whose commit record is at or after `L`, and to every other table only the
//!    transactions past `confirmed_lsn` (those before are in the destination already). So no
//!    change before the snapshot is applied after it, and none after it is lost.
//! 5. **Join.** Once the stream is back where it was when it restarted, the fresh table holds
//!    the snapshot and every change since: the destination swaps it in for the live table, the
//!    table is `done`, and when no other table is loading the hold is lifted.
//!
//! In ClickHouse the loaded rows have version 0 and the changes their WAL positions, so the
//! order of rows in the fresh table is right whichever arrives first. A crash anywhere repeats
//! the step it interrupted: a `syncing` table is loaded again from a new temporary slot (the
//! old one went with its connection), a `catchup` table makes the stream start from the hold
//! again.

use std::sync::Arc;

use ferry_catalog::{Catalog, TableRow};
use ferry_core::destination::{Destination, TableSpec, TargetName};
use ferry_core::mirror::{Mapping, TableState};
use ferry_core::peer::PostgresConfig;
use ferry_core::ErrorKind;
use ferry_postgres::connect::connect;
use ferry_postgres::replication::ReplicationConnection;
use ferry_postgres::source;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::load::{self, LoadContext, LoadOutcome};
use crate::FlowError;

/// What a table's own load needs.
pub(crate) struct SyncContext {
    pub mirror: String,
    pub mirror_id: i64,
    pub source: PostgresConfig,
    pub destination: Arc<dyn Destination>,
    pub catalog: Catalog,
    pub mapping: Mapping,
    pub rows_per_partition: u64,
    pub workers: usize,
    pub stop: watch::Receiver<bool>,
}

/// The name of the fresh table a table is loaded into on its own.
pub(crate) fn fresh_table(row: &TableRow) -> TargetName {
    TargetName::new(
        row.destination_database.clone(),
        format!("{}_ferry_resync", row.destination_table),
    )
}

/// Loads one `syncing` table under a snapshot of its own (steps 2 and 3 of the module doc).
/// `Ok(true)` once it is `catchup`; `Ok(false)` when stopped, or when the table failed (the
/// catalog says so).
pub(crate) async fn sync_table(ctx: &SyncContext, row: TableRow) -> Result<bool, FlowError> {
    let name = row.source.clone();
    let result = load_on_its_own(ctx, &row).await;
    match result {
        Ok(done) => Ok(done),
        Err(e) if e.kind.is_retryable() => Err(e),
        Err(e) => {
            warn!(table = %name, error = %e, "the table's own load failed");
            let message = match &e.hint {
                Some(h) => format!("{} ({h})", e.message),
                None => e.message.clone(),
            };
            ctx.catalog
                .set_table_state(row.id, TableState::Failed, Some(&message))
                .await?;
            Ok(false)
        }
    }
}

async fn load_on_its_own(ctx: &SyncContext, row: &TableRow) -> Result<bool, FlowError> {
    // The table's shape now: it may have changed since the mirror was made.
    let client = connect(&ctx.source, "ferry table sync").await?;
    let money_scale = source::money_scale(&client, &ctx.source).await?;
    let exclude = crate::excluded_columns(&ctx.mapping, &row.source);
    let described =
        source::describe_table(&client, &ctx.source, &row.source, &exclude, money_scale)
            .await?
            .ok_or_else(|| {
                FlowError::new(
                    ErrorKind::NotFound,
                    "42P01",
                    format!("table {} does not exist on the source", row.source),
                )
            })?;
    drop(client);
    if !described.has_identity() {
        return Err(FlowError::invalid(
            "55000",
            format!("table {} has no primary key", row.source),
        )
        .with_hint(format!(
            "Add a primary key, or run ALTER TABLE {} REPLICA IDENTITY FULL, then RESYNC MIRROR {} TABLE {}.",
            row.source.quoted(),
            ctx.mirror,
            row.source
        )));
    }
    let mut spec: TableSpec = crate::table_spec(row)?;
    spec.columns = described.columns.clone();
    let fresh = fresh_table(row);
    ctx.destination.drop_table(&fresh).await?;
    let token = ctx.destination.create_table(&spec, &fresh).await?;

    // The snapshot: a temporary slot, alive as long as this connection stays idle.
    let mut repl = ReplicationConnection::connect(&ctx.source).await?;
    let slot = format!("ferry_sync_{:016x}", rand::random::<u64>());
    let created = repl.create_slot(&slot, true).await?;
    let columns =
        serde_json::to_value(&spec.columns).map_err(|e| FlowError::internal(e.to_string()))?;
    ctx.catalog
        .begin_table_sync(
            row.id,
            described.oid,
            created.consistent_point,
            &fresh.table,
            &token.0,
            &columns,
            described.estimated_rows() as i64,
        )
        .await?;
    info!(table = %row.source, lsn = %created.consistent_point, "loading the table on its own");
    let load = Arc::new(LoadContext {
        mirror: ctx.mirror.clone(),
        mirror_id: ctx.mirror_id,
        source: ctx.source.clone(),
        destination: ctx.destination.clone(),
        catalog: ctx.catalog.clone(),
        snapshot: created.snapshot_name,
        rows_per_partition: ctx.rows_per_partition,
        workers_per_table: ctx.workers,
        tables_in_parallel: 1,
        only: Some(row.id),
        stop: ctx.stop.clone(),
    });
    let outcome = load::run(load).await;
    // The snapshot is no longer needed; the temporary slot goes with its connection.
    let _ = repl.close().await;
    match outcome? {
        LoadOutcome::Done => {
            info!(table = %row.source, "table loaded on its own; catching up with the stream");
            Ok(true)
        }
        LoadOutcome::Stopped | LoadOutcome::Failed { .. } => Ok(false),
    }
}
