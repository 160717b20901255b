//! The engine: mirrors' lifecycles and the tasks that move their data.
//!
//! A mirror is a task of its own. `CREATE MIRROR` sets it up ([`setup`]), then the task
//! runs the initial load ([`snapshot`]) and moves the mirror through its states, which the
//! catalog records so that a restarted daemon picks every mirror up where it was:
//!
//! ```text
//! setting_up ──► snapshot ──► running ──► (streaming)
//!                   │  ▲         │
//!                   │  └─paused◄─┘        initial_copy_only: snapshot ──► completed
//!                   └──► failed (a table failed; RESUME MIRROR tries it again)
//! ```

pub mod cdc;
mod error;
pub mod setup;
pub mod snapshot;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_catalog::{Catalog, MirrorRow, StoredPeer};
use ferry_clickhouse::table::Destination;
use ferry_core::error::Backoff;
use ferry_core::mirror::{MirrorSpec, MirrorState};
use ferry_core::peer::PostgresConfig;
use ferry_core::{ErrorKind, Lsn};
use ferry_postgres::replication::ReplicationConnection;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn, Instrument};

pub use error::FlowError;

/// How long a stopping mirror task gets before it is aborted.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A request to create a mirror, analysed.
pub struct CreateMirror {
    pub name: String,
    pub if_not_exists: bool,
    pub source: StoredPeer,
    pub destination: StoredPeer,
    pub spec: MirrorSpec,
}

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The mirrors of one daemon.
pub struct Engine {
    catalog: Catalog,
    running: Mutex<HashMap<String, Running>>,
}

