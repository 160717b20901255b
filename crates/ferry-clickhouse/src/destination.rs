//! ClickHouse as a destination: the engine's [`Destination`] contract, kept by ClickHouse's
//! means.
//!
//! - Tables are `ReplacingMergeTree`s with Ferry's version and deletion columns
//!   ([`crate::table`]); the engine's checks and DDL run here ([`ClickHouseDestination::check`]).
//! - A range of the initial load is one streamed insert ([`crate::load`]). Reading a range
//!   twice is harmless: its rows have the same key and version (0), and the engine keeps one.
//! - Streamed changes become rows with their versions ([`crate::apply`]); unchanged TOAST
//!   values are read back from ClickHouse ([`crate::lookup`]).
//! - ClickHouse keeps no position of its own: the engine's catalog is the position, and
//!   replaying WAL after a crash writes rows identical to those written before.
//! - A query mirror's table and partitions: [`crate::qrep`].
//! - Destination databases are never created: a mirror's databases must exist, so that a typo
//!   in a mapping is an error, not a stray database.
//! - Each table is laid out as its mirror says ([`crate::layout`]): checked, with ClickHouse
//!   asked about what only it can judge (a setting's name, a cast, a function), before
//!   anything is created.

use async_trait::async_trait;
use ferry_core::destination::{
    Apply, Destination, Load, MirrorContext, QueryDestination, TableSpec, TableToken, TargetName,
    Wire,
};
use ferry_core::ident::{ch_ident, ch_literal, ch_qualified};
use ferry_core::peer::ClickhouseConfig;
use ferry_core::{ColumnSchema, Error, ErrorKind};
use tracing::info;

use crate::layout::{resolve, Meta, Resolved};
use crate::table::{ClickHouse, IS_DELETED_COLUMN, SYNCED_AT_COLUMN, VERSION_COLUMN};
use crate::types::clickhouse_type;

/// Ferry's own columns in every destination table (the first three unless the mirror renames
/// them; the last two in tables without a key).
pub const RESERVED_COLUMNS: [&str; 5] = [
    VERSION_COLUMN,
    IS_DELETED_COLUMN,
    SYNCED_AT_COLUMN,
    crate::identity::ROW_HASH_COLUMN,
    crate::identity::ROW_ID_COLUMN,
];

/// A ClickHouse peer as the destination of one mirror.
pub struct ClickHouseDestination {
    pub(crate) ch: ClickHouse,
    cfg: ClickhouseConfig,
    pub(crate) mirror: MirrorContext,
}

impl ClickHouseDestination {
    pub fn new(
        cfg: &ClickhouseConfig,
        mirror: MirrorContext,
    ) -> Result<ClickHouseDestination, Error> {
        Ok(ClickHouseDestination {
            ch: ClickHouse::new(cfg)?.with_meta(Meta::new(&mirror.meta_columns)),
            cfg: cfg.clone(),
            mirror,
        })
    }

    /// A table's layout, checked against it.
    fn layout(&self, table: &TableSpec) -> Result<Resolved, Error> {
        resolve(
            &self.mirror.layouts.of(&table.source),
            table,
            self.ch.meta(),
        )
    }

