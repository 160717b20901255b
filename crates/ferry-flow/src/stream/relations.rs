//! Relations: pgoutput's descriptions of the tables it sends changes of, mapped onto the
//! mirror's tables, and the schema changes they reveal.
//!
//! pgoutput sends a Relation message before the first change of a table in a session, and
//! again whenever the table's shape changed. Ferry maps its columns by name onto the table's
//! copied columns:
//!
//! - a column added at the source is added to the destination ([`Destination::add_columns`])
//!   before the first row that carries it is written;
//! - a dropped column is no longer written; it stays in the destination;
//! - a column whose type changed fails the table, with a hint to resync it;
//! - columns the mapping excludes are skipped.
//!
//! A table that appears in a schema of a `SCHEMA MAPPING` (created there, or moved there with
//! its rows) joins the mirror at its first Relation message: it is loaded on its own from a
//! snapshot of its own and joins the stream where that snapshot was taken (see
//! [`crate::sync`]), so rows it had before are not lost. A Relation message whose OID is not
//! the table's any more means the table was dropped and created again under the same name: with
//! a schema mapping the new table is loaded the same way; with a table mapping the table is
//! marked `dropped`, with a hint to follow the new one (`RESYNC MIRROR … TABLE`).

use std::sync::Arc;

use ferry_core::destination::{TableSpec, TargetName};
use ferry_core::mirror::TableState;
use ferry_core::{ColumnSchema, ErrorKind, TableName};
use ferry_postgres::connect::connect;
use ferry_postgres::pgoutput::RelationBody;
use ferry_postgres::publication::base_type;
use ferry_postgres::source;
use tracing::{debug, info, warn};

use super::Streamer;
use crate::FlowError;

/// The source's current description of a relation, mapped onto a mirror's table.
pub(super) struct Relation {
    /// The table's index among the stream's targets.
    pub target: usize,
    /// For each column of the relation, its position in `columns`; `None` for a column the
    /// mirror does not copy.
    pub slots: Vec<Option<usize>>,
    /// The table's columns the relation has, as indices into the table's columns, ascending.
    pub columns: Arc<[usize]>,
}