impl Engine {
    pub fn new(catalog: Catalog) -> Arc<Engine> {
        Arc::new(Engine {
            catalog,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Picks up every mirror that has work to do (at daemon start).
    pub async fn resume_all(self: &Arc<Self>) -> Result<usize, FlowError> {
        let mirrors = self.catalog.active_mirrors().await?;
        let n = mirrors.len();
        for m in mirrors {
            info!(mirror = %m.name, state = %m.state, "resuming mirror");
            let id = m.id;
            // One mirror that cannot start (a root certificate file gone, say) must not keep
            // the others, or the daemon, from running: it is marked failed with the reason.
            if let Err(e) = self.spawn(m, None).await {
                if !matches!(e.kind, ErrorKind::InvalidInput | ErrorKind::Misconfigured) {
                    return Err(e);
                }
                error!(error = %e, "mirror cannot start");
                self.catalog
                    .set_mirror_state(
                        id,
                        MirrorState::Failed,
                        Some((&e.message, e.hint.as_deref())),
                    )
                    .await?;
            }
        }
        Ok(n)
    }

    /// Checks, sets up and starts a mirror. `Ok(false)` when it exists and `IF NOT EXISTS`
    /// was given.
    pub async fn create_mirror(self: &Arc<Self>, req: CreateMirror) -> Result<bool, FlowError> {
        let exists = || {
            FlowError::new(
                ErrorKind::AlreadyExists,
                "42710",
                format!("mirror \"{}\" already exists", req.name),
            )
        };
        if self.catalog.mirror(&req.name).await?.is_some() {
            return if req.if_not_exists {
                Ok(false)
            } else {
                Err(exists())
            };
        }
        let (src_cfg, dst_cfg) = setup::peer_configs(&req.source, &req.destination)?;
        let dest = Destination::new(&dst_cfg)?;
        let plan = setup::plan(&req.name, &src_cfg, &dest, &req.spec).await?;
        let set_up = setup::create(
            &self.catalog,
            &req.name,
            &req.source,
            &req.destination,
            &src_cfg,
            &dest,
            &req.spec,
            &plan,
        )
        .await?;
        let Some(set_up) = set_up else {
            return if req.if_not_exists {
                Ok(false)
            } else {
                Err(exists())
            };
        };
        let row = self.catalog.mirror(&req.name).await?.ok_or_else(|| {
            FlowError::internal("the mirror vanished from the catalog during setup")
        })?;
        debug_assert_eq!(row.id, set_up.mirror_id);
        self.spawn(row, Some((set_up.replication, set_up.snapshot_name)))
            .await?;
        Ok(true)
    }

    /// Stops a mirror, drops the slot and publication Ferry created, and forgets it. The
    /// destination tables stay. `Ok(false)` when there is none and `IF EXISTS` was given.
    pub async fn drop_mirror(&self, name: &str, if_exists: bool) -> Result<bool, FlowError> {
        let Some(row) = self.catalog.mirror(name).await? else {
            if if_exists {
                return Ok(false);
            }
            return Err(not_found(name));
        };
        self.stop(name).await;
        let source = self.peer_by_id(row.source_peer).await?;
        let (src_cfg, _) =
            setup::peer_configs(&source, &self.peer_by_id(row.destination_peer).await?)?;
        let publication = if row.created_publication {
            row.publication_name.as_deref()
        } else {
            None
        };
        setup::drop_source_objects(&src_cfg, publication, row.slot_name.as_deref()).await?;
        self.catalog.delete_mirror(row.id).await?;
        info!(mirror = %name, "mirror dropped");
        Ok(true)
    }

    /// Stops a mirror's work, keeping its position.
    pub async fn pause_mirror(&self, name: &str) -> Result<(), FlowError> {
        let row = self
            .catalog
            .mirror(name)
            .await?
            .ok_or_else(|| not_found(name))?;
        match row.state {
            MirrorState::Snapshot | MirrorState::Running | MirrorState::Failed => {}
            other => {
                return Err(FlowError::invalid(
                    "55000",
                    format!("mirror \"{name}\" is {other} and cannot be paused"),
                ))
            }
        }
        self.stop(name).await;
        self.catalog
            .set_mirror_state(row.id, MirrorState::Paused, None)
            .await?;
        info!(mirror = %name, "mirror paused");
        Ok(())
    }

    /// Continues a paused or failed mirror, trying failed tables again.
    pub async fn resume_mirror(self: &Arc<Self>, name: &str) -> Result<(), FlowError> {
        let row = self
            .catalog
            .mirror(name)
            .await?
            .ok_or_else(|| not_found(name))?;
        if !matches!(row.state, MirrorState::Paused | MirrorState::Failed) {
            return Err(FlowError::invalid(
                "55000",
                format!("mirror \"{name}\" is {} and not paused", row.state),
            ));
        }
        self.catalog.reset_failed(row.id).await?;
        let tables = self.catalog.mirror_tables(row.id).await?;
        let state = if tables.iter().all(|t| t.state == "done") {
            MirrorState::Running
        } else {
            MirrorState::Snapshot
        };
        self.catalog.set_mirror_state(row.id, state, None).await?;
        let row = self
            .catalog
            .mirror(name)
            .await?
            .ok_or_else(|| not_found(name))?;
        self.spawn(row, None).await?;
        info!(mirror = %name, state = %state, "mirror resumed");
        Ok(())
    }

    /// Loads every table of a mirror again from a new snapshot into fresh tables, and swaps
    /// them in when the load is done; until then the old tables stay as they are.
    pub async fn resync_mirror(self: &Arc<Self>, name: &str) -> Result<(), FlowError> {
        let row = self
            .catalog
            .mirror(name)
            .await?
            .ok_or_else(|| not_found(name))?;
        if row.state == MirrorState::SettingUp {
            return Err(FlowError::invalid(
                "55000",
                format!("mirror \"{name}\" is still being set up"),
            ));
        }
        let spec: MirrorSpec = serde_json::from_value(row.spec.clone()).map_err(|e| {
            FlowError::internal(format!("mirror {name}: stored spec unreadable: {e}"))
        })?;
        let source = self.peer_by_id(row.source_peer).await?;
        let destination = self.peer_by_id(row.destination_peer).await?;
        let (src_cfg, dst_cfg) = setup::peer_configs(&source, &destination)?;
        let dest = Destination::new(&dst_cfg)?;
        self.stop(name).await;

        // Fresh tables beside the live ones, from the tables' current shape.
        let client = ferry_postgres::connect::connect(&src_cfg, "ferry resync").await?;
        let money_scale = ferry_postgres::source::money_scale(&client, &src_cfg).await?;
        let mut fresh = Vec::new();
        for t in self.catalog.mirror_tables(row.id).await? {
            let exclude = match &spec.mapping {
                ferry_core::mirror::Mapping::Tables(m) => m
                    .iter()
                    .find(|e| e.source == t.source)
                    .map(|e| e.exclude.clone())
                    .unwrap_or_default(),
                ferry_core::mirror::Mapping::Schemas(_) => Vec::new(),
            };
            let described = ferry_postgres::source::describe_table(
                &client,
                &src_cfg,
                &t.source,
                &exclude,
                money_scale,
            )
            .await?
            .ok_or_else(|| {
                FlowError::new(
                    ErrorKind::NotFound,
                    "42P01",
                    format!("table {} no longer exists on the source", t.source),
                )
            })?;
            let load_table = format!("{}_ferry_resync", t.destination_table);
            dest.drop_table(&t.destination_database, &load_table)
                .await?;
            dest.create_table(&t.destination_database, &load_table, &described.columns)
                .await?;
            let uuid = dest
                .table_uuid(&t.destination_database, &load_table)
                .await?
                .unwrap_or_default();
            let columns = serde_json::to_value(&described.columns)
                .map_err(|e| FlowError::internal(e.to_string()))?;
            fresh.push((t.id, load_table, uuid, columns));
        }
        drop(client);

        // The publication (an initial_copy_only mirror dropped its own) and a new slot and
        // snapshot: the old slot's position is behind the new load.
        if let Some(publication) = &row.publication_name {
            let client = ferry_postgres::connect::connect(&src_cfg, "ferry resync").await?;
            let names: Vec<ferry_core::TableName> = self
                .catalog
                .mirror_tables(row.id)
                .await?
                .into_iter()
                .map(|t| t.source)
                .collect();
            let mut schemas = Vec::new();
            let scope =
                setup::publication_scope(&client, &src_cfg, &spec.mapping, &mut schemas, &names)
                    .await?;
            setup::ensure_publication(&client, &src_cfg, publication, scope).await?;
        }
        let slot = row
            .slot_name
            .clone()
            .unwrap_or_else(|| setup::mirror_names(name, &spec).1);
        setup::drop_source_objects(&src_cfg, None, Some(&slot)).await?;
        let mut repl = ReplicationConnection::connect(&src_cfg).await?;
        let created = repl.create_slot(&slot, false).await?;
        self.catalog
            .begin_resync(row.id, &created.consistent_point.to_string(), &fresh)
            .await?;
        let row = self
            .catalog
            .mirror(name)
            .await?
            .ok_or_else(|| not_found(name))?;
        info!(mirror = %name, lsn = %created.consistent_point, "resync started");
        self.spawn(row, Some((repl, created.snapshot_name))).await
    }

    /// Stops every mirror task, keeping their state for the next start.
    pub async fn shutdown(&self) {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        for n in names {
            self.stop(&n).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn stop(&self, name: &str) {
        let running = self.lock().remove(name);
        if let Some(r) = running {
            r.stop.send_replace(true);
            let abort = r.task.abort_handle();
            if tokio::time::timeout(STOP_GRACE, r.task).await.is_err() {
                warn!(mirror = %name, "mirror task did not stop in time; aborting it");
                abort.abort();
            }
        }
    }

    async fn peer_by_id(&self, id: i64) -> Result<StoredPeer, FlowError> {
        self.catalog.peer_by_id(id).await?.ok_or_else(|| {
            FlowError::internal(format!("peer {id} of a mirror is missing from the catalog"))
        })
    }

    async fn spawn(
        self: &Arc<Self>,
        row: MirrorRow,
        snapshot: Option<(ReplicationConnection, Option<String>)>,
    ) -> Result<(), FlowError> {
        let spec: MirrorSpec = serde_json::from_value(row.spec.clone()).map_err(|e| {
            FlowError::internal(format!("mirror {}: stored spec unreadable: {e}", row.name))
        })?;
        let source = self.peer_by_id(row.source_peer).await?;
        let destination = self.peer_by_id(row.destination_peer).await?;
        let (src_cfg, dst_cfg) = setup::peer_configs(&source, &destination)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = MirrorTask {
            catalog: self.catalog.clone(),
            row: row.clone(),
            spec,
            source: src_cfg,
            destination: Destination::new(&dst_cfg)?,
            stop: stop_rx,
        };
        let span = tracing::info_span!("mirror", mirror = %row.name);
        let handle = tokio::spawn(task.run(snapshot).instrument(span));
        if let Some(old) = self.lock().insert(
            row.name.clone(),
            Running {
                stop: stop_tx,
                task: handle,
            },
        ) {
            old.stop.send_replace(true);
        }
        Ok(())
    }
}

/// Completes once `stop` turns true (or its sender is gone). Unlike `wait_for`, holds no
/// borrow of the value afterwards, so it can sit in a `select!` whose other arms await.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn not_found(name: &str) -> FlowError {
    FlowError::new(
        ErrorKind::NotFound,
        "42704",
        format!("mirror \"{name}\" does not exist"),
    )
}

struct MirrorTask {
    catalog: Catalog,
    row: MirrorRow,
    spec: MirrorSpec,
    source: PostgresConfig,
    destination: Destination,
    stop: watch::Receiver<bool>,
}

impl MirrorTask {
    async fn run(self, mut snapshot: Option<(ReplicationConnection, Option<String>)>) {
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
            let ctx = Arc::new(snapshot::LoadContext {
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
            snapshot::run(ctx).await?
        } else {
            snapshot::LoadOutcome::Done
        };
        // The exported snapshot is no longer needed.
        drop(holder);
        if outcome == snapshot::LoadOutcome::Done {
            self.swap_resynced().await?;
        }
        match outcome {
            snapshot::LoadOutcome::Stopped => Ok(None),
            snapshot::LoadOutcome::Failed { tables } => {
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
            snapshot::LoadOutcome::Done if o.initial_copy_only => {
                // Ranges read after a restart or pause saw a later state than the slot's
                // snapshot; the slot's changes up to now reconcile every row (snapshot.rs).
                if self
                    .catalog
                    .has_fresh_snapshot_partitions(self.row.id)
                    .await?
                {
                    let client =
                        ferry_postgres::connect::connect(&self.source, "ferry catch-up").await?;
                    let now: String = client
                        .query_one("SELECT pg_current_wal_lsn()::text", &[])
                        .await
                        .map_err(|e| {
                            ferry_postgres::connect::SourceError::from_pg(&self.source, e)
                        })?
                        .get(0);
                    let until: Lsn = now
                        .parse()
                        .map_err(|e| FlowError::internal(format!("{e}")))?;
                    info!(until = %until, "applying the changes made during the load");
                    self.stream_until(Some(until)).await?;
                    if *self.stop.borrow() {
                        return Ok(None);
                    }
                }
                let publication = if self.row.created_publication {
                    self.row.publication_name.as_deref()
                } else {
                    None
                };
                setup::drop_source_objects(
                    &self.source,
                    publication,
                    self.row.slot_name.as_deref(),
                )
                .await?;
                self.catalog
                    .set_mirror_state(self.row.id, MirrorState::Completed, None)
                    .await?;
                info!("initial load complete; the mirror is completed");
                Ok(None)
            }
            snapshot::LoadOutcome::Done => {
                self.catalog
                    .set_mirror_state(self.row.id, MirrorState::Running, None)
                    .await?;
                info!("initial load complete; streaming changes");
                Ok(Some(MirrorState::Running))
            }
        }
    }

    /// After a resync's load: each fresh table takes its live table's name, and the old data
    /// is dropped. A swap interrupted by a crash is recognised by the fresh table's UUID.
    async fn swap_resynced(&self) -> Result<(), FlowError> {
        for t in self.catalog.mirror_tables(self.row.id).await? {
            let (Some(load_table), Some(uuid)) = (&t.load_table, &t.load_table_uuid) else {
                continue;
            };
            let db = &t.destination_database;
            let live = self
                .destination
                .table_uuid(db, &t.destination_table)
                .await?;
            if live.as_deref() != Some(uuid.as_str()) || uuid.is_empty() {
                if live.is_some() {
                    self.destination
                        .exchange_tables(db, &t.destination_table, load_table)
                        .await?;
                } else {
                    // The live table was dropped by hand: the fresh one simply takes its name.
                    self.destination
                        .execute(&format!(
                            "RENAME TABLE {} TO {}",
                            ferry_core::ident::ch_qualified(db, load_table),
                            ferry_core::ident::ch_qualified(db, &t.destination_table)
                        ))
                        .await?;
                }
            }
            self.catalog.end_resync_table(t.id).await?;
            self.destination.drop_table(db, load_table).await?;
            info!(table = %t.source, destination = %format!("{db}.{}", t.destination_table), "resynced table swapped in");
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
        let start = row
            .confirmed_lsn
            .as_deref()
            .or(row.snapshot_lsn.as_deref())
            .ok_or_else(|| FlowError::internal("the mirror has no position to stream from"))?;
        let start: Lsn = start
            .parse()
            .map_err(|e| FlowError::internal(format!("stored LSN: {e}")))?;
        let ctx = Arc::new(cdc::StreamContext {
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
                ferry_core::mirror::Mapping::Schemas(pairs) => pairs.clone(),
                ferry_core::mirror::Mapping::Tables(_) => Vec::new(),
            },
            stop: self.stop.clone(),
        });
        cdc::Streamer::new(ctx).await?.run().await
    }
}

fn plural(n: usize) -> String {
    if n == 1 {
        "1 table".to_owned()
    } else {
        format!("{n} tables")
    }
}
