//! Mirrors, their tables and their partitions in the catalog.

use ferry_core::mirror::{MirrorKind, MirrorState, PartitionState, TableState};
use ferry_core::{Lsn, TableName};
use tokio_postgres::Row;

use crate::{Catalog, CatalogError};

/// A mirror as stored.
#[derive(Debug, Clone)]
pub struct MirrorRow {
    pub id: i64,
    pub name: String,
    pub source_peer: i64,
    pub destination_peer: i64,
    pub spec: serde_json::Value,
    pub state: MirrorState,
    pub publication_name: Option<String>,
    pub created_publication: bool,
    pub slot_name: Option<String>,
    pub snapshot_lsn: Option<Lsn>,
    pub confirmed_lsn: Option<Lsn>,
    /// While tables load on their own: the slot is not confirmed past here.
    pub hold_lsn: Option<Lsn>,
    pub kind: MirrorKind,
}

/// A table of a mirror, to be stored.
#[derive(Debug, Clone)]
pub struct NewTable {
    pub source: TableName,
    pub source_oid: u32,
    pub destination_database: String,
    pub destination_table: String,
    pub columns: serde_json::Value,
    pub rows_estimated: i64,
}

/// A table of a mirror as stored.
#[derive(Debug, Clone)]
pub struct TableRow {
    pub id: i64,
    pub source: TableName,
    pub source_oid: u32,
    pub destination_database: String,
    pub destination_table: String,
    pub columns: serde_json::Value,
    pub state: TableState,
    pub rows_copied: i64,
    /// While a resync runs: the fresh table the load writes into, and its identity in the
    /// destination.
    pub load_table: Option<String>,
    pub load_table_uuid: Option<String>,
    /// For a table loaded on its own: the position of its snapshot; only transactions that
    /// commit from there on are applied to it.
    pub sync_lsn: Option<Lsn>,
}

impl TableRow {
    /// The table the initial load writes into: the fresh one during a resync.
    pub fn target_table(&self) -> &str {
        self.load_table
            .as_deref()
            .unwrap_or(&self.destination_table)
    }
}

/// One CTID range of a table's initial load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRow {
    pub table_id: i64,
    pub partition_no: i32,
    /// The relation read, quoted for PostgreSQL.
    pub relation: String,
    pub start_block: i64,
    pub end_block: Option<i64>,
    pub state: PartitionState,
    pub rows_copied: i64,
    pub attempts: i32,
}

const MIRROR_COLUMNS: &str =
    "id, name, source_peer, destination_peer, spec, state, publication_name, \
     created_publication, slot_name, snapshot_lsn::text, confirmed_lsn::text, hold_lsn::text, kind";

fn mirror_from_row(row: &Row) -> Result<MirrorRow, CatalogError> {
    let state: String = row.get(5);
    Ok(MirrorRow {
        id: row.get(0),
        name: row.get(1),
        source_peer: row.get(2),
        destination_peer: row.get(3),
        spec: row.get(4),
        state: MirrorState::parse(&state)
            .ok_or_else(|| CatalogError::Corrupt(format!("mirror has unknown state {state:?}")))?,
        publication_name: row.get(6),
        created_publication: row.get(7),
        slot_name: row.get(8),
        snapshot_lsn: lsn(row.get(9))?,
        confirmed_lsn: lsn(row.get(10))?,
        hold_lsn: lsn(row.get(11))?,
        kind: {
            let kind: String = row.get(12);
            MirrorKind::parse(&kind)
                .ok_or_else(|| CatalogError::Corrupt(format!("mirror has unknown kind {kind:?}")))?
        },
    })
}

/// An LSN as the catalog stores it (`pg_lsn` read as text).
fn lsn(text: Option<String>) -> Result<Option<Lsn>, CatalogError> {
    text.map(|t| {
        t.parse()
            .map_err(|e| CatalogError::Corrupt(format!("stored position: {e}")))
    })
    .transpose()
}

