//! A mirror's task: it runs the initial load, then streams, moving the mirror through its
//! states and retrying transient errors with backoff.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ferry_catalog::{Catalog, MirrorRow};
use ferry_core::destination::{Destination, TableToken, TargetName};
use ferry_core::error::Backoff;
use ferry_core::mirror::{Mapping, MirrorSpec, MirrorState, TableState};
use ferry_core::peer::PostgresConfig;
use ferry_core::Lsn;
use ferry_postgres::publication;
use ferry_postgres::replication::ReplicationConnection;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tracing::{error, info, warn, Instrument};

use crate::{load, stream, FlowError};

pub(crate) struct MirrorTask {
    pub catalog: Catalog,
    pub row: MirrorRow,
    pub spec: MirrorSpec,
    pub source: PostgresConfig,
    pub destination: Arc<dyn Destination>,
    pub stop: watch::Receiver<bool>,
    /// Wakes the stream so that it starts again with the tables' new states.
    pub wake: Arc<Notify>,
    /// What the monitor reads of the stream, kept across the task's restarts.
    pub progress: Arc<crate::progress::MirrorProgress>,
}

impl MirrorTask {
    pub async fn run(self, mut snapshot: Option<(ReplicationConnection, Option<String>)>) {
        let mut backoff = Backoff::default();
        let mut state = self.row.state;
        loop {
            if *self.stop.borrow() {
                return;
            }
            let result = match state {
                MirrorState::Snapshot | MirrorState::SettingUp => self.load(snapshot.take()).await,
                MirrorState::Running => self.stream().await,
                _ => return,
            };
            match result {
                Ok(Some(next)) => {
                    state = next;
                    backoff = Backoff::default();
                    self.progress.settled();
                }
                Ok(None) => {
                    self.progress.settled();
                    return;
                }
                Err(e) if e.kind.is_retryable() => {
                    let delay = backoff.next_delay();
                    self.progress.retrying(&e.message);
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "mirror hit a transient error; trying again");
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
                Err(e) => {
                    self.progress.settled();
                    error!(error = %e, "mirror failed");
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

    /// The initial load; returns the next state, or `None` to end the task.
    async fn load(
        &self,
        snapshot: Option<(ReplicationConnection, Option<String>)>,
    ) -> Result<Option<MirrorState>, FlowError> {
        let o = &self.spec.options;
        let (holder, snapshot_name) = match snapshot {
            Some((conn, name)) => (Some(conn), name),
            None => (None, None),
        };
        let outcome = if o.do_initial_copy {
            let ctx = Arc::new(load::LoadContext {
                mirror: self.row.name.clone(),
                mirror_id: self.row.id,
                source: self.source.clone(),
                destination: self.destination.clone(),
                catalog: self.catalog.clone(),
                snapshot: snapshot_name,
                rows_per_partition: o.rows_per_partition,
                workers_per_table: o.max_parallel_workers as usize,
                tables_in_parallel: o.tables_in_parallel as usize,
                only: None,
                stop: self.stop.clone(),
            });
            load::run(ctx).await?
        } else {
            // Nothing is copied: the tables stream from the slot's position on.
            for t in self.catalog.mirror_tables(self.row.id).await? {
                if matches!(t.state, TableState::Pending | TableState::Copying) {
                    self.catalog
                        .set_table_state(t.id, TableState::Done, None)
                        .await?;
                }
            }
            load::LoadOutcome::Done
        };
        // The exported snapshot is no longer needed.
        drop(holder);
        if outcome == load::LoadOutcome::Stopped {
            return Ok(None);
        }
        self.swap_resynced().await?;
        // The other tables go on: the mirror streams them, and says which failed.
        let warning = match &outcome {
            load::LoadOutcome::Failed { tables } => {
                warn!(tables = %tables.join(", "), "the initial load of some tables failed; the others go on");
                Some(format!(
                    "the initial load of {} failed: {}",
                    plural(tables.len()),
                    tables.join(", ")
                ))
            }
            _ => None,
        };
        let warning = warning.as_deref().map(|m| {
            (
                m,
                Some("See SELECT * FROM mirror_tables for each table's error; RESUME MIRROR loads them again."),
            )
        });
        match outcome {
            load::LoadOutcome::Stopped => Ok(None),
            load::LoadOutcome::Done | load::LoadOutcome::Failed { .. } if o.initial_copy_only => {
                // Ranges read after a restart or pause saw a later state than the slot's
                // snapshot; the slot's changes up to now reconcile every row (snapshot.rs).
                let loading = self
                    .catalog
                    .mirror_tables(self.row.id)
                    .await?
                    .iter()
                    .any(|t| matches!(t.state, TableState::Syncing | TableState::Catchup));
                if loading
                    || self
                        .catalog
                        .has_fresh_snapshot_partitions(self.row.id)
                        .await?
                {
                    let until = publication::current_wal_lsn(&self.source).await?;
                    info!(until = %until, "applying the changes made during the load");
                    self.stream_until(Some(until)).await?;
                    if *self.stop.borrow() {
                        return Ok(None);
                    }
                }
                let created_publication = if self.row.created_publication {
                    self.row.publication_name.as_deref()
                } else {
                    None
                };
                publication::drop_source_objects(
                    &self.source,
                    created_publication,
                    self.row.slot_name.as_deref(),
                )
                .await?;
                self.catalog
                    .set_mirror_state(self.row.id, MirrorState::Completed, warning)
                    .await?;
                info!("initial load complete; the mirror is completed");
                Ok(None)
            }
            load::LoadOutcome::Done | load::LoadOutcome::Failed { .. } => {
                self.catalog
                    .set_mirror_state(self.row.id, MirrorState::Running, warning)
                    .await?;
                info!("initial load complete; streaming changes");
                Ok(Some(MirrorState::Running))
            }
        }
    }

    /// After a resync's load: each fresh table takes its live table's name, and the old data
    /// is dropped. A swap interrupted by a crash is recognised by the fresh table's identity.
    async fn swap_resynced(&self) -> Result<(), FlowError> {
        for t in self.catalog.mirror_tables(self.row.id).await? {
            let (Some(load_table), Some(token)) = (&t.load_table, &t.load_table_uuid) else {
                continue;
            };
            if t.state != TableState::Done {
                // A failed table keeps its live table; one loading on its own swaps later.
                continue;
            }
            let spec = crate::table_spec(&t)?;
            let fresh = TargetName::new(t.destination_database.clone(), load_table.clone());
            self.destination
                .swap_in(&spec, &fresh, &TableToken(token.clone()))
                .await?;
            self.catalog.end_resync_table(t.id).await?;
        }
        Ok(())
    }

    /// Streams changes from the catalog's confirmed position until stopped.
    async fn stream(&self) -> Result<Option<MirrorState>, FlowError> {
        self.stream_until(None).await?;
        Ok(None)
    }

    /// Streams from the catalog's position until stopped, or until `until` is applied (and no
    /// table is loading on its own). Tables that are to load on their own are loaded beside
    /// the stream (see [`crate::sync`]), which starts again whenever one begins or ends.
    async fn stream_until(&self, until: Option<Lsn>) -> Result<(), FlowError> {
        let excludes: HashMap<_, _> = match &self.spec.mapping {
            Mapping::Tables(m) => m
                .iter()
                .map(|e| (e.source.clone(), e.exclude.clone()))
                .collect(),
            Mapping::Schemas(_) => HashMap::new(),
        };
        let mut syncs: JoinSet<(i64, Result<bool, FlowError>)> = JoinSet::new();
        let mut syncing: HashSet<i64> = HashSet::new();
        loop {
            // Table loads that ended since the last turn.
            while let Some(joined) = syncs.try_join_next() {
                let (id, result) =
                    joined.map_err(|e| FlowError::internal(format!("table load task: {e}")))?;
                syncing.remove(&id);
                if let Err(e) = result {
                    warn!(error = %e, "a table's own load hit a transient error; it starts again");
                }
            }
            let row = self
                .catalog
                .mirror(&self.row.name)
                .await?
                .ok_or_else(|| FlowError::internal("the mirror vanished from the catalog"))?;
            let applied: Lsn = row
                .confirmed_lsn
                .or(row.snapshot_lsn)
                .ok_or_else(|| FlowError::internal("the mirror has no position to stream from"))?;
            let tables = self.catalog.mirror_tables(self.row.id).await?;
            let loading = tables
                .iter()
                .any(|t| matches!(t.state, TableState::Syncing | TableState::Catchup));
            // The slot is held from before any table's own snapshot is taken.
            let hold = match (loading, row.hold_lsn) {
                (true, None) => {
                    self.catalog.set_hold(self.row.id, Some(applied)).await?;
                    Some(applied)
                }
                (false, Some(_)) => {
                    self.catalog.set_hold(self.row.id, None).await?;
                    None
                }
                (_, hold) => hold,
            };
            for t in tables.iter().filter(|t| t.state == TableState::Syncing) {
                if !syncing.insert(t.id) {
                    continue;
                }
                let ctx = self.sync_context();
                let table = t.clone();
                let wake = self.wake.clone();
                let span = tracing::info_span!("sync", table = %t.source);
                syncs.spawn(
                    async move {
                        let id = table.id;
                        let result = crate::sync::sync_table(&ctx, table).await;
                        wake.notify_one();
                        (id, result)
                    }
                    .instrument(span),
                );
            }
            let ctx = Arc::new(stream::StreamContext {
                mirror: self.row.name.clone(),
                mirror_id: self.row.id,
                source: self.source.clone(),
                destination: self.destination.clone(),
                catalog: self.catalog.clone(),
                slot: row.slot_name.clone().unwrap_or_default(),
                publication: row.publication_name.clone().unwrap_or_default(),
                applied,
                hold,
                sync_interval: Duration::from_secs(u64::from(self.spec.options.sync_interval_secs)),
                max_batch_size: self.spec.options.max_batch_size as usize,
                until,
                schemas: match &self.spec.mapping {
                    Mapping::Schemas(pairs) => pairs.clone(),
                    Mapping::Tables(_) => Vec::new(),
                },
                excludes: excludes.clone(),
                stop: self.stop.clone(),
                wake: self.wake.clone(),
                progress: self.progress.clone(),
            });
            match stream::Streamer::new(ctx).await?.run().await? {
                stream::StreamEnd::Restart => continue,
                stream::StreamEnd::Stopped => return Ok(()),
                stream::StreamEnd::CaughtUp if syncing.is_empty() && !loading => return Ok(()),
                stream::StreamEnd::CaughtUp => {
                    // Tables still load on their own: wait for one to end, then go on.
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = crate::stopped(&mut stop) => return Ok(()),
                    }
                }
            }
        }
    }

    fn sync_context(&self) -> crate::sync::SyncContext {
        crate::sync::SyncContext {
            mirror: self.row.name.clone(),
            mirror_id: self.row.id,
            source: self.source.clone(),
            destination: self.destination.clone(),
            catalog: self.catalog.clone(),
            mapping: self.spec.mapping.clone(),
            rows_per_partition: self.spec.options.rows_per_partition,
            workers: self.spec.options.max_parallel_workers as usize,
            stop: self.stop.clone(),
        }
    }
}

fn plural(n: usize) -> String {
    if n == 1 {
        "1 table".to_owned()
    } else {
        format!("{n} tables")
    }
}
