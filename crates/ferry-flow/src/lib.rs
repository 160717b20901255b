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
//!
//! Beside the mirrors' tasks, one [`monitor`] per daemon samples every mirror's figures from
//! the source and from each stream's [`progress`], on a timer of its own, in every state.
//!
//! A query mirror (`CREATE MIRROR … FOR $$query$$`) is a task of its own too: `setting_up ──►
//! running` (a run now and then, see [`qrep`]) `──► completed` after its one run with
//! `initial_copy_only`; paused, failed and resumed as a mirror of tables.

mod alter;
mod error;
pub mod load;
mod mirror;
pub mod monitor;
mod peers;
pub mod progress;
pub mod qrep;
pub mod setup;
pub mod stream;
pub mod sync;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_catalog::{Catalog, MirrorRow, StoredPeer, TableRow};
use ferry_core::destination::{Destination, TableSpec, TargetName};
use ferry_core::mirror::{Mapping, MirrorKind, MirrorSpec, MirrorState, TableState};
use ferry_core::ErrorKind;
use ferry_postgres::publication;
use ferry_postgres::replication::ReplicationConnection;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{error, info, warn, Instrument};

use mirror::MirrorTask;

pub use error::FlowError;
pub use qrep::CreateQueryMirror;

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
    /// Wakes the mirror's stream to start again with its tables' new states.
    wake: Arc<Notify>,
    task: JoinHandle<()>,
}