fn table_from_row(row: &Row) -> Result<TableRow, CatalogError> {
    let state: String = row.get(7);
    Ok(TableRow {
        id: row.get(0),
        source: TableName::new(row.get::<_, String>(1), row.get::<_, String>(2)),
        source_oid: row.get(3),
        destination_database: row.get(4),
        destination_table: row.get(5),
        columns: row.get(6),
        state: TableState::parse(&state)
            .ok_or_else(|| CatalogError::Corrupt(format!("table has unknown state {state:?}")))?,
        rows_copied: row.get(8),
        load_table: row.get(9),
        load_table_uuid: row.get(10),
        sync_lsn: lsn(row.get(11))?,
    })
}

impl Catalog {
    /// Stores a new mirror and its tables in state `setting_up`. Returns `None` (and stores
    /// nothing) when a mirror of that name exists.
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_mirror(
        &self,
        name: &str,
        source_peer: i64,
        destination_peer: i64,
        spec: &serde_json::Value,
        publication_name: &str,
        created_publication: bool,
        slot_name: &str,
        tables: &[NewTable],
    ) -> Result<Option<i64>, CatalogError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                "INSERT INTO ferry.mirrors (name, source_peer, destination_peer, spec, state,
                     publication_name, created_publication, slot_name)
                 VALUES ($1, $2, $3, $4, 'setting_up', $5, $6, $7)
                 ON CONFLICT (name) DO NOTHING RETURNING id",
                &[
                    &name,
                    &source_peer,
                    &destination_peer,
                    spec,
                    &publication_name,
                    &created_publication,
                    &slot_name,
                ],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let id: i64 = row.get(0);
        for t in tables {
            tx.execute(
                "INSERT INTO ferry.mirror_table (mirror_id, source_schema, source_table, source_oid,
                     destination_database, destination_table, columns, rows_estimated)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &id,
                    &t.source.schema,
                    &t.source.name,
                    &t.source_oid,
                    &t.destination_database,
                    &t.destination_table,
                    &t.columns,
                    &t.rows_estimated,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Some(id))
    }

    pub async fn mirror(&self, name: &str) -> Result<Option<MirrorRow>, CatalogError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {MIRROR_COLUMNS} FROM ferry.mirrors WHERE name = $1"),
                &[&name],
            )
            .await?;
        row.as_ref().map(mirror_from_row).transpose()
    }

    /// Mirrors that have work to do when the daemon starts.
    pub async fn active_mirrors(&self) -> Result<Vec<MirrorRow>, CatalogError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {MIRROR_COLUMNS} FROM ferry.mirrors WHERE state IN ('snapshot', 'running') ORDER BY id"),
                &[],
            )
            .await?;
        rows.iter().map(mirror_from_row).collect()
    }

    /// Sets a mirror's state; `error` (message, hint) is recorded, or cleared when `None`.
    pub async fn set_mirror_state(
        &self,
        id: i64,
        state: MirrorState,
        error: Option<(&str, Option<&str>)>,
    ) -> Result<(), CatalogError> {
        let client = self.client().await?;
        let (message, hint) = match error {
            Some((m, h)) => (Some(m), h),
            None => (None, None),
        };
        client
            .execute(
                "UPDATE ferry.mirrors SET state = $2, error = $3, error_hint = $4, updated_at = now(),
                     finished_at = CASE WHEN $2 = 'completed' THEN now() ELSE finished_at END,
                     snapshot_done_at = CASE WHEN $2 IN ('running', 'completed') AND snapshot_done_at IS NULL
                                             THEN now() ELSE snapshot_done_at END
                 WHERE id = $1",
                &[&id, &state.as_str(), &message, &hint],
            )
            .await?;
        Ok(())
    }

    /// Records that the slot exists, and the position of its snapshot.
    pub async fn set_mirror_snapshot(
        &self,
        id: i64,
        snapshot_lsn: Lsn,
    ) -> Result<(), CatalogError> {
        let client = self.client().await?;
        let snapshot_lsn = snapshot_lsn.to_string();
        client
            .execute(
                "UPDATE ferry.mirrors SET snapshot_lsn = $2::text::pg_lsn, state = 'snapshot',
                     started_at = coalesce(started_at, now()), updated_at = now()
                 WHERE id = $1",
                &[&id, &snapshot_lsn],
            )
            .await?;
        Ok(())
    }

    pub async fn delete_mirror(&self, id: i64) -> Result<(), CatalogError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM ferry.mirrors WHERE id = $1", &[&id])
            .await?;
        Ok(())
    }

    pub async fn mirror_tables(&self, mirror_id: i64) -> Result<Vec<TableRow>, CatalogError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, source_schema, source_table, source_oid, destination_database, destination_table,
                        columns, state, rows_copied, load_table, load_table_uuid, sync_lsn::text
                 FROM ferry.mirror_table WHERE mirror_id = $1 ORDER BY id",
                &[&mirror_id],
            )
            .await?;
        rows.iter().map(table_from_row).collect()
    }

    /// Sets a table's state; `error` is recorded, or cleared when `None`.
    pub async fn set_table_state(
        &self,
        table_id: i64,
        state: TableState,
        error: Option<&str>,
    ) -> Result<(), CatalogError> {
        let client = self.client().await?;
        let state = state.as_str();
        client
            .execute(
                "UPDATE ferry.mirror_table SET state = $2, error = $3,
                     started_at = CASE WHEN $2 = 'copying' THEN coalesce(started_at, now()) ELSE started_at END,
                     finished_at = CASE WHEN $2 = 'done' THEN now() ELSE NULL END,
                     -- Once a table is copied, its real row count replaces the planner's estimate.
                     rows_estimated = CASE WHEN $2 = 'done' THEN rows_copied ELSE rows_estimated END
                 WHERE id = $1",
                &[&table_id, &state, &error],
            )
            .await?;
        Ok(())
    }

    /// Records rows copied so far (done partitions plus those in flight).
    pub async fn set_table_progress(
        &self,
        table_id: i64,
        rows_copied: i64,
    ) -> Result<(), CatalogError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE ferry.mirror_table SET rows_copied = $2 WHERE id = $1",
                &[&table_id, &rows_copied],
            )
            .await?;
        Ok(())
    }

    /// Stores a table's partitions, unless it has some already; returns what is stored.
    pub async fn plan_partitions(
        &self,
        table_id: i64,
        partitions: &[(String, i64, Option<i64>)],
    ) -> Result<Vec<PartitionRow>, CatalogError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let existing: i64 = tx
            .query_one(
                "SELECT count(*) FROM ferry.mirror_partition WHERE table_id = $1",
                &[&table_id],
            )
            .await?
            .get(0);
        if existing == 0 {
            for (no, (relation, start, end)) in partitions.iter().enumerate() {
                tx.execute(
                    "INSERT INTO ferry.mirror_partition (table_id, partition_no, relation, start_block, end_block)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[&table_id, &(no as i32), relation, start, end],
                )
                .await?;
            }
        }
        tx.commit().await?;
        drop(client);
        self.partitions(table_id).await
    }

    pub async fn partitions(&self, table_id: i64) -> Result<Vec<PartitionRow>, CatalogError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT table_id, partition_no, relation, start_block, end_block, state, rows_copied, attempts
                 FROM ferry.mirror_partition WHERE table_id = $1 ORDER BY partition_no",
                &[&table_id],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let state: String = r.get(5);
                Ok(PartitionRow {
                    table_id: r.get(0),
                    partition_no: r.get(1),
                    relation: r.get(2),
                    start_block: r.get(3),
                    end_block: r.get(4),
                    state: PartitionState::parse(&state).ok_or_else(|| {
                        CatalogError::Corrupt(format!("partition has unknown state {state:?}"))
                    })?,
                    rows_copied: r.get(6),
                    attempts: r.get(7),
                })
            })
            .collect()
    }

    /// Marks a partition copied, with the snapshot it was read in.
    pub async fn finish_partition(
        &self,
        table_id: i64,
        partition_no: i32,
        rows: i64,
        snapshot: Option<&str>,
    ) -> Result<(), CatalogError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE ferry.mirror_partition SET state = 'done', rows_copied = $3, snapshot = $4, error = NULL,
                     attempts = attempts + 1, finished_at = now()
                 WHERE table_id = $1 AND partition_no = $2",
                &[&table_id, &partition_no, &rows, &snapshot],
            )
            .await?;
        Ok(())
    }

    /// Records a failed attempt at a partition; `definite` marks it failed for good.
    pub async fn fail_partition(
        &self,
        table_id: i64,
        partition_no: i32,
        error: &str,
        definite: bool,
    ) -> Result<(), CatalogError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE ferry.mirror_partition SET attempts = attempts + 1, error = $3,
                     state = CASE WHEN $4 THEN 'failed' ELSE state END
                 WHERE table_id = $1 AND partition_no = $2",
                &[&table_id, &partition_no, &error, &definite],
            )
            .await?;
        Ok(())
    }

    /// Puts failed partitions and tables of a mirror back to pending, to try them again.
    pub async fn reset_failed(&self, mirror_id: i64) -> Result<(), CatalogError> {
        let client = self.client().await?;
        client
            .batch_execute(&format!(
                "UPDATE ferry.mirror_partition SET state = 'pending' WHERE state = 'failed' AND table_id IN
                     (SELECT id FROM ferry.mirror_table WHERE mirror_id = {mirror_id});
                 UPDATE ferry.mirror_table SET state = 'pending', error = NULL
                     WHERE mirror_id = {mirror_id} AND state = 'failed';"
            ))
            .await?;
        Ok(())
    }
}