    /// What only ClickHouse can judge of a table's layout: its settings' names, that each
    /// chosen column type is one the mapped type converts to, and the partition expression.
    async fn check_with_clickhouse(
        &self,
        table: &TableSpec,
        layout: &Resolved,
    ) -> Result<(), Error> {
        let invalid = |what: &str, message: String| {
            Error::invalid(
                "22023",
                format!("{what} of table {}: {message}", table.source),
            )
        };
        if !layout.settings.is_empty() {
            let names: Vec<String> = layout.settings.iter().map(|(n, _)| ch_literal(n)).collect();
            let known: Vec<String> = self
                .ch
                .client()
                .query(&format!(
                    "SELECT name FROM system.merge_tree_settings WHERE name IN ({})",
                    names.join(", ")
                ))
                .fetch_all()
                .await
                .map_err(|e| self.ch.err(e))?;
            if let Some((unknown, _)) = layout.settings.iter().find(|(n, _)| !known.contains(n)) {
                return Err(invalid(
                    "settings",
                    format!("\"{unknown}\" is not a MergeTree setting of this ClickHouse"),
                )
                .with_hint("SELECT name FROM system.merge_tree_settings lists them."));
            }
        }
        for (c, chosen) in table.columns.iter().zip(&layout.column_types) {
            let Some(chosen) = chosen else { continue };
            let from = ch_literal(&clickhouse_type(&c.kind, false));
            let to = ch_literal(&chosen.base);
            // A cast that fails on the mapped type's default value (a text to a number) may
            // still be right for the real values: then only the kind of cast is checked.
            let exact = format!("SELECT toTypeName(CAST(defaultValueOfTypeName({from}), {to}))");
            if self.ch.execute(&exact).await.is_ok() {
                continue;
            }
            let lenient = format!(
                "SELECT toTypeName(accurateCastOrNull(defaultValueOfTypeName({from}), {to}))"
            );
            if let Err(e) = self.ch.execute(&lenient).await {
                return Err(invalid(
                    "column_types",
                    format!(
                        "ClickHouse cannot convert column \"{}\" from {} to {}: {}",
                        c.name,
                        clickhouse_type(&c.kind, false),
                        chosen.base,
                        reason(&e.message)
                    ),
                ));
            }
        }
        if let Some(expr) = &layout.partition_by {
            let meta = self.ch.meta();
            let mut values: Vec<String> = table
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    format!(
                        "defaultValueOfTypeName({}) AS {}",
                        ch_literal(&layout.column_type(i, c)),
                        ch_ident(&c.name)
                    )
                })
                .collect();
            values.push(format!("toUInt64(0) AS {}", ch_ident(&meta.version)));
            values.push(format!("now64(9) AS {}", ch_ident(&meta.synced_at)));
            let sql = format!("SELECT {expr} FROM (SELECT {}) WHERE 0", values.join(", "));
            if let Err(e) = self.ch.execute(&sql).await {
                return Err(invalid("partition_by", reason(&e.message)));
            }
        }
        Ok(())
    }
}

/// What ClickHouse said, without the query it quotes back (which is Ferry's, not the user's).
fn reason(message: &str) -> String {
    let m = message
        .split_once("DB::Exception: ")
        .map_or(message, |(_, after)| after);
    let m = m.split(" In scope ").next().unwrap_or(m);
    m.trim_end_matches([':', '.', ' '])
        .chars()
        .take(300)
        .collect()
}

#[async_trait]
impl Destination for ClickHouseDestination {
    fn describe(&self) -> String {
        format!("ClickHouse at {}", self.cfg.url())
    }

    fn default_namespace(&self) -> &str {
        &self.cfg.database
    }

    fn wire(&self) -> Wire {
        Wire::Canonical
    }

