//! The mirror's tables against the source's catalog.
//!
//! The stream says nothing when a table is dropped, renamed or moved to another schema, when a
//! partition is attached to a replicated table, or when a table appears in a mapped schema
//! without a change: so every [`SCOPE_EVERY`] the stream asks the source's catalog.
//!
//! - A table that is gone, or whose name is not the mapped one any more, is marked `dropped`
//!   with the reason and a hint, and logged; its destination table stays as it was.
//! - A partitioned table whose leaves changed (a partition attached with its rows, or
//!   detached with them) is loaded again on its own, so the destination holds exactly the
//!   table's rows: those of an attached partition arrive, those of a detached one go.
//! - A table in a mapped schema that the mirror does not have yet (created, moved there with
//!   `SET SCHEMA` or renamed into the schema) joins it and is loaded on its own, with the rows
//!   it already had.
//! - A table the mirror's publication no longer publishes (someone changed it) fails, with a
//!   hint: its changes no longer come. One that was attached as a partition of a partitioned
//!   table the mirror has is marked `dropped` instead: its rows come through that table now.
//!
//! A Relation message reveals most of these at once when the table changes; the check catches
//! the rest within [`SCOPE_EVERY`].

use std::collections::HashMap;
use std::time::Duration;

use ferry_core::mirror::TableState;
use ferry_core::{ErrorKind, TableName};
use ferry_postgres::connect::connect;
use ferry_postgres::publication;
use ferry_postgres::source;
use tokio_postgres::Client;
use tracing::{info, warn};

use super::Streamer;
use crate::FlowError;

/// How often the tables are looked for at the source.
pub(super) const SCOPE_EVERY: Duration = Duration::from_secs(10);

impl Streamer {
    /// Checks the mirror's tables against the source's catalog (see the module doc).
    pub(super) async fn check_scope(&mut self) -> Result<(), FlowError> {
        let client = connect(&self.ctx.source, "ferry table check").await?;
        self.check_gone(&client).await?;
        self.check_leaves(&client).await?;
        self.check_published(&client).await?;
        self.check_new_tables(&client).await
    }

    /// Marks the tables dropped, renamed or moved away at the source.
    async fn check_gone(&mut self, client: &Client) -> Result<(), FlowError> {
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
        let found: HashMap<u32, ferry_core::TableName> =
            source::tables_by_oid(client, &self.ctx.source, &oids)
                .await?
                .into_iter()
                .collect();
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

    /// Partitioned tables whose leaves changed load again.
    async fn check_leaves(&mut self, client: &Client) -> Result<(), FlowError> {
        for t in 0..self.targets.len() {
            if !self.targets[t].row.state.streams() {
                continue;
            }
            let oid = self.targets[t].row.source_oid;
            let Some(now) = source::leaves(client, &self.ctx.source, oid).await? else {
                continue;
            };
            let then = self
                .ctx
                .catalog
                .table_leaves(self.targets[t].row.id)
                .await?
                .unwrap_or_default();
            if now != then {
                info!(table = %self.targets[t].row.source, before = ?then, now = ?now, "partitions attached or detached; the table is loaded again");
                self.resync(t).await?;
            }
        }
        Ok(())
    }

    /// Tables the publication stopped publishing fail.
    async fn check_published(&mut self, client: &Client) -> Result<(), FlowError> {
        let names: Vec<TableName> = self
            .targets
            .iter()
            .filter(|x| x.row.state.streams())
            .map(|x| x.row.source.clone())
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        let missing =
            publication::unpublished(client, &self.ctx.source, &self.ctx.publication, &names)
                .await?
                .unwrap_or(names);
        for name in missing {
            let Some(t) = self.targets.iter().position(|x| x.row.source == name) else {
                continue;
            };
            // Attached as a partition of a table the mirror has: its rows now come through
            // that table (loaded again with its new partition), not on their own.
            let oid = self.targets[t].row.source_oid;
            if let Some(root) = source::partition_root(client, &self.ctx.source, oid).await? {
                if self
                    .targets
                    .iter()
                    .any(|x| x.row.source == root && x.row.state != TableState::Dropped)
                {
                    self.mark_dropped(
                        t,
                        &format!("{name} is now a partition of {root}, whose rows include its rows"),
                        "its destination table stays as it was; the rows are in the destination table of the partitioned one",
                    )
                    .await?;
                    continue;
                }
            }
            let e = FlowError::new(
                ErrorKind::Misconfigured,
                "55000",
                format!(
                    "publication \"{}\" no longer publishes table {name}",
                    self.ctx.publication
                ),
            )
            .with_hint(format!(
                "Add it back (ALTER PUBLICATION {} ADD TABLE {}), then RESYNC MIRROR {} TABLE {name}.",
                ferry_core::ident::pg_ident(&self.ctx.publication),
                name.quoted(),
                self.ctx.mirror
            ));
            self.fail_table(t, &e).await?;
            self.relations
                .retain(|_, r| r.as_ref().is_none_or(|r| r.target != t));
        }
        Ok(())
    }

    /// Tables in a mapped schema the mirror does not have yet join it.
    async fn check_new_tables(&mut self, client: &Client) -> Result<(), FlowError> {
        if self.ctx.schemas.is_empty() {
            return Ok(());
        }
        let mut found = Vec::new();
        for (schema, _) in &self.ctx.schemas {
            for name in source::tables_in_schema(client, &self.ctx.source, schema).await? {
                if !self.targets.iter().any(|x| x.row.source == name) {
                    found.push(name);
                }
            }
        }
        for name in found {
            self.adopt(&name).await?;
        }
        Ok(())
    }

    /// Loads a table again on its own.
    pub(super) async fn resync(&mut self, t: usize) -> Result<(), FlowError> {
        if self.batch.chunk_has_rows_of(t) {
            self.write_out().await?;
        }
        self.ctx
            .catalog
            .request_table_syncs(self.ctx.mirror_id, &[self.targets[t].row.id])
            .await?;
        self.targets[t].row.state = TableState::Syncing;
        self.relations
            .retain(|_, r| r.as_ref().is_none_or(|r| r.target != t));
        self.ctx.wake.notify_one();
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
            self.write_out().await?;
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