impl Catalog {
    /// Starts a resync in the catalog: every table is to be loaded again into its fresh table
    /// (`load_tables`: table id → (name, UUID, columns)), partitions are forgotten, and the
    /// mirror is back in `snapshot` at the new slot's position.
    pub async fn begin_resync(
        &self,
        mirror_id: i64,
        snapshot_lsn: Lsn,
        load_tables: &[(i64, String, String, serde_json::Value)],
    ) -> Result<(), CatalogError> {
        let snapshot_lsn = snapshot_lsn.to_string();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "DELETE FROM ferry.mirror_partition WHERE table_id IN
                 (SELECT id FROM ferry.mirror_table WHERE mirror_id = $1)",
            &[&mirror_id],
        )
        .await?;
        tx.execute(
            "DELETE FROM ferry.substitution WHERE table_id IN
                 (SELECT id FROM ferry.mirror_table WHERE mirror_id = $1)",
            &[&mirror_id],
        )
        .await?;
        for (id, name, uuid, columns) in load_tables {
            tx.execute(
                "UPDATE ferry.mirror_table SET load_table = $2, load_table_uuid = $3, columns = $4,
                     state = 'pending', rows_copied = 0, error = NULL, started_at = NULL, finished_at = NULL
                 WHERE id = $1",
                &[id, name, uuid, columns],
            )
            .await?;
        }
        tx.execute(
            "UPDATE ferry.mirrors SET state = 'snapshot', snapshot_lsn = $2::text::pg_lsn, confirmed_lsn = NULL, error = NULL,
                 error_hint = NULL, started_at = now(), snapshot_done_at = NULL, finished_at = NULL,
                 updated_at = now()
             WHERE id = $1",
            &[&mirror_id, &snapshot_lsn],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records that a table's fresh load has been swapped in.
    pub async fn end_resync_table(&self, table_id: i64) -> Result<(), CatalogError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE ferry.mirror_table SET load_table = NULL, load_table_uuid = NULL WHERE id = $1",
                &[&table_id],
            )
            .await?;
        Ok(())
    }
}

