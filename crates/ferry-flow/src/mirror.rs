//! A mirror's task: it runs the initial load, then streams, moving the mirror through its
//! states and retrying transient errors with backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_catalog::{Catalog, MirrorRow};
use ferry_core::destination::{Destination, TableToken, TargetName};
use ferry_core::error::Backoff;
use ferry_core::mirror::{Mapping, MirrorSpec, MirrorState};
use ferry_core::peer::PostgresConfig;
use ferry_core::Lsn;
use ferry_postgres::publication;
use ferry_postgres::replication::ReplicationConnection;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::{load, stream, FlowError};

pub(crate) struct MirrorTask {
    pub catalog: Catalog,
    pub row: MirrorRow,
    pub spec: MirrorSpec,
    pub source: PostgresConfig,
    pub destination: Arc<dyn Destination>,
    pub stop: watch::Receiver<bool>,
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
                }
                Ok(None) => return,
                Err(e) if e.kind.is_retryable() => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, retry_in = ?delay, "mirror hit a transient error; trying again");
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
                Err(e) => {
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
                stop: self.stop.clone(),
            });
            load::run(ctx).await?
        } else {
            load::LoadOutcome::Done
        };
        // The exported snapshot is no longer needed.
        drop(holder);
        if outcome == load::LoadOutcome::Done {
            self.swap_resynced().await?;
        }
        match outcome {
            load::LoadOutcome::Stopped => Ok(None),
            load::LoadOutcome::Failed { tables } => {
                let message = format!(
                    "the initial load of {} failed: {}",
                    plural(tables.len()),
                    tables.join(", ")
                );
                self.catalog
                    .set_mirror_state(
                        self.row.id,
                        MirrorState::Failed,
                        Some((&message, Some("See SELECT * FROM mirror_tables for each table's error; RESUME MIRROR tries them again."))),
                    )
                    .await?;
                Ok(None)
            }
            load::LoadOutcome::Done if o.initial_copy_only => {
                // Ranges read after a restart or pause saw a later state than the slot's
                // snapshot; the slot's changes up to now reconcile every row (snapshot.rs).
                if self
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
                    .set_mirror_state(self.row.id, MirrorState::Completed, None)
                    .await?;
                info!("initial load complete; the mirror is completed");
                Ok(None)
            }
            load::LoadOutcome::Done => {
                self.catalog
                    .set_mirror_state(self.row.id, MirrorState::Running, None)
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

    /// Streams from the catalog's confirmed position until stopped, or until `until` is applied.
    async fn stream_until(&self, until: Option<Lsn>) -> Result<(), FlowError> {
        let row = self
            .catalog
            .mirror(&self.row.name)
            .await?
            .ok_or_else(|| FlowError::internal("the mirror vanished from the catalog"))?;
        let start: Lsn = row
            .confirmed_lsn
            .or(row.snapshot_lsn)
            .ok_or_else(|| FlowError::internal("the mirror has no position to stream from"))?;
        let excludes: HashMap<_, _> = match &self.spec.mapping {
            Mapping::Tables(m) => m
                .iter()
                .map(|e| (e.source.clone(), e.exclude.clone()))
                .collect(),
            Mapping::Schemas(_) => HashMap::new(),
        };
        let ctx = Arc::new(stream::StreamContext {
            mirror: self.row.name.clone(),
            mirror_id: self.row.id,
            source: self.source.clone(),
            destination: self.destination.clone(),
            catalog: self.catalog.clone(),
            slot: row.slot_name.clone().unwrap_or_default(),
            publication: row.publication_name.clone().unwrap_or_default(),
            start,
            sync_interval: Duration::from_secs(u64::from(self.spec.options.sync_interval_secs)),
            max_batch_size: self.spec.options.max_batch_size as usize,
            max_slot_lag_bytes: self.spec.options.max_slot_lag_bytes,
            until,
            schemas: match &self.spec.mapping {
                Mapping::Schemas(pairs) => pairs.clone(),
                Mapping::Tables(_) => Vec::new(),
            },
            excludes,
            stop: self.stop.clone(),
        });
        stream::Streamer::new(ctx).await?.run().await
    }
}

fn plural(n: usize) -> String {
    if n == 1 {
        "1 table".to_owned()
    } else {
        format!("{n} tables")
    }
}