impl Streamer {
    /// Takes in a Relation message: maps its columns onto the table, adding new ones.
    pub(super) async fn relation(&mut self, body: RelationBody) -> Result<(), FlowError> {
        let name = TableName::new(body.namespace.clone(), body.name.clone());
        let known = self.targets.iter().position(|x| x.row.source == name);
        if let Some(t) = known {
            if self.targets[t].row.source_oid != body.id {
                self.recreated(t, &name).await?;
                self.relations.insert(body.id, None);
                return Ok(());
            }
        }
        let t = match known {
            Some(t) => t,
            None => match self.adopt(&name).await? {
                Some(t) => t,
                None => {
                    debug!(table = %name, "changes of a table outside the mirror are skipped");
                    self.relations.insert(body.id, None);
                    return Ok(());
                }
            },
        };
        if !self.targets[t].row.state.streams() {
            debug!(table = %name, state = %self.targets[t].row.state, "changes of this table are skipped");
            self.relations.insert(body.id, None);
            return Ok(());
        }
        // Rows gathered under the old shape go out first.
        if self.batch.chunk_has_rows_of(t) {
            self.write_out().await?;
        }
        let excluded = self.ctx.excluded(&name);
        let missing: Vec<String> = body
            .columns
            .iter()
            .filter(|c| !excluded.contains(&c.name))
            .filter(|c| {
                !self.targets[t]
                    .spec
                    .columns
                    .iter()
                    .any(|x| x.name == c.name)
            })
            .map(|c| c.name.clone())
            .collect();
        let spec = self.targets[t].spec.clone();
        let dropped = spec
            .columns
            .iter()
            .any(|c| !body.columns.iter().any(|r| r.name == c.name));
        if !spec.has_key() && (!missing.is_empty() || dropped) {
            // A table without a key tells its rows apart by all their values: with other
            // columns it is loaded again rather than followed column by column.
            info!(table = %name, "columns of a table without a key changed at the source; it is loaded again");
            self.resync(t).await?;
            self.relations.insert(body.id, None);
            return Ok(());
        }
        if !missing.is_empty() {
            // Rows already there hold a column's default, not NULL: the destination learns
            // them by loading the table again (a default may be volatile, and every row's
            // value is only at the source).
            let client = connect(&self.ctx.source, "ferry schema change").await?;
            let defaulted =
                source::columns_with_default(&client, &self.ctx.source, body.id, &missing).await?;
            drop(client);
            if !defaulted.is_empty() {
                info!(table = %name, columns = ?defaulted, "columns added with a default; the table is loaded again so its rows show it");
                self.resync(t).await?;
                self.relations.insert(body.id, None);
                return Ok(());
            }
            self.add_columns(t, &missing).await?;
        }
        let spec = self.targets[t].spec.clone();
        let mut positions: Vec<Option<usize>> = Vec::with_capacity(body.columns.len());
        for c in &body.columns {
            if excluded.contains(&c.name) {
                positions.push(None);
                continue;
            }
            let i = spec
                .columns
                .iter()
                .position(|x| x.name == c.name)
                .ok_or_else(|| {
                    FlowError::internal(format!("column {} of {name} was not added", c.name))
                })?;
            let known_oid = spec.columns[i].type_oid;
            // The catalog holds a domain's base type; pgoutput names the domain.
            if known_oid != c.type_oid
                && known_oid != base_type(&self.ctx.source, c.type_oid).await?
            {
                let known = &spec.columns[i];
                let e = FlowError::new(
                    ErrorKind::Unsupported,
                    "0A000",
                    format!(
                        "column \"{}\" of table {name} changed type at the source (type oid {} → {}); the destination cannot follow",
                        c.name, known.type_oid, c.type_oid
                    ),
                )
                .with_hint(format!(
                    "RESYNC MIRROR … TABLE {name} reloads the table with its new shape."
                ));
                self.fail_table(t, &e).await?;
                self.relations.insert(body.id, None);
                return Ok(());
            }
            positions.push(Some(i));
        }
        if self.binary && self.ctx.destination.wire() == ferry_core::destination::Wire::Canonical {
            let spec = &self.targets[t].spec;
            if !positions
                .iter()
                .flatten()
                .all(|&i| ferry_postgres::types::binary_is_canonical(&spec.columns[i]))
            {
                // This table's values need pgoutput's text mode: start again in it.
                return Err(FlowError::transient(
                    "55000",
                    format!("table {name} needs the stream's text mode; streaming again in it"),
                ));
            }
        }
        let mut columns: Vec<usize> = positions.iter().flatten().copied().collect();
        columns.sort_unstable();
        let slots = positions
            .iter()
            .map(|p| p.map(|i| columns.binary_search(&i).unwrap_or(0)))
            .collect();
        self.relations.insert(
            body.id,
            Some(Arc::new(Relation {
                target: t,
                slots,
                columns: Arc::from(columns),
            })),
        );
        Ok(())
    }

    /// A table that appeared in a mapped schema: it joins the mirror, loaded on its own (the
    /// stream starts again once it is recorded). Returns `None`: its changes are skipped
    /// until its own load has caught up.
    pub(super) async fn adopt(&mut self, name: &TableName) -> Result<Option<usize>, FlowError> {
        let Some((_, db)) = self.ctx.schemas.iter().find(|(s, _)| *s == name.schema) else {
            return Ok(None);
        };
        let client = connect(&self.ctx.source, "ferry new table").await?;
        let scale = source::money_scale(&client, &self.ctx.source).await?;
        let Some(described) =
            source::describe_table(&client, &self.ctx.source, name, &[], scale).await?
        else {
            return Ok(None);
        };
        let spec = TableSpec {
            id: 0,
            source: name.clone(),
            target: TargetName::new(db.clone(), name.name.clone()),
            columns: described.columns.clone(),
        };
        // A table that cannot be replicated as it is joins as failed, with what to do.
        let problem = if !described.has_identity() {
            Some(FlowError::invalid("55000", format!("table {name} has no primary key")).with_hint(format!(
                "Add a primary key, or run ALTER TABLE {} REPLICA IDENTITY FULL, then RESYNC MIRROR {} TABLE {name}.",
                name.quoted(),
                self.ctx.mirror
            )))
        } else if self
            .ctx
            .destination
            .table_token(&spec.target)
            .await?
            .is_none()
        {
            self.ctx
                .destination
                .check(std::slice::from_ref(&spec))
                .await
                .err()
        } else {
            None
        };
        let (state, error) = match &problem {
            Some(e) => {
                warn!(table = %name, error = %e, "a new table in a mapped schema cannot be replicated as it is");
                let message = match &e.hint {
                    Some(h) => format!("{} ({h})", e.message),
                    None => e.message.clone(),
                };
                (TableState::Failed, Some(message))
            }
            None => (TableState::Syncing, None),
        };
        let new = ferry_catalog::NewTable {
            source: name.clone(),
            source_oid: described.oid,
            destination_database: spec.target.namespace.clone(),
            destination_table: spec.target.table.clone(),
            columns: serde_json::to_value(&described.columns)
                .map_err(|e| FlowError::internal(e.to_string()))?,
            rows_estimated: described.estimated_rows() as i64,
        };
        let row = self
            .ctx
            .catalog
            .add_table(self.ctx.mirror_id, &new, state, error.as_deref())
            .await?;
        info!(table = %name, destination = %spec.target, state = %state, "a new table in a mapped schema joins the mirror");
        let mut spec = spec;
        spec.id = row.id;
        self.targets.push(super::Target {
            row,
            spec: Arc::new(spec),
        });
        if state == TableState::Syncing {
            self.ctx.wake.notify_one();
        }
        Ok(None)
    }

