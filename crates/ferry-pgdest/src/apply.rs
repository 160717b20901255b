//! Streamed changes into PostgreSQL: one destination transaction per batch, with the mirror's
//! position in it.
//!
//! The first write of a batch opens a transaction on the apply connection; later writes of
//! the same batch (a transaction too large for one chunk) go into the same one; the commit
//! writes the position into `_ferry.positions` and commits. So the destination is always at
//! a transaction boundary of the source, and a restart resumes from the stored position:
//! nothing is applied twice and nothing is skipped. Any error rolls the transaction back.
//!
//! Each table's changes are reduced to their net effect ([`crate::net`]) and applied through
//! its staging table ([`crate::stage`]). The first time the connection meets a table (or new
//! columns of it) it prepares it, inside the transaction: columns the source added are added
//! (with their types), columns the source dropped stop being written and lose their NOT NULL,
//! the primary key is built if the table has none yet (a table that joined without a load),
//! and the staging table is created.
//!
//! An error that concerns one table (a value it cannot hold, its table or a column gone, a
//! constraint of the destination's own) is returned for that table, so that the engine fails
//! it alone; losing the connection or the server concerns the destination.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_core::change::TableChanges;
use ferry_core::destination::{Apply, ApplyError, Summary, TableSpec};
use ferry_core::ident::{pg_ident, pg_qualified};
use ferry_core::pgtype::{PgType, PgTypeDef};
use ferry_core::{Error, ErrorKind, Lsn};
use futures::SinkExt;
use tokio_postgres::{Client, SimpleQueryMessage};
use tracing::{debug, info};

use crate::db::{server_version, table_oid, Db, MirrorId};
use crate::ddl::{add_key_sql, column_sql, column_type, create_types, has_key_index, key_names};
use crate::net;
use crate::recode::Recode;
use crate::stage::Stage;
use crate::state;

/// Bytes of staged rows gathered before they are sent.
const SEND_BYTES: usize = 1 << 20;

/// A table as the apply connection has prepared it.
struct Prepared {
    /// The carried columns it was prepared for.
    columns: Arc<[usize]>,
    /// The destination table it was prepared for (a table loaded again on its own is written
    /// to a fresh table until it is swapped in).
    target: ferry_core::destination::TargetName,
    stage: Stage,
    /// Whether the staging table holds rows from earlier in this transaction.
    used: bool,
}

/// Applying changes over one connection.
pub struct PgApply {
    db: Db,
    client: Client,
    mirror: MirrorId,
    merge: bool,
    in_transaction: bool,
    tables: HashMap<i64, Prepared>,
    /// Numbers staging tables, so that a new shape never meets an old table's name.
    generation: u64,
}

impl PgApply {
    pub(crate) async fn connect(db: Db, mirror: MirrorId) -> Result<PgApply, Error> {
        let client = db.connect("ferry apply").await?;
        state::ensure(&db, &client).await?;
        let merge = server_version(&db, &client).await? >= 150_000;
        Ok(PgApply {
            db,
            client,
            mirror,
            merge,
            in_transaction: false,
            tables: HashMap::new(),
            generation: 0,
        })
    }

