//! What the daemon's monitor records: each mirror's figures, per-table streaming figures, and
//! warnings with a start and an end (migration 0009 explains the tables).

use std::time::SystemTime;

use ferry_core::mirror::MirrorState;
use ferry_core::Lsn;
use ferry_postgres::publication::SlotStatus;

use crate::{Catalog, CatalogError};

/// A mirror the monitor looks at.
#[derive(Debug, Clone)]
pub struct MonitoredMirror {
    pub id: i64,
    pub name: String,
    pub state: MirrorState,
    pub source_peer: i64,
    pub slot_name: Option<String>,
    pub spec: serde_json::Value,
}

/// The source's view of a mirror's slot, as sampled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotSample {
    /// `pg_current_wal_lsn()`.
    pub source_lsn: Lsn,
    /// `None` when the slot does not exist.
    pub slot: Option<SlotStatus>,
}

/// What the stream of a mirror knows, as the monitor writes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamFigures {
    /// Whether the stream has run since the daemon started (else the fields below are
    /// unknown, and what is stored stays).
    pub known: bool,
    pub applied: Option<Lsn>,
    pub pending_since: Option<SystemTime>,
    pub caught_up_at: Option<SystemTime>,
    pub streaming: bool,
    /// Rows applied per second over the last minute.
    pub rows_per_second: f64,
}

/// One table's streaming figures.
#[derive(Debug, Clone, PartialEq)]
pub struct TableFigures {
    pub table_id: i64,
    /// Rows applied per second over the last minute.
    pub rows_per_second: f64,
    /// Rows applied since the last sample (added to the table's total).
    pub rows_added: u64,
    pub pending_since: Option<SystemTime>,
}

/// A condition a mirror is warned about while it lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub kind: &'static str,
    pub message: String,
    pub hint: Option<String>,
}

/// Ended warnings kept per mirror.
const ENDED_WARNINGS_KEPT: i64 = 100;

fn micros(t: Option<SystemTime>) -> Option<i64> {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_micros() as i64)
}

const FROM_UNIX_MICROS: &str = "to_timestamp(0) + interval '1 microsecond' *";

fn lsn_text(l: Option<Lsn>) -> Option<String> {
    l.map(|l| l.to_string())
}