/// What one batch of streamed changes did, for the catalog.
#[derive(Debug, Clone)]
pub struct BatchRecord {
    pub rows: i64,
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
    /// Microseconds since 2000-01-01 UTC (PostgreSQL's epoch), as pgoutput gives times.
    pub started_micros: i64,
    pub finished_micros: i64,
    pub inserted: i64,
    pub updated: i64,
    pub deleted: i64,
    /// Source commit time of the batch's last transaction.
    pub last_commit_micros: Option<i64>,
}

/// Batches kept per mirror in `ferry.cdc_batch`.
const BATCHES_KEPT: i64 = 500;

const FROM_PG_MICROS: &str = "timestamptz '2000-01-01 00:00:00+00' + interval '1 microsecond' *";

impl Catalog {
    /// Records that everything before `confirmed` is in the destination, with the batch that
    /// got it there (if any). The caller confirms `confirmed` to the source only after this.
    pub async fn confirm(
        &self,
        mirror_id: i64,
        confirmed: Lsn,
        source_lsn: Lsn,
        batch: Option<&BatchRecord>,
    ) -> Result<(), CatalogError> {
        let (confirmed, source_lsn) = (confirmed.to_string(), source_lsn.to_string());
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        match batch {
            None => {
                tx.execute(
                    "UPDATE ferry.mirrors SET confirmed_lsn = $2::text::pg_lsn, source_lsn = $3::text::pg_lsn,
                         position_at = now()
                     WHERE id = $1",
                    &[&mirror_id, &confirmed, &source_lsn],
                )
                .await?;
            }
            Some(b) => {
                tx.execute(
                    &format!(
                        "UPDATE ferry.mirrors SET confirmed_lsn = $2::text::pg_lsn, source_lsn = $3::text::pg_lsn,
                             position_at = now(), rows_inserted = rows_inserted + $4, rows_updated = rows_updated + $5,
                             rows_deleted = rows_deleted + $6, last_batch_at = {FROM_PG_MICROS} $7::int8,
                             last_commit_at = coalesce({FROM_PG_MICROS} $8::int8, last_commit_at)
                         WHERE id = $1"
                    ),
                    &[
                        &mirror_id,
                        &confirmed,
                        &source_lsn,
                        &b.inserted,
                        &b.updated,
                        &b.deleted,
                        &b.finished_micros,
                        &b.last_commit_micros,
                    ],
                )
                .await?;
                tx.execute(
                    &format!(
                        "INSERT INTO ferry.cdc_batch (mirror_id, batch_id, rows, first_lsn, last_lsn, started_at, finished_at)
                         SELECT $1, coalesce(max(batch_id), 0) + 1, $2, $3::text::pg_lsn, $4::text::pg_lsn,
                                {FROM_PG_MICROS} $5::int8, {FROM_PG_MICROS} $6::int8
                         FROM ferry.cdc_batch WHERE mirror_id = $1"
                    ),
                    &[&mirror_id, &b.rows, &b.first_lsn.to_string(), &b.last_lsn.to_string(), &b.started_micros, &b.finished_micros],
                )
                .await?;
                tx.execute(
                    "DELETE FROM ferry.cdc_batch WHERE mirror_id = $1 AND batch_id <=
                         (SELECT max(batch_id) FROM ferry.cdc_batch WHERE mirror_id = $1) - $2",
                    &[&mirror_id, &BATCHES_KEPT],
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Replaces a table's stored columns (after the source added one).
    pub async fn set_table_columns(
        &self,
        table_id: i64,
        columns: &serde_json::Value,
    ) -> Result<(), CatalogError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE ferry.mirror_table SET columns = $2 WHERE id = $1",
                &[&table_id, columns],
            )
            .await?;
        Ok(())
    }
}

impl Catalog {
    /// Whether some ranges of a mirror were read in a snapshot other than the slot's (after a
    /// restart or a pause), so that the slot's changes are needed to reconcile them.
    pub async fn has_fresh_snapshot_partitions(
        &self,
        mirror_id: i64,
    ) -> Result<bool, CatalogError> {
        let client = self.client().await?;
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM ferry.mirror_partition p JOIN ferry.mirror_table t ON t.id = p.table_id
                 WHERE t.mirror_id = $1 AND p.state = 'done' AND p.snapshot IS NULL",
                &[&mirror_id],
            )
            .await?
            .get(0);
        Ok(n > 0)
    }
}

impl Catalog {
    /// Adds a table to a running mirror (one that entered a mapped schema) in `state` (with
    /// `error`), or puts an existing row of that name (a table dropped and created again) in
    /// that state. Returns the stored row.
    pub async fn add_table(
        &self,
        mirror_id: i64,
        t: &NewTable,
        state: TableState,
        error: Option<&str>,
    ) -> Result<TableRow, CatalogError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO ferry.mirror_table (mirror_id, source_schema, source_table, source_oid,
                     destination_database, destination_table, columns, state, error, rows_estimated)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (mirror_id, source_schema, source_table) DO UPDATE SET
                     source_oid = excluded.source_oid, columns = excluded.columns,
                     state = excluded.state, error = excluded.error, sync_lsn = NULL,
                     rows_estimated = excluded.rows_estimated",
                &[
                    &mirror_id,
                    &t.source.schema,
                    &t.source.name,
                    &t.source_oid,
                    &t.destination_database,
                    &t.destination_table,
                    &t.columns,
                    &state.as_str(),
                    &error,
                    &t.rows_estimated,
                ],
            )
            .await?;
        drop(client);
        self.mirror_tables(mirror_id)
            .await?
            .into_iter()
            .find(|r| r.source == t.source)
            .ok_or_else(|| {
                CatalogError::Corrupt(format!("table {} vanished after it was added", t.source))
            })
    }
}