    async fn check(&self, tables: &[TableSpec]) -> Result<(), Error> {
        let own = self.ch.meta().names();
        if own[1] == own[0] || own[2] == own[0] || own[1] == own[2] {
            return Err(Error::invalid(
                "42701",
                "soft_delete_col_name and synced_at_col_name must differ from each other and from _ferry_version",
            ));
        }
        for t in tables {
            let identity = [
                crate::identity::ROW_HASH_COLUMN,
                crate::identity::ROW_ID_COLUMN,
            ];
            if let Some(c) = t
                .columns
                .iter()
                .find(|c| own.contains(&c.name.as_str()) || identity.contains(&c.name.as_str()))
            {
                return Err(Error::invalid(
                    "42939",
                    format!(
                        "column \"{}\" of table {} has the name of one of Ferry's own columns in ClickHouse",
                        c.name, t.source
                    ),
                )
                .with_hint(format!(
                    "Leave it out with {{ from: {}, to: {}, exclude: [{}] }}, rename it at the source, or give Ferry's column another name (soft_delete_col_name, synced_at_col_name).",
                    t.source, t.target.table, c.name
                )));
            }
            let layout = self.layout(t)?;
            self.check_with_clickhouse(t, &layout).await?;
            let db = &t.target.namespace;
            if !self.ch.database_exists(db).await? {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    "3D000",
                    format!("database \"{db}\" does not exist in ClickHouse"),
                )
                .with_hint(format!(
                    "Create it first (CREATE DATABASE {}), or map the table to an existing database.",
                    ch_ident(db)
                )));
            }
            if self.ch.table_exists(db, &t.target.table).await? {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    "42P07",
                    format!("destination table {} already exists", t.target),
                )
                .with_hint("Drop it in ClickHouse, or map the source table to another name."));
            }
        }
        Ok(())
    }

    async fn create_table(
        &self,
        table: &TableSpec,
        into: &TargetName,
    ) -> Result<TableToken, Error> {
        if !self.ch.table_exists(&into.namespace, &into.table).await? {
            let layout = self.layout(table)?;
            self.ch
                .create_table(
                    &into.namespace,
                    &into.table,
                    &crate::identity::storage_columns(&table.columns),
                    &layout,
                )
                .await?;
        }
        self.table_token(into)
            .await?
            .ok_or_else(|| Error::internal(format!("table {into} vanished after it was created")))
    }

    async fn table_token(&self, name: &TargetName) -> Result<Option<TableToken>, Error> {
        Ok(self
            .ch
            .table_uuid(&name.namespace, &name.table)
            .await?
            .map(TableToken))
    }

    async fn drop_table(&self, name: &TargetName) -> Result<(), Error> {
        Ok(self.ch.drop_table(&name.namespace, &name.table).await?)
    }

    /// The fresh table takes the live table's name by `EXCHANGE TABLES` (atomic), and the
    /// old data, now under the fresh table's name, is dropped. A crash after the exchange is
    /// recognised by the live name now carrying the fresh table's UUID.
    async fn swap_in(
        &self,
        table: &TableSpec,
        fresh: &TargetName,
        token: &TableToken,
    ) -> Result<(), Error> {
        let live = &table.target;
        let live_token = self.table_token(live).await?;
        if live_token.as_ref() != Some(token) || token.0.is_empty() {
            if live_token.is_some() {
                self.ch
                    .exchange_tables(&live.namespace, &live.table, &fresh.table)
                    .await?;
            } else {
                // The live table was dropped by hand: the fresh one simply takes its name.
                self.ch
                    .execute(&format!(
                        "RENAME TABLE {} TO {}",
                        ch_qualified(&fresh.namespace, &fresh.table),
                        ch_qualified(&live.namespace, &live.table)
                    ))
                    .await?;
            }
        }
        self.ch.drop_table(&fresh.namespace, &fresh.table).await?;
        info!(table = %table.source, destination = %live, "resynced table swapped in");
        Ok(())
    }

    async fn load(&self, table: &TableSpec, into: &TargetName, range: i32) -> Result<Load, Error> {
        let converts = self.layout(table)?.converts();
        Ok(Load::Sink(Box::new(crate::load::RangeSink::new(
            &self.ch,
            table,
            into,
            range,
            crate::load::policy(self.mirror.unrepresentable),
            converts,
        )?)))
    }

    async fn finish_load(&self, _table: &TableSpec, _into: &TargetName) -> Result<(), Error> {
        Ok(())
    }

    /// Rows written before a column existed have no value for it: added columns are always
    /// nullable. (A table without a key tells its rows apart by all their values, so the
    /// engine loads such a table again instead of adding a column to it.)
    async fn add_columns(&self, table: &TableSpec, added: &[ColumnSchema]) -> Result<(), Error> {
        for c in added {
            let sql = format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}",
                ch_qualified(&table.target.namespace, &table.target.table),
                ch_ident(&c.name),
                clickhouse_type(&c.kind, true),
            );
            self.ch.execute(&sql).await?;
        }
        Ok(())
    }

    async fn begin_apply(&self) -> Result<Box<dyn Apply>, Error> {
        Ok(Box::new(crate::apply::ClickHouseApply::new(
            self.ch.clone(),
            crate::load::policy(self.mirror.unrepresentable),
            self.mirror.layouts.clone(),
        )))
    }

    /// Query mirrors: [`crate::qrep`].
    fn query(&self) -> Option<&dyn QueryDestination> {
        Some(self)
    }
}