    async fn begin(&mut self) -> Result<(), Error> {
        if !self.in_transaction {
            // The staged rows are matched to the destination's by key: by the key's index,
            // row by row. A plan that scans the destination table instead is never better for
            // a batch, and can be far worse: the planner thinks a table that a load just
            // filled, or that this transaction is filling, is as small as it last saw it, and
            // would rescan it once per staged row. Seq scans are therefore disfavoured (the
            // staging table, which has no index, is still scanned), and JIT, which the penalty's
            // cost would trigger, is off.
            self.client
                .batch_execute("BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL jit = off")
                .await
                .map_err(self.db.err())?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// Rolls back, and forgets what the transaction prepared.
    async fn rollback(&mut self) {
        if self.in_transaction {
            let _ = self.client.batch_execute("ROLLBACK").await;
        }
        self.in_transaction = false;
        self.tables.clear();
    }

    async fn write_table(&mut self, tc: &mut TableChanges) -> Result<(), Error> {
        let id = tc.table.id;
        let mut prepared = match self.tables.remove(&id) {
            Some(p) if p.columns == tc.columns && p.target == tc.table.target => p,
            old => self.prepare(tc, old).await?,
        };
        let result = self.apply_prepared(tc, &mut prepared).await;
        self.tables.insert(id, prepared);
        result
    }

    async fn apply_prepared(
        &mut self,
        tc: &mut TableChanges,
        prepared: &mut Prepared,
    ) -> Result<(), Error> {
        let net = net::reduce(tc, &prepared.stage.key_slots)
            .map_err(|e| internal(&tc.table, "its changes cannot be applied", e))?;
        if net.ends.is_empty() && !net.truncate {
            return Ok(());
        }
        let stage = &prepared.stage;
        if prepared.used {
            self.client
                .batch_execute(&format!("TRUNCATE {}", stage.name))
                .await
                .map_err(self.db.err())?;
        }
        prepared.used = true;

        let sink = self
            .client
            .copy_in::<_, Bytes>(stage.copy_sql().as_str())
            .await
            .map_err(self.db.err())?;
        futures::pin_mut!(sink);
        let mut buf = Vec::with_capacity(SEND_BYTES + 64 * 1024);
        Stage::header(&mut buf);
        let mut keep = Vec::new();
        let mut keep_slots: Vec<usize> = Vec::new();
        for end in &net.ends {
            stage
                .encode(tc, end, &mut keep, &mut buf)
                .map_err(|e| internal(&tc.table, "a value cannot be staged", e))?;
            for &k in &keep {
                if !keep_slots.contains(&k) {
                    keep_slots.push(k);
                }
            }
            keep.clear();
            if buf.len() >= SEND_BYTES {
                let chunk = Bytes::from(std::mem::take(&mut buf));
                sink.feed(chunk).await.map_err(self.db.err())?;
            }
        }
        Stage::trailer(&mut buf);
        sink.feed(Bytes::from(buf)).await.map_err(self.db.err())?;
        sink.as_mut().finish().await.map_err(self.db.err())?;
        keep_slots.sort_unstable();

        let sql = stage.apply_sql(crate::stage::Needs::of(&net), &keep_slots);
        let answer = self
            .client
            .simple_query(&sql)
            .await
            .map_err(self.db.err())?;
        let unresolved: i64 = answer
            .iter()
            .rev()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
                _ => None,
            })
            .unwrap_or(0);
        if unresolved > 0 {
            return Err(Error::new(
                ErrorKind::Misconfigured,
                "XX001",
                format!(
                    "{unresolved} updates of table {} left a large value unchanged, and the destination holds no row under their key to take it from",
                    tc.table.source
                ),
            )
            .with_hint(format!(
                "Rows were removed from {} on the destination; RESYNC MIRROR … TABLE {} reloads the table.",
                tc.table.target, tc.table.source
            )));
        }
        debug!(table = %tc.table.source, changes = tc.rows(), ends = net.ends.len(), "changes applied");
        Ok(())
    }