impl Catalog {
    /// Puts tables of a mirror up for loading on their own (`syncing`), forgetting any error.
    pub async fn request_table_syncs(
        &self,
        mirror_id: i64,
        table_ids: &[i64],
    ) -> Result<(), CatalogError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE ferry.mirror_table SET state = 'syncing', error = NULL, sync_lsn = NULL,
                     started_at = NULL, finished_at = NULL
                 WHERE mirror_id = $1 AND id = ANY($2)",
                &[&mirror_id, &table_ids],
            )
            .await?;
        Ok(())
    }

    /// Sets or clears the position the slot is held at while tables load on their own.
    pub async fn set_hold(&self, mirror_id: i64, hold: Option<Lsn>) -> Result<(), CatalogError> {
        let client = self.client().await?;
        let hold = hold.map(|h| h.to_string());
        client
            .execute(
                "UPDATE ferry.mirrors SET hold_lsn = $2::text::pg_lsn WHERE id = $1",
                &[&mirror_id, &hold],
            )
            .await?;
        Ok(())
    }

    /// A table's own load starts: its snapshot's position, the fresh table it loads into
    /// (with its identity) and its current columns; its earlier ranges are forgotten.
    #[allow(clippy::too_many_arguments)]
    pub async fn begin_table_sync(
        &self,
        table_id: i64,
        source_oid: u32,
        sync_lsn: Lsn,
        load_table: &str,
        load_table_token: &str,
        columns: &serde_json::Value,
        rows_estimated: i64,
    ) -> Result<(), CatalogError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "DELETE FROM ferry.mirror_partition WHERE table_id = $1",
            &[&table_id],
        )
        .await?;
        tx.execute(
            "DELETE FROM ferry.substitution WHERE table_id = $1",
            &[&table_id],
        )
        .await?;
        tx.execute(
            "UPDATE ferry.mirror_table SET sync_lsn = $2::text::pg_lsn, load_table = $3,
                 load_table_uuid = $4, columns = $5, rows_copied = 0, rows_estimated = $6,
                 source_oid = $7, started_at = now(), finished_at = NULL, error = NULL
             WHERE id = $1",
            &[
                &table_id,
                &sync_lsn.to_string(),
                &load_table,
                &load_table_token,
                columns,
                &rows_estimated,
                &source_oid,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A table loaded on its own has joined the stream: it is `done` in its live table.
    pub async fn end_table_sync(&self, table_id: i64) -> Result<(), CatalogError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE ferry.mirror_table SET state = 'done', sync_lsn = NULL, load_table = NULL,
                     load_table_uuid = NULL, error = NULL, finished_at = now()
                 WHERE id = $1",
                &[&table_id],
            )
            .await?;
        Ok(())
    }
}

