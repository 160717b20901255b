//! The mirror's tables against the source's catalog.
//!
//! The stream says nothing when a table is dropped, renamed or moved to another schema: its
//! changes simply stop. So every [`SCOPE_EVERY`] the stream asks the source where its tables
//! are, by OID. A table that is gone, or whose name is not the mapped one any more, is marked
//! `dropped` with the reason and a hint, and logged; its destination table stays as it was.

use std::collections::HashMap;
use std::time::Duration;

use ferry_core::mirror::TableState;
use ferry_postgres::connect::connect;
use ferry_postgres::source;
use tracing::warn;

use super::Streamer;
use crate::FlowError;

/// How often the tables are looked for at the source.
pub(super) const SCOPE_EVERY: Duration = Duration::from_secs(10);

impl Streamer {
    /// Marks the tables dropped, renamed or moved away at the source.
    pub(super) async fn check_scope(&mut self) -> Result<(), FlowError> {
        let watched: Vec<usize> = (0..self.targets.len())
            .filter(|&t| {
                !matches!(
                    self.targets[t].row.state,
                    TableState::Dropped | TableState::Syncing
                )
            })
            .collect();
        if watched.is_empty() {
            return Ok(());
        }
        let oids: Vec<u32> = watched
            .iter()
            .map(|&t| self.targets[t].row.source_oid)
            .collect();
        let client = connect(&self.ctx.source, "ferry table check").await?;
        let found: HashMap<u32, ferry_core::TableName> =
            source::tables_by_oid(&client, &self.ctx.source, &oids)
                .await?
                .into_iter()
                .collect();
        drop(client);
        for t in watched {
            let row = &self.targets[t].row;
            let name = row.source.clone();
            let reason = match found.get(&row.source_oid) {
                None => format!("table {name} was dropped at the source"),
                Some(now) if *now != name => {
                    format!("table {name} was renamed or moved to {now} at the source")
                }
                Some(_) => continue,
            };
            let hint = if self.ctx.schemas.is_empty() {
                format!(
                    "Its destination table keeps the rows it had. If a table {name} is created again, RESYNC MIRROR {} TABLE {name} loads it and follows it.",
                    self.ctx.mirror
                )
            } else {
                "Its destination table keeps the rows it had. A new table of that name in the mapped schema joins the mirror by itself.".to_owned()
            };
            self.mark_dropped(t, &reason, &hint).await?;
        }
        Ok(())
    }

    /// Marks a table `dropped`: its changes are no longer looked for.
    pub(super) async fn mark_dropped(
        &mut self,
        t: usize,
        reason: &str,
        hint: &str,
    ) -> Result<(), FlowError> {
        // Changes gathered before it went are written first.
        if self.batch.chunk_has_rows_of(t) {
            self.write_chunk().await?;
        }
        warn!(table = %self.targets[t].row.source, reason = %reason, "table left the mirror's scope at the source");
        let message = format!("{reason} ({hint})");
        self.ctx
            .catalog
            .set_table_state(self.targets[t].row.id, TableState::Dropped, Some(&message))
            .await?;
        self.targets[t].row.state = TableState::Dropped;
        self.relations
            .retain(|_, r| r.as_ref().is_none_or(|r| r.target != t));
        Ok(())
    }
}
