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
//! A table created later in a schema of a `SCHEMA MAPPING` joins the mirror at its first
//! Relation message; its destination table is created then, and all its rows come through the
//! stream, since the publication covered the schema when the table was created.

use std::sync::Arc;

use ferry_core::destination::{Destination, TableSpec, TargetName};
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
        if self.targets[t].row.state == TableState::Failed {
            debug!(table = %name, "changes of a failed table are skipped");
            self.relations.insert(body.id, None);
            return Ok(());
        }
        // Rows gathered under the old shape go out first.
        if self.batch.chunk_has_rows_of(t) {
            self.write_chunk().await?;
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
        if !missing.is_empty() {
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

    /// A table created in a mapped schema after the mirror started: its destination table is
    /// created and it joins the mirror.
    async fn adopt(&mut self, name: &TableName) -> Result<Option<usize>, FlowError> {
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
        if !described.has_identity() {
            let message = format!("new table {name} has no primary key and is not replicated");
            warn!(table = %name, "a new table in a mapped schema has no primary key; not replicated");
            self.ctx
                .catalog
                .set_mirror_warning(
                    self.ctx.mirror_id,
                    Some((
                        &message,
                        "Add a primary key, or set REPLICA IDENTITY FULL, then RESYNC MIRROR.",
                    )),
                )
                .await?;
            return Ok(None);
        }
        let mut spec = TableSpec {
            id: 0,
            source: name.clone(),
            target: TargetName::new(db.clone(), name.name.clone()),
            columns: described.columns.clone(),
        };
        let destination: &dyn Destination = self.ctx.destination.as_ref();
        if destination.table_token(&spec.target).await?.is_none() {
            destination.check(std::slice::from_ref(&spec)).await?;
        }
        destination.create_table(&spec, &spec.target).await?;
        let new = ferry_catalog::NewTable {
            source: name.clone(),
            source_oid: described.oid,
            destination_database: spec.target.namespace.clone(),
            destination_table: spec.target.table.clone(),
            columns: serde_json::to_value(&described.columns)
                .map_err(|e| FlowError::internal(e.to_string()))?,
            rows_estimated: 0,
        };
        let row = self
            .ctx
            .catalog
            .add_streamed_table(self.ctx.mirror_id, &new)
            .await?;
        spec.id = row.id;
        info!(table = %name, destination = %spec.target, "new table in a mapped schema joins the mirror");
        self.targets.push(super::Target {
            row,
            spec: Arc::new(spec),
        });
        Ok(Some(self.targets.len() - 1))
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