impl Catalog {
    /// Adds values replaced in a table's columns (`(column, count, example key)`); returns the
    /// columns that had none before, whose example is worth a log line.
    pub async fn add_substitutions(
        &self,
        table_id: i64,
        replaced: &[(String, i64, Option<String>)],
    ) -> Result<Vec<String>, CatalogError> {
        let client = self.client().await?;
        let mut first = Vec::new();
        for (column, count, example) in replaced {
            let row = client
                .query_one(
                    "INSERT INTO ferry.substitution (table_id, column_name, count, example_key)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (table_id, column_name) DO UPDATE
                         SET count = ferry.substitution.count + excluded.count, last_at = now()
                     RETURNING (xmax = 0)",
                    &[&table_id, column, count, example],
                )
                .await?;
            if row.get::<_, bool>(0) {
                first.push(column.clone());
            }
        }
        Ok(first)
    }

    /// Forgets a table's replaced values (it is loaded again from scratch).
    pub async fn clear_substitutions(&self, table_id: i64) -> Result<(), CatalogError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM ferry.substitution WHERE table_id = $1",
                &[&table_id],
            )
            .await?;
        Ok(())
    }
}

impl Catalog {
    /// `ALTER MIRROR … ADD TABLE MAPPING`: the mirror's new statement, and its new tables to be
    /// loaded on their own (`syncing`), recorded with the change in one transaction. Returns
    /// the new tables' ids.
    pub async fn add_tables(
        &self,
        mirror_id: i64,
        spec: &serde_json::Value,
        tables: &[NewTable],
        change: &str,
    ) -> Result<Vec<i64>, CatalogError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut ids = Vec::with_capacity(tables.len());
        for t in tables {
            let row = tx
                .query_one(
                    "INSERT INTO ferry.mirror_table (mirror_id, source_schema, source_table, source_oid,
                         destination_database, destination_table, columns, state, rows_estimated)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 'syncing', $8) RETURNING id",
                    &[
                        &mirror_id,
                        &t.source.schema,
                        &t.source.name,
                        &t.source_oid,
                        &t.destination_database,
                        &t.destination_table,
                        &t.columns,
                        &t.rows_estimated,
                    ],
                )
                .await?;
            ids.push(row.get(0));
        }
        record_change(&tx, mirror_id, spec, change).await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// `ALTER MIRROR … DROP TABLE MAPPING`: the tables leave the mirror (their destination
    /// tables stay), recorded with the change in one transaction.
    pub async fn remove_tables(
        &self,
        mirror_id: i64,
        spec: &serde_json::Value,
        table_ids: &[i64],
        change: &str,
    ) -> Result<(), CatalogError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "DELETE FROM ferry.mirror_table WHERE mirror_id = $1 AND id = ANY($2)",
            &[&mirror_id, &table_ids],
        )
        .await?;
        record_change(&tx, mirror_id, spec, change).await?;
        tx.commit().await?;
        Ok(())
    }

    /// `ALTER MIRROR … SET`: the mirror's new statement, recorded with the change.
    pub async fn change_spec(
        &self,
        mirror_id: i64,
        spec: &serde_json::Value,
        change: &str,
    ) -> Result<(), CatalogError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        record_change(&tx, mirror_id, spec, change).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records the leaves a partitioned table was loaded with.
    pub async fn set_table_leaves(
        &self,
        table_id: i64,
        leaves: &[String],
    ) -> Result<(), CatalogError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE ferry.mirror_table SET leaves = $2 WHERE id = $1",
                &[&table_id, &leaves],
            )
            .await?;
        Ok(())
    }

    /// The leaves a partitioned table was loaded with (`None` for a plain table, or one not
    /// loaded since they were recorded).
    pub async fn table_leaves(&self, table_id: i64) -> Result<Option<Vec<String>>, CatalogError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT leaves FROM ferry.mirror_table WHERE id = $1",
                &[&table_id],
            )
            .await?;
        Ok(row.get(0))
    }
}

async fn record_change(
    tx: &tokio_postgres::Transaction<'_>,
    mirror_id: i64,
    spec: &serde_json::Value,
    change: &str,
) -> Result<(), CatalogError> {
    tx.execute(
        "UPDATE ferry.mirrors SET spec = $2, updated_at = now() WHERE id = $1",
        &[&mirror_id, spec],
    )
    .await?;
    tx.execute(
        "INSERT INTO ferry.mirror_change (mirror_id, change) VALUES ($1, $2)",
        &[&mirror_id, &change],
    )
    .await?;
    Ok(())
}