    /// Prepares a table for the carried columns of `tc` (see the module doc).
    async fn prepare(
        &mut self,
        tc: &TableChanges,
        old: Option<Prepared>,
    ) -> Result<Prepared, Error> {
        let spec: &TableSpec = &tc.table;
        let db = &self.db;
        let client = &self.client;
        if let Some(old) = old {
            client
                .batch_execute(&format!("DROP TABLE IF EXISTS {}", old.stage.name))
                .await
                .map_err(db.err())?;
        }
        let target = &spec.target;
        let quoted = pg_qualified(&target.namespace, &target.table);
        let oid = table_oid(db, client, target).await?.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                "42P01",
                format!("destination table {target} does not exist"),
            )
            .with_hint(format!(
                "It was dropped on the destination; RESYNC MIRROR … TABLE {} creates and loads it again.",
                spec.source
            ))
        })?;
        let carried: Vec<&ferry_core::ColumnSchema> =
            tc.columns.iter().map(|&i| &spec.columns[i]).collect();
        let rows = client
            .query(
                "SELECT a.attname::text, a.attnotnull, a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''
                 FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped",
                &[&oid],
            )
            .await
            .map_err(db.err())?;
        let existing: Vec<(String, bool, bool)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        for c in &carried {
            if existing.iter().any(|(n, _, _)| *n == c.name) {
                continue;
            }
            let ty = column_type(spec, c)?;
            create_types(db, client, ty).await?;
            client
                .batch_execute(&format!(
                    "ALTER TABLE {quoted} ADD COLUMN IF NOT EXISTS {}",
                    column_sql(&c.name, ty, false)
                ))
                .await
                .map_err(db.err())?;
            info!(table = %spec.source, column = %c.name, "column added on the destination");
        }
        for (name, not_null, has_default) in &existing {
            if *not_null && !has_default && !carried.iter().any(|c| c.name == *name) {
                client
                    .batch_execute(&format!(
                        "ALTER TABLE {quoted} ALTER COLUMN {} DROP NOT NULL",
                        pg_ident(name)
                    ))
                    .await
                    .map_err(db.err())?;
                info!(table = %spec.source, column = %name, "column no longer carried; its NOT NULL dropped on the destination");
            }
        }
        let keys = key_names(spec);
        if !keys.is_empty() && !has_key_index(db, client, oid, &keys).await? {
            client
                .batch_execute(&add_key_sql(target, &keys))
                .await
                .map_err(db.err())?;
            info!(table = %spec.source, "primary key built on the destination");
        }

        let types = ferry_postgres::types::exact_types(client, &db.cfg, oid).await?;
        let mut recode = Vec::with_capacity(carried.len());
        let mut stage_types = Vec::with_capacity(carried.len());
        for c in &carried {
            let ty = types.get(&c.name).ok_or_else(|| {
                Error::internal(format!("column {} vanished while it was prepared", c.name))
            })?;
            recode.push(Recode::plan(ty));
            stage_types.push(stage_type(ty));
        }
        let key_slots: Vec<usize> = spec
            .key_columns()
            .into_iter()
            .filter_map(|k| tc.columns.iter().position(|&i| i == k))
            .collect();
        if key_slots.len() != keys.len() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "0A000",
                format!(
                    "the changes of table {} do not carry its whole key",
                    spec.source
                ),
            ));
        }
        self.generation += 1;
        let stage = Stage {
            name: format!(
                "pg_temp.{}",
                pg_ident(&format!("_ferry_stage_{}_{}", spec.id, self.generation))
            ),
            target: quoted,
            columns: carried.iter().map(|c| c.name.clone()).collect(),
            key_slots,
            recode,
            merge: self.merge,
        };
        client
            .batch_execute(&stage.create_sql(&stage_types))
            .await
            .map_err(db.err())?;
        Ok(Prepared {
            columns: tc.columns.clone(),
            target: tc.table.target.clone(),
            stage,
            used: false,
        })
    }
}

/// A staging column's type: the column's, a domain replaced by its base type (a deletion's
/// placeholders must not meet the domain's constraints), with the column's collation.
fn stage_type(ty: &PgType) -> String {
    fn base(ty: &PgType, depth: usize) -> &str {
        match &ty.def {
            PgTypeDef::Domain { base: b, .. } if depth < ferry_core::pgtype::MAX_DEPTH => {
                base(b, depth + 1)
            }
            _ => &ty.sql,
        }
    }
    let mut s = base(ty, 0).to_owned();
    if let Some(c) = &ty.collation {
        s.push_str(" COLLATE ");
        s.push_str(c);
    }
    s
}

/// A broken invariant in a table's changes.
fn internal(table: &TableSpec, what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("table {}: {what}: {e}", table.source))
}

/// Whether an error concerns the table whose changes were being applied, or the destination.
fn attribute(table: i64, e: Error) -> ApplyError {
    let destination_wide = e.kind == ErrorKind::Transient
        || ["08", "57", "53", "58", "40", "25", "3D", "28", "55"]
            .iter()
            .any(|class| e.sqlstate.starts_with(class));
    if destination_wide {
        ApplyError::from(e)
    } else {
        ApplyError::for_table(table, e)
    }
}

#[async_trait]
impl Apply for PgApply {
    async fn write(&mut self, mut changes: Vec<TableChanges>) -> Result<Summary, ApplyError> {
        let mut summary = Summary::default();
        for tc in &mut changes {
            if tc.is_empty() {
                continue;
            }
            if let Err(e) = self.begin().await {
                self.rollback().await;
                return Err(e.into());
            }
            let id = tc.table.id;
            if let Err(e) = self.write_table(tc).await {
                self.rollback().await;
                return Err(attribute(id, e));
            }
            summary.rows += tc.rows() as u64;
        }
        Ok(summary)
    }

    async fn commit(&mut self, position: Lsn) -> Result<(), ApplyError> {
        let result = async {
            self.begin().await?;
            state::save_position(&self.db, &self.client, &self.mirror, position).await?;
            self.client
                .batch_execute("COMMIT")
                .await
                .map_err(self.db.err())
        }
        .await;
        match result {
            Ok(()) => {
                self.in_transaction = false;
                for t in self.tables.values_mut() {
                    t.used = false;
                }
                Ok(())
            }
            Err(e) => {
                self.rollback().await;
                Err(e.into())
            }
        }
    }
}