    /// The table of this name is not the one the mirror replicates any more: it was dropped
    /// and created again.
    async fn recreated(&mut self, t: usize, name: &TableName) -> Result<(), FlowError> {
        if self.ctx.schemas.iter().any(|(s, _)| *s == name.schema) {
            if self.targets[t].row.state != TableState::Syncing {
                info!(table = %name, "the table was created again at the source; it is loaded again");
                self.ctx
                    .catalog
                    .request_table_syncs(self.ctx.mirror_id, &[self.targets[t].row.id])
                    .await?;
                self.targets[t].row.state = TableState::Syncing;
                self.ctx.wake.notify_one();
            }
            return Ok(());
        }
        if self.targets[t].row.state != TableState::Dropped {
            let reason = format!(
                "table {name} was dropped and created again at the source; the new table is not replicated"
            );
            let hint = format!(
                "RESYNC MIRROR {} TABLE {name} loads the new table and follows it.",
                self.ctx.mirror
            );
            self.mark_dropped(t, &reason, &hint).await?;
        }
        Ok(())
    }

    /// Adds columns new at the source to the table, in the destination and the catalog.
    async fn add_columns(&mut self, t: usize, names: &[String]) -> Result<(), FlowError> {
        let source_name = self.targets[t].row.source.clone();
        let client = connect(&self.ctx.source, "ferry schema change").await?;
        let scale = source::money_scale(&client, &self.ctx.source).await?;
        let described = source::describe_table(&client, &self.ctx.source, &source_name, &[], scale)
            .await?
            .ok_or_else(|| {
                FlowError::new(
                    ErrorKind::NotFound,
                    "42P01",
                    format!("table {source_name} is gone"),
                )
            })?;
        let mut added: Vec<ColumnSchema> = Vec::new();
        for n in names {
            let Some(c) = described.columns.iter().find(|c| &c.name == n) else {
                return Err(FlowError::new(
                    ErrorKind::Transient,
                    "55000",
                    format!(
                        "column \"{n}\" of table {source_name} is in the stream but not in the catalog yet"
                    ),
                ));
            };
            // Rows written before the column existed have no value for it: always nullable.
            let mut c = c.clone();
            c.nullable = true;
            c.key_position = None;
            added.push(c);
        }
        let spec = self.targets[t].spec.clone();
        self.ctx.destination.add_columns(&spec, &added).await?;
        for c in &added {
            info!(table = %source_name, column = %c.name, "column added at the source; added to the destination");
        }
        let mut new_spec = (*spec).clone();
        new_spec.columns.extend(added);
        let json = serde_json::to_value(&new_spec.columns)
            .map_err(|e| FlowError::internal(e.to_string()))?;
        self.ctx
            .catalog
            .set_table_columns(self.targets[t].row.id, &json)
            .await?;
        self.targets[t].spec = Arc::new(new_spec);
        Ok(())
    }
}
