//! Query mirrors in the catalog: the watermark, runs and their partitions
//! (`migrations/0008_qrep.sql` explains the tables; the engine's `qrep` module the algorithm).

use ferry_core::mirror::PartitionState;
use ferry_core::qrep::WatermarkKind;
use tokio_postgres::Row;

use crate::{Catalog, CatalogError, NewTable};

/// Runs kept per mirror in `ferry.qrep_run`.
const RUNS_KEPT: i64 = 1000;

/// A query mirror's own state.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryMirrorRow {
    pub mirror_id: i64,
    /// The id of its destination table's row in `ferry.mirror_table`.
    pub table_id: i64,
    /// `None` for a query read whole, once.
    pub watermark_kind: Option<WatermarkKind>,
    /// Everything up to here is copied; `None` before the first run.
    pub watermark: Option<i64>,
    pub runs: i64,
    /// Seconds until the next run is due (0 when it is due now or was never set).
    pub next_run_in: f64,
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryRunRow {
    /// Unique in the catalog, never reused: the destination tells the run's rows apart by it.
    pub id: i64,
    pub run_no: i64,
    /// The range: after this value (none: from the start) through that one (none: a query
    /// read whole).
    pub after: Option<i64>,
    pub through: Option<i64>,
    pub through_text: Option<String>,
    /// The snapshot the partitions were first read in.
    pub snapshot: Option<String>,
    /// Overwrite mode: the identity of the fresh table the run loads.
    pub load_token: Option<String>,
    pub failed: bool,
}

/// A partition of a run as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryPartitionRow {
    pub run_id: i64,
    pub partition_no: i32,
    /// What it reads, as the engine wrote it.
    pub bounds: serde_json::Value,
    pub state: PartitionState,
    pub rows: i64,
    pub attempts: i32,
}

/// A run about to start.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// The range's ends, as integers and as PostgreSQL prints them.
    pub after: Option<(i64, String)>,
    pub through: Option<(i64, String)>,
    pub snapshot: Option<String>,
    pub load_token: Option<String>,
    pub partitions: Vec<serde_json::Value>,
}

fn run_from_row(r: &Row) -> QueryRunRow {
    QueryRunRow {
        id: r.get(0),
        run_no: r.get(1),
        after: r.get(2),
        through: r.get(3),
        through_text: r.get(4),
        snapshot: r.get(5),
        failed: r.get::<_, String>(6) == "failed",
        load_token: r.get(7),
    }
}

const RUN_COLUMNS: &str =
    "id, run_no, after_value, through_value, through_text, snapshot, state, load_token";