impl Catalog {
    /// Every mirror with a slot that may hold WAL, or that had one (to end its warnings).
    pub async fn monitored_mirrors(&self) -> Result<Vec<MonitoredMirror>, CatalogError> {
        let client = self.client().await?;
        let rows = client
            .query(
                // A query mirror has no slot to watch (its runs are in qrep_runs).
                "SELECT id, name, state, source_peer, slot_name, spec FROM ferry.mirrors
                 WHERE kind = 'cdc' ORDER BY id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let state: String = r.get(2);
                Ok(MonitoredMirror {
                    id: r.get(0),
                    name: r.get(1),
                    state: MirrorState::parse(&state).ok_or_else(|| {
                        CatalogError::Corrupt(format!("mirror has unknown state {state:?}"))
                    })?,
                    source_peer: r.get(3),
                    slot_name: r.get(4),
                    spec: r.get(5),
                })
            })
            .collect()
    }

    /// Records a mirror's figures. `slot` is `Err` with the reason when the source could not
    /// be read (the last figures read stay); the stream's figures are kept when unknown.
    pub async fn record_figures(
        &self,
        mirror_id: i64,
        slot: Result<&SlotSample, &str>,
        stream: &StreamFigures,
        tables: &[TableFigures],
    ) -> Result<(), CatalogError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO ferry.mirror_monitor (mirror_id, sampled_at) VALUES ($1, now())
             ON CONFLICT (mirror_id) DO UPDATE SET sampled_at = now()",
            &[&mirror_id],
        )
        .await?;
        match slot {
            Ok(s) => {
                let slot = s.slot.as_ref();
                tx.execute(
                    "UPDATE ferry.mirror_monitor SET source_checked_at = now(), source_error = NULL,
                         source_lsn = $2::text::pg_lsn, slot_restart_lsn = $3::text::pg_lsn,
                         slot_confirmed_lsn = $4::text::pg_lsn, slot_wal_status = $5,
                         slot_safe_wal_bytes = $6, slot_active = $7
                     WHERE mirror_id = $1",
                    &[
                        &mirror_id,
                        &s.source_lsn.to_string(),
                        &lsn_text(slot.and_then(|s| s.restart_lsn)),
                        &lsn_text(slot.and_then(|s| s.confirmed_flush_lsn)),
                        &slot.and_then(|s| s.wal_status.clone()),
                        &slot.and_then(|s| s.safe_wal_size),
                        &slot.map(|s| s.active),
                    ],
                )
                .await?;
            }
            Err(reason) => {
                tx.execute(
                    "UPDATE ferry.mirror_monitor SET source_error = $2 WHERE mirror_id = $1",
                    &[&mirror_id, &reason],
                )
                .await?;
            }
        }
        if stream.known {
            tx.execute(
                &format!(
                    "UPDATE ferry.mirror_monitor SET applied_lsn = $2::text::pg_lsn,
                         pending_since = {FROM_UNIX_MICROS} $3::int8,
                         caught_up_at = coalesce({FROM_UNIX_MICROS} $4::int8, caught_up_at),
                         streaming = $5, stream_rows_per_second = $6
                     WHERE mirror_id = $1"
                ),
                &[
                    &mirror_id,
                    &lsn_text(stream.applied),
                    &micros(stream.pending_since),
                    &micros(stream.caught_up_at),
                    &stream.streaming,
                    &stream.rows_per_second,
                ],
            )
            .await?;
        } else {
            // Whatever ran before, the stream does not run in this daemon now.
            tx.execute(
                "UPDATE ferry.mirror_monitor SET streaming = false, stream_rows_per_second = 0,
                     pending_since = NULL
                 WHERE mirror_id = $1",
                &[&mirror_id],
            )
            .await?;
        }
        let ids: Vec<i64> = tables.iter().map(|t| t.table_id).collect();
        let rates: Vec<f64> = tables.iter().map(|t| t.rows_per_second).collect();
        let added: Vec<i64> = tables.iter().map(|t| t.rows_added as i64).collect();
        let pending: Vec<Option<i64>> = tables.iter().map(|t| micros(t.pending_since)).collect();
        tx.execute(
            &format!(
                "INSERT INTO ferry.table_monitor (table_id, sampled_at, rows_per_second, rows_streamed, pending_since)
                 SELECT u.id, now(), u.rate, u.added, {FROM_UNIX_MICROS} u.pending
                 FROM unnest($2::int8[], $3::float8[], $4::int8[], $5::int8[]) AS u(id, rate, added, pending)
                 JOIN ferry.mirror_table t ON t.id = u.id AND t.mirror_id = $1
                 ON CONFLICT (table_id) DO UPDATE SET sampled_at = now(),
                     rows_per_second = excluded.rows_per_second,
                     rows_streamed = ferry.table_monitor.rows_streamed + excluded.rows_streamed,
                     pending_since = excluded.pending_since"
            ),
            &[&mirror_id, &ids, &rates, &added, &pending],
        )
        .await?;
        // Tables the stream did not report on have nothing pending and no recent rows.
        tx.execute(
            "UPDATE ferry.table_monitor tm SET sampled_at = now(), rows_per_second = 0, pending_since = NULL
             FROM ferry.mirror_table t
             WHERE t.id = tm.table_id AND t.mirror_id = $1 AND NOT (tm.table_id = ANY($2))",
            &[&mirror_id, &ids],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Makes the open warnings of `kinds` for a mirror be exactly `active`: new ones start,
    /// lasting ones are updated (their message may carry new figures), others end. Returns
    /// the kinds that started and those that ended, for the log.
    pub async fn sync_warnings(
        &self,
        mirror_id: i64,
        kinds: &[&str],
        active: &[Warning],
    ) -> Result<(Vec<String>, Vec<String>), CatalogError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut started = Vec::new();
        for w in active {
            let updated = tx
                .execute(
                    "UPDATE ferry.mirror_warning SET message = $3, hint = $4, last_seen_at = now()
                     WHERE mirror_id = $1 AND kind = $2 AND ended_at IS NULL",
                    &[&mirror_id, &w.kind, &w.message, &w.hint],
                )
                .await?;
            if updated == 0 {
                tx.execute(
                    "INSERT INTO ferry.mirror_warning (mirror_id, kind, message, hint) VALUES ($1, $2, $3, $4)",
                    &[&mirror_id, &w.kind, &w.message, &w.hint],
                )
                .await?;
                started.push(w.kind.to_owned());
            }
        }
        let still: Vec<&str> = active.iter().map(|w| w.kind).collect();
        let ended: Vec<String> = tx
            .query(
                "UPDATE ferry.mirror_warning SET ended_at = now()
                 WHERE mirror_id = $1 AND ended_at IS NULL AND kind = ANY($2) AND NOT (kind = ANY($3))
                 RETURNING kind",
                &[&mirror_id, &kinds, &still],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !ended.is_empty() {
            tx.execute(
                "DELETE FROM ferry.mirror_warning WHERE mirror_id = $1 AND ended_at IS NOT NULL AND id <=
                     (SELECT id FROM ferry.mirror_warning WHERE mirror_id = $1 AND ended_at IS NOT NULL
                      ORDER BY id DESC OFFSET $2 LIMIT 1)",
                &[&mirror_id, &ENDED_WARNINGS_KEPT],
            )
            .await?;
        }
        tx.commit().await?;
        Ok((started, ended))
    }

    /// Mirrors of the catalog that should have a task running (for readiness).
    pub async fn mirrors_to_run(&self) -> Result<Vec<String>, CatalogError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT name FROM ferry.mirrors WHERE state IN ('snapshot', 'running') ORDER BY id",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
