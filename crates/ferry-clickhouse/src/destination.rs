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

use async_trait::async_trait;
use ferry_core::destination::{
    Apply, Destination, Load, MirrorContext, QueryDestination, TableSpec, TableToken, TargetName,
    Wire,
};
use ferry_core::ident::{ch_ident, ch_qualified};
use ferry_core::peer::ClickhouseConfig;
use ferry_core::{ColumnSchema, Error, ErrorKind};
use tracing::info;

use crate::table::{ClickHouse, IS_DELETED_COLUMN, SYNCED_AT_COLUMN, VERSION_COLUMN};
use crate::types::clickhouse_type;

/// Ferry's own columns in every destination table.
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
            ch: ClickHouse::new(cfg)?,
            cfg: cfg.clone(),
            mirror,
        })
    }
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
        for t in tables {
            if let Some(c) = t
                .columns
                .iter()
                .find(|c| RESERVED_COLUMNS.contains(&c.name.as_str()))
            {
                return Err(Error::invalid(
                    "42939",
                    format!(
                        "column \"{}\" of table {} has the name of one of Ferry's own columns in ClickHouse",
                        c.name, t.source
                    ),
                )
                .with_hint(format!(
                    "Leave it out with {{ from: {}, to: {}, exclude: [{}] }}, or rename it at the source.",
                    t.source, t.target.table, c.name
                )));
            }
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
            self.ch
                .create_table(
                    &into.namespace,
                    &into.table,
                    &crate::identity::storage_columns(&table.columns),
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
        Ok(Load::Sink(Box::new(crate::load::RangeSink::new(
            &self.ch,
            table,
            into,
            range,
            crate::load::policy(self.mirror.unrepresentable),
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
        )))
    }

    /// Query mirrors: [`crate::qrep`].
    fn query(&self) -> Option<&dyn QueryDestination> {
        Some(self)
    }
}