/// The mirrors of one daemon.
pub struct Engine {
    catalog: Catalog,
    running: Mutex<HashMap<String, Running>>,
    /// Each mirror's progress, by id, for as long as the daemon runs ([`progress`]).
    progress: monitor::Registry,
    /// Stops the monitor ([`monitor`]); it also stops when the engine is dropped.
    monitor_stop: watch::Sender<bool>,
    monitor: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    /// The engine of a daemon; inside a Tokio runtime it starts the monitor.
    pub fn new(catalog: Catalog) -> Arc<Engine> {
        let (monitor_stop, stop) = watch::channel(false);
        let engine = Arc::new(Engine {
            catalog,
            running: Mutex::new(HashMap::new()),
            progress: Default::default(),
            monitor_stop,
            monitor: Mutex::new(None),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            let task = tokio::spawn(
                monitor::run(engine.catalog.clone(), engine.progress.clone(), stop)
                    .instrument(tracing::info_span!("monitor")),
            );
            *engine.monitor.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        }
        engine
    }

    /// A mirror's progress, kept across its task's restarts.
    fn progress_of(&self, mirror_id: i64) -> Arc<progress::MirrorProgress> {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(mirror_id)
            .or_default()
            .clone()
    }

    /// What keeps this daemon from being ready, if anything: the monitor is not running, or
    /// a mirror that should run has no live task.
    pub async fn readiness(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let monitor_alive = self
            .monitor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|t| !t.is_finished());
        if !monitor_alive {
            problems.push("the monitor is not running".to_owned());
        }
        match self.catalog.mirrors_to_run().await {
            Ok(names) => {
                let running = self.lock();
                for n in names {
                    if running.get(&n).is_none_or(|r| r.task.is_finished()) {
                        problems.push(format!("mirror \"{n}\" should run but has no task"));
                    }
                }
            }
            Err(e) => problems.push(format!("the catalog cannot be read: {e}")),
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
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
        let src_cfg = peers::source_config(&req.source)?;
        let dest = peers::destination(
            &req.destination,
            &peers::MirrorRef {
                name: &req.name,
                id: None,
                spec: &req.spec,
            },
        )?;
        let plan = setup::plan(&req.name, &src_cfg, dest.as_ref(), &req.spec).await?;
        let set_up = setup::create(
            &self.catalog,
            &req.name,
            &req.source,
            &req.destination,
            &src_cfg,
            dest.as_ref(),
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
        if row.kind == MirrorKind::Query {
            self.drop_query_mirror(&row).await?;
            return Ok(true);
        }
        let src_cfg = peers::source_config(&self.peer_by_id(row.source_peer).await?)?;
        let dest = self.destination_of(&row, &stored_spec(&row)?).await?;
        let created_publication = if row.created_publication {
            row.publication_name.as_deref()
        } else {
            None
        };
        publication::drop_source_objects(&src_cfg, created_publication, row.slot_name.as_deref())
            .await?;
        dest.forget().await?;
        self.catalog.delete_mirror(row.id).await?;
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&row.id);
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

    /// Continues a paused or failed mirror. Tables that failed are loaded again, each on its
    /// own while the others stream (see [`sync`]).
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
        if row.kind == MirrorKind::Query {
            return self.resume_query_mirror(row).await;
        }
        let src_cfg = peers::source_config(&self.peer_by_id(row.source_peer).await?)?;
        if let Some(slot) = &row.slot_name {
            if publication::slot_usable(&src_cfg, slot).await? != Some(true) {
                return Err(FlowError::new(
                    ErrorKind::Misconfigured,
                    "55000",
                    format!(
                        "the replication slot \"{slot}\" of mirror \"{name}\" was dropped or invalidated on the source"
                    ),
                )
                .with_hint(format!(
                    "The changes since the mirror last read it are gone. RESYNC MIRROR {name} loads every table again from a new slot."
                )));
            }
        }
        let tables = self.catalog.mirror_tables(row.id).await?;
        let failed: Vec<i64> = tables
            .iter()
            .filter(|t| t.state == TableState::Failed)
            .map(|t| t.id)
            .collect();
        if !failed.is_empty() {
            self.catalog.request_table_syncs(row.id, &failed).await?;
        }
        let loading = tables
            .iter()
            .any(|t| matches!(t.state, TableState::Pending | TableState::Copying));
        let state = if loading {
            MirrorState::Snapshot
        } else {
            MirrorState::Running
        };
        self.catalog.set_mirror_state(row.id, state, None).await?;
        let row = self
            .catalog
            .mirror(name)
            .await?
            .ok_or_else(|| not_found(name))?;
        self.spawn(row, None).await?;
        info!(mirror = %name, state = %state, tables_reloading = failed.len(), "mirror resumed");
        Ok(())
    }

    /// Loads some tables of a running mirror again, each from a snapshot of its own, while
    /// the other tables stream; each joins the stream exactly where its snapshot was taken
    /// (see [`sync`]).
    pub async fn resync_tables(
        self: &Arc<Self>,
        name: &str,
        tables: &[ferry_core::TableName],
    ) -> Result<(), FlowError> {
        let row = self
            .catalog
            .mirror(name)
            .await?
            .ok_or_else(|| not_found(name))?;
        if row.kind == MirrorKind::Query {
            return Err(qrep::tables_only(name, "RESYNC MIRROR … TABLE"));
        }
        match row.state {
            MirrorState::Running | MirrorState::Snapshot => {}
            MirrorState::Paused => {
                return Err(
                    FlowError::invalid("55000", format!("mirror \"{name}\" is paused")).with_hint(
                        format!(
                    "RESUME MIRROR {name} first; its tables are loaded again while it streams."
                ),
                    ),
                )
            }
            other => {
                return Err(FlowError::invalid(
                    "55000",
                    format!(
                    "mirror \"{name}\" is {other}; only a running mirror loads single tables again"
                ),
                )
                .with_hint(format!("RESYNC MIRROR {name} loads every table again.")))
            }
        }
        let known = self.catalog.mirror_tables(row.id).await?;
        let mut ids = Vec::new();
        let src_cfg = peers::source_config(&self.peer_by_id(row.source_peer).await?)?;
        for t in tables {
            let Some(found) = known.iter().find(|k| &k.source == t) else {
                return Err(FlowError::new(
                    ErrorKind::NotFound,
                    "42P01",
                    format!("table {t} is not replicated by mirror \"{name}\""),
                )
                .with_hint("SELECT * FROM mirror_tables lists the mirror's tables."));
            };
            // A table dropped and created again left a publication of named tables.
            if row.created_publication {
                if let Some(p) = &row.publication_name {
                    publication::add_table(&src_cfg, p, t).await?;
                }
            }
            ids.push(found.id);
        }
        self.catalog.request_table_syncs(row.id, &ids).await?;
        if let Some(r) = self.lock().get(name) {
            r.wake.notify_one();
        }
        let names: Vec<String> = tables.iter().map(ToString::to_string).collect();
        info!(mirror = %name, tables = %names.join(", "), "tables are loaded again on their own");
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
        if row.kind == MirrorKind::Query {
            return Err(qrep::tables_only(name, "RESYNC MIRROR"));
        }
        if row.state == MirrorState::SettingUp {
            return Err(FlowError::invalid(
                "55000",
                format!("mirror \"{name}\" is still being set up"),
            ));
        }
        if row.state == MirrorState::Paused {
            // A reload runs while the mirror streams; a paused mirror stays as it is.
            return Err(
                FlowError::invalid("55000", format!("mirror \"{name}\" is paused")).with_hint(
                    format!("RESUME MIRROR {name} first, then RESYNC MIRROR {name}."),
                ),
            );
        }
        let spec = stored_spec(&row)?;
        let src_cfg = peers::source_config(&self.peer_by_id(row.source_peer).await?)?;
        let dest = self.destination_of(&row, &spec).await?;
        self.stop(name).await;

        // Fresh tables beside the live ones, from the tables' current shape.
        let client = ferry_postgres::connect::connect(&src_cfg, "ferry resync").await?;
        let money_scale = ferry_postgres::source::money_scale(&client, &src_cfg).await?;
        let tables = self.catalog.mirror_tables(row.id).await?;
        let mut fresh = Vec::new();
        for t in &tables {
            let exclude = excluded_columns(&spec.mapping, &t.source);
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
            let mut table = table_spec(t)?;
            table.columns = described.columns.clone();
            let load_table = TargetName::new(
                t.destination_database.clone(),
                format!("{}_ferry_resync", t.destination_table),
            );
            dest.drop_table(&load_table).await?;
            let token = dest.create_table(&table, &load_table).await?;
            let columns = serde_json::to_value(&described.columns)
                .map_err(|e| FlowError::internal(e.to_string()))?;
            fresh.push((t.id, load_table.table, token.0, columns));
        }
        drop(client);

        // The publication (an initial_copy_only mirror dropped its own) and a new slot and
        // snapshot: the old slot's position is behind the new load.
        if let Some(name) = &row.publication_name {
            let names: Vec<ferry_core::TableName> =
                tables.iter().map(|t| t.source.clone()).collect();
            setup::ensure_publication(&src_cfg, name, &spec.mapping, &names).await?;
        }
        let slot = row
            .slot_name
            .clone()
            .unwrap_or_else(|| setup::mirror_names(name, &spec).1);
        publication::drop_source_objects(&src_cfg, None, Some(&slot)).await?;
        let mut repl = ReplicationConnection::connect(&src_cfg).await?;
        let created = repl.create_slot(&slot, false).await?;
        self.catalog
            .begin_resync(row.id, created.consistent_point, &fresh)
            .await?;
        let row = self
            .catalog
            .mirror(name)
            .await?
            .ok_or_else(|| not_found(name))?;
        info!(mirror = %name, lsn = %created.consistent_point, "resync started");
        self.spawn(row, Some((repl, created.snapshot_name))).await
    }

    /// Stops every mirror task, keeping their state for the next start, and the monitor.
    pub async fn shutdown(&self) {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        for n in names {
            self.stop(&n).await;
        }
        self.monitor_stop.send_replace(true);
        let monitor = self
            .monitor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(m) = monitor {
            let _ = tokio::time::timeout(STOP_GRACE, m).await;
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

    /// The destination of a stored mirror.
    async fn destination_of(
        &self,
        row: &MirrorRow,
        spec: &MirrorSpec,
    ) -> Result<Arc<dyn Destination>, FlowError> {
        peers::destination(
            &self.peer_by_id(row.destination_peer).await?,
            &peers::MirrorRef {
                name: &row.name,
                id: Some(row.id),
                spec,
            },
        )
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
        if row.kind == MirrorKind::Query {
            return self.spawn_query(row).await;
        }
        let spec = stored_spec(&row)?;
        let source = peers::source_config(&self.peer_by_id(row.source_peer).await?)?;
        let destination = self.destination_of(&row, &spec).await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        let task = MirrorTask {
            catalog: self.catalog.clone(),
            row: row.clone(),
            spec,
            source,
            destination,
            stop: stop_rx,
            wake: wake.clone(),
            progress: self.progress_of(row.id),
        };
        self.register(&row.name, stop_tx, wake, task.run(snapshot));
        Ok(())
    }

    /// Runs a mirror's task, under the mirror's name (a task already there is told to stop).
    fn register(
        &self,
        name: &str,
        stop: watch::Sender<bool>,
        wake: Arc<Notify>,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let span = tracing::info_span!("mirror", mirror = %name);
        let task = tokio::spawn(task.instrument(span));
        let running = Running { stop, wake, task };
        if let Some(old) = self.lock().insert(name.to_owned(), running) {
            old.stop.send_replace(true);
        }
    }
}

/// Completes once `stop` turns true (or its sender is gone). Unlike `wait_for`, holds no
/// borrow of the value afterwards, so it can sit in a `select!` whose other arms await.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A stored mirror's spec.
fn stored_spec(row: &MirrorRow) -> Result<MirrorSpec, FlowError> {
    serde_json::from_value(row.spec.clone()).map_err(|e| {
        FlowError::internal(format!("mirror {}: stored spec unreadable: {e}", row.name))
    })
}

fn not_found(name: &str) -> FlowError {
    FlowError::new(
        ErrorKind::NotFound,
        "42704",
        format!("mirror \"{name}\" does not exist"),
    )
}

/// The destination's view of a table of the mirror, from the catalog.
pub(crate) fn table_spec(row: &TableRow) -> Result<TableSpec, FlowError> {
    let columns = serde_json::from_value(row.columns.clone()).map_err(|e| {
        FlowError::internal(format!(
            "table {}: stored columns unreadable: {e}",
            row.source
        ))
    })?;
    Ok(TableSpec {
        id: row.id,
        source: row.source.clone(),
        target: TargetName::new(
            row.destination_database.clone(),
            row.destination_table.clone(),
        ),
        columns,
    })
}

/// The columns a table mapping leaves out of a table.
pub(crate) fn excluded_columns(mapping: &Mapping, table: &ferry_core::TableName) -> Vec<String> {
    match mapping {
        Mapping::Tables(m) => m
            .iter()
            .find(|e| &e.source == table)
            .map(|e| e.exclude.clone())
            .unwrap_or_default(),
        Mapping::Schemas(_) => Vec::new(),
    }
}

/// Counts values the destination replaced, per table and column, and logs the first of each
/// table and column with its example key (never the value).
pub(crate) async fn record_substitutions(
    catalog: &Catalog,
    table: &ferry_core::TableName,
    replaced: &[ferry_core::destination::Substitution],
) -> Result<(), FlowError> {
    let mut by_table: std::collections::BTreeMap<i64, Vec<(String, i64, Option<String>)>> =
        Default::default();
    for s in replaced.iter().filter(|s| s.count > 0) {
        by_table.entry(s.table).or_default().push((
            s.column.clone(),
            s.count as i64,
            s.example_key.clone(),
        ));
    }
    for (id, columns) in by_table {
        for column in catalog.add_substitutions(id, &columns).await? {
            let example = columns
                .iter()
                .find(|c| c.0 == column)
                .and_then(|c| c.2.clone())
                .unwrap_or_default();
            warn!(
                table = %table,
                column = %column,
                example_key = %example,
                "a value the destination cannot hold was replaced by its stand-in (counted in the substitutions view)"
            );
        }
    }
    Ok(())
}