impl Catalog {
    /// Stores a new query mirror (state `setting_up`, kind `query`) with its destination
    /// table's row (state `pending`). `None` (nothing stored) when a mirror of that name
    /// exists. Returns the mirror's and the table row's ids.
    pub async fn insert_query_mirror(
        &self,
        name: &str,
        source_peer: i64,
        destination_peer: i64,
        spec: &serde_json::Value,
        table: &NewTable,
        watermark_kind: Option<WatermarkKind>,
    ) -> Result<Option<(i64, i64)>, CatalogError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(row) = tx
            .query_opt(
                "INSERT INTO ferry.mirrors (name, source_peer, destination_peer, spec, state, kind, started_at)
                 VALUES ($1, $2, $3, $4, 'setting_up', 'query', now())
                 ON CONFLICT (name) DO NOTHING RETURNING id",
                &[&name, &source_peer, &destination_peer, spec],
            )
            .await?
        else {
            return Ok(None);
        };
        let id: i64 = row.get(0);
        let table_id: i64 = tx
            .query_one(
                "INSERT INTO ferry.mirror_table (mirror_id, source_schema, source_table, source_oid,
                     destination_database, destination_table, columns, rows_estimated)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                &[
                    &id,
                    &table.source.schema,
                    &table.source.name,
                    &table.source_oid,
                    &table.destination_database,
                    &table.destination_table,
                    &table.columns,
                    &table.rows_estimated,
                ],
            )
            .await?
            .get(0);
        tx.execute(
            "INSERT INTO ferry.qrep_mirror (mirror_id, watermark_kind) VALUES ($1, $2)",
            &[&id, &watermark_kind.map(WatermarkKind::as_str)],
        )
        .await?;
        tx.commit().await?;
        Ok(Some((id, table_id)))
    }

    /// A query mirror's own state.
    pub async fn query_mirror(&self, mirror_id: i64) -> Result<QueryMirrorRow, CatalogError> {
        let client = self.client().await?;
        let r = client
            .query_opt(
                "SELECT q.mirror_id, t.id, q.watermark_kind, q.watermark, q.runs,
                        coalesce(greatest(extract(epoch FROM q.next_run_at - now()), 0), 0)::float8
                 FROM ferry.qrep_mirror q JOIN ferry.mirror_table t ON t.mirror_id = q.mirror_id
                 WHERE q.mirror_id = $1",
                &[&mirror_id],
            )
            .await?
            .ok_or_else(|| {
                CatalogError::Corrupt(format!("query mirror {mirror_id} has no state"))
            })?;
        let kind: Option<String> = r.get(2);
        let watermark_kind =
            match kind {
                None => None,
                Some(k) => Some(WatermarkKind::parse(&k).ok_or_else(|| {
                    CatalogError::Corrupt(format!("unknown watermark kind {k:?}"))
                })?),
            };
        Ok(QueryMirrorRow {
            mirror_id: r.get(0),
            table_id: r.get(1),
            watermark_kind,
            watermark: r.get(3),
            runs: r.get(4),
            next_run_in: r.get(5),
        })
    }

    /// The mirror's unfinished run (one that a crash or a failure interrupted), with its
    /// partitions.
    pub async fn open_run(
        &self,
        mirror_id: i64,
    ) -> Result<Option<(QueryRunRow, Vec<QueryPartitionRow>)>, CatalogError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM ferry.qrep_run
                     WHERE mirror_id = $1 AND state <> 'done' ORDER BY run_no DESC LIMIT 1"
                ),
                &[&mirror_id],
            )
            .await?;
        drop(client);
        match row {
            None => Ok(None),
            Some(r) => {
                let run = run_from_row(&r);
                let partitions = self.run_partitions(run.id).await?;
                Ok(Some((run, partitions)))
            }
        }
    }

    async fn run_partitions(&self, run_id: i64) -> Result<Vec<QueryPartitionRow>, CatalogError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT run_id, partition_no, bounds, state, rows, attempts
                 FROM ferry.qrep_partition WHERE run_id = $1 ORDER BY partition_no",
                &[&run_id],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let state: String = r.get(3);
                Ok(QueryPartitionRow {
                    run_id: r.get(0),
                    partition_no: r.get(1),
                    bounds: r.get(2),
                    state: PartitionState::parse(&state).ok_or_else(|| {
                        CatalogError::Corrupt(format!("partition has unknown state {state:?}"))
                    })?,
                    rows: r.get(4),
                    attempts: r.get(5),
                })
            })
            .collect()
    }

    /// Starts a run: the run and its partitions, in one transaction.
    pub async fn begin_run(
        &self,
        mirror_id: i64,
        run: &NewRun,
    ) -> Result<(QueryRunRow, Vec<QueryPartitionRow>), CatalogError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let (after, after_text) = run.after.clone().unzip();
        let (through, through_text) = run.through.clone().unzip();
        let r = tx
            .query_one(
                &format!(
                    "INSERT INTO ferry.qrep_run (mirror_id, run_no, after_value, after_text,
                         through_value, through_text, snapshot, load_token)
                     SELECT $1, q.runs + 1, $2, $3, $4, $5, $6, $7
                     FROM ferry.qrep_mirror q WHERE q.mirror_id = $1
                     RETURNING {RUN_COLUMNS}"
                ),
                &[
                    &mirror_id,
                    &after,
                    &after_text,
                    &through,
                    &through_text,
                    &run.snapshot,
                    &run.load_token,
                ],
            )
            .await?;
        let stored = run_from_row(&r);
        tx.execute(
            "UPDATE ferry.qrep_mirror SET runs = runs + 1 WHERE mirror_id = $1",
            &[&mirror_id],
        )
        .await?;
        for (no, bounds) in run.partitions.iter().enumerate() {
            tx.execute(
                "INSERT INTO ferry.qrep_partition (run_id, partition_no, bounds) VALUES ($1, $2, $3)",
                &[&stored.id, &(no as i32), bounds],
            )
            .await?;
        }
        tx.commit().await?;
        drop(client);
        let partitions = self.run_partitions(stored.id).await?;
        Ok((stored, partitions))
    }

    /// An attempt at a partition starts: counted before anything is written, so that one a
    /// crash interrupts counts too. Returns the attempts before this one.
    pub async fn begin_query_partition(
        &self,
        run_id: i64,
        partition_no: i32,
    ) -> Result<i32, CatalogError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "UPDATE ferry.qrep_partition SET attempts = attempts + 1
                 WHERE run_id = $1 AND partition_no = $2 RETURNING attempts - 1",
                &[&run_id, &partition_no],
            )
            .await?;
        Ok(row.get(0))
    }

    /// A partition's rows are durably in the destination.
    pub async fn finish_query_partition(
        &self,
        run_id: i64,
        partition_no: i32,
        rows: i64,
    ) -> Result<(), CatalogError> {
        let client = self.client().await?;
        client
            .execute(
                "WITH p AS (
                     UPDATE ferry.qrep_partition SET state = 'done', rows = $3, error = NULL,
                         finished_at = now()
                     WHERE run_id = $1 AND partition_no = $2 AND state <> 'done'
                     RETURNING rows)
                 UPDATE ferry.qrep_run SET rows = rows + (SELECT coalesce(sum(rows), 0) FROM p)
                 WHERE id = $1",
                &[&run_id, &partition_no, &rows],
            )
            .await?;
        Ok(())
    }

    /// Records a failed attempt at a partition; `definite` marks it (and its run) failed.
    pub async fn fail_query_partition(
        &self,
        run_id: i64,
        partition_no: i32,
        error: &str,
        definite: bool,
    ) -> Result<(), CatalogError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "UPDATE ferry.qrep_partition SET error = $3,
                 state = CASE WHEN $4 THEN 'failed' ELSE state END
             WHERE run_id = $1 AND partition_no = $2",
            &[&run_id, &partition_no, &error, &definite],
        )
        .await?;
        if definite {
            tx.execute(
                "UPDATE ferry.qrep_run SET state = 'failed', error = $2 WHERE id = $1",
                &[&run_id, &error],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Puts a failed run back to work: its failed partitions are tried again.
    pub async fn retry_failed_run(&self, mirror_id: i64) -> Result<(), CatalogError> {
        let client = self.client().await?;
        client
            .batch_execute(&format!(
                "UPDATE ferry.qrep_partition SET state = 'pending' WHERE state = 'failed' AND run_id IN
                     (SELECT id FROM ferry.qrep_run WHERE mirror_id = {mirror_id} AND state = 'failed');
                 UPDATE ferry.qrep_run SET state = 'running', error = NULL
                     WHERE mirror_id = {mirror_id} AND state = 'failed';
                 UPDATE ferry.mirror_table SET state = 'done', error = NULL
                     WHERE mirror_id = {mirror_id} AND state = 'failed';"
            ))
            .await?;
        Ok(())
    }

    /// Ends a run whose every partition is done: the watermark moves to the run's end (when
    /// the run has one), in the same transaction; the next run is due in `next_in` seconds.
    pub async fn finish_run(
        &self,
        mirror: &QueryMirrorRow,
        run: &QueryRunRow,
        next_in: f64,
    ) -> Result<i64, CatalogError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let rows: i64 = tx
            .query_one(
                "UPDATE ferry.qrep_run SET state = 'done', finished_at = now(), error = NULL,
                     rows = (SELECT coalesce(sum(rows), 0) FROM ferry.qrep_partition WHERE run_id = $1)
                 WHERE id = $1 RETURNING rows",
                &[&run.id],
            )
            .await?
            .get(0);
        // A run asked for while this one ran (EXECUTE MIRROR) stays due.
        tx.execute(
            "UPDATE ferry.qrep_mirror SET
                 watermark = coalesce($2, watermark), watermark_text = coalesce($3, watermark_text),
                 last_run_at = now(), last_run_rows = $4,
                 next_run_at = CASE
                     WHEN next_run_at > (SELECT started_at FROM ferry.qrep_run WHERE id = $6)
                          AND next_run_at <= now() THEN next_run_at
                     ELSE now() + $5 * interval '1 second' END
             WHERE mirror_id = $1",
            &[
                &mirror.mirror_id,
                &run.through,
                &run.through_text,
                &rows,
                &next_in,
                &run.id,
            ],
        )
        .await?;
        tx.execute(
            "UPDATE ferry.mirror_table SET rows_copied = rows_copied + $2, state = 'done',
                 error = NULL, finished_at = now(), rows_estimated = rows_copied + $2
             WHERE id = $1",
            &[&mirror.table_id, &rows],
        )
        .await?;
        tx.execute(
            "DELETE FROM ferry.qrep_run WHERE mirror_id = $1 AND run_no <= $2",
            &[&mirror.mirror_id, &(run.run_no - RUNS_KEPT)],
        )
        .await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// Nothing was new: the next run is due in `secs` seconds.
    pub async fn schedule_run(&self, mirror_id: i64, secs: f64) -> Result<(), CatalogError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE ferry.qrep_mirror SET next_run_at = now() + $2 * interval '1 second'
                 WHERE mirror_id = $1",
                &[&mirror_id, &secs],
            )
            .await?;
        Ok(())
    }

    /// Makes the mirror's next run due now (`EXECUTE MIRROR`).
    pub async fn run_now(&self, mirror_id: i64) -> Result<(), CatalogError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE ferry.qrep_mirror SET next_run_at = now() WHERE mirror_id = $1",
                &[&mirror_id],
            )
            .await?;
        Ok(())
    }
}
