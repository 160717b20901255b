//! ClickHouse tables: their layout, and writing rows into them.
//!
//! Every replicated table is a `ReplacingMergeTree` ordered by the source's key, with three
//! columns of Ferry's own after the source's:
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `_ferry_version` | `UInt64` | 0 for rows of the initial load; the change's LSN for streamed changes, so a later change always wins and replaying the same WAL writes the same rows |
//! | `_ferry_is_deleted` | `UInt8` | 1 for a row deleted at the source |
//! | `_ferry_synced_at` | `DateTime64(9)` | when ClickHouse received the row |
//!
//! ClickHouse keeps, per key, the row with the highest version (after merges, or at once with
//! `FINAL`), so the current state of a table is
//! `SELECT … FROM t FINAL WHERE _ferry_is_deleted = 0`.
//!
//! A mirror may rename the last two columns and keep deleted rows visible under `FINAL`
//! (`soft_delete`), and choose each table's sort key, partitioning, settings and column types
//! ([`crate::layout`]). A column whose type was chosen is converted by ClickHouse as the rows
//! arrive: inserts then send the mapped types through `input()`, and ClickHouse casts them.

use bytes::Bytes;
use ferry_core::ident::{ch_ident, ch_literal, ch_qualified};
use ferry_core::peer::ClickhouseConfig;
use ferry_core::{ColumnSchema, Value};

use crate::connect::DestinationError;
use crate::identity::{ROW_HASH_COLUMN, ROW_ID_COLUMN};
use crate::layout::{Meta, Resolved};
use crate::rowbinary::{encode_with_policy, render_value, EncodeError};
use crate::types::clickhouse_type;
use crate::unrepresentable::{self, Substitutions, UnrepresentablePolicy};

/// The version column.
pub const VERSION_COLUMN: &str = "_ferry_version";
/// The deletion marker column.
pub const IS_DELETED_COLUMN: &str = "_ferry_is_deleted";
/// The arrival time column.
pub const SYNCED_AT_COLUMN: &str = "_ferry_synced_at";

/// Bytes of RowBinary gathered before they are sent as one chunk of an insert.
const CHUNK_BYTES: usize = 1 << 20;

/// `CREATE TABLE` for a replicated table, laid out as `layout` says; `columns` as
/// [`crate::identity::storage_columns`] gives them.
pub fn create_table_sql(
    database: &str,
    table: &str,
    columns: &[ColumnSchema],
    layout: &Resolved,
    meta: &Meta,
) -> String {
    let mut defs: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} {}", ch_ident(&c.name), layout.column_type(i, c)))
        .collect();
    defs.push(format!("{} UInt64", ch_ident(&meta.version)));
    defs.push(format!("{} UInt8", ch_ident(&meta.is_deleted)));
    defs.push(format!(
        "{} DateTime64(9) DEFAULT now64(9)",
        ch_ident(&meta.synced_at)
    ));
    let mut keys: Vec<&ColumnSchema> = columns
        .iter()
        .filter(|c| c.key_position.is_some())
        .collect();
    keys.sort_by_key(|c| c.key_position);
    // Without a key (REPLICA IDENTITY FULL), rows are told apart by their values' hash and
    // an id of their own (crate::identity); `columns` then ends with those two.
    let key_columns: Vec<&ColumnSchema> = if keys.is_empty() {
        columns
            .iter()
            .filter(|c| c.name == ROW_HASH_COLUMN || c.name == ROW_ID_COLUMN)
            .collect()
    } else {
        keys
    };
    let order_by: Vec<String> = if layout.order_by.is_empty() {
        key_columns.iter().map(|c| ch_ident(&c.name)).collect()
    } else {
        layout.order_by.clone()
    };
    let sorted_by_nullable = if layout.order_by.is_empty() {
        key_columns.iter().any(|c| c.nullable)
    } else {
        columns
            .iter()
            .any(|c| c.nullable && layout.order_by.contains(&ch_ident(&c.name)))
    };
    let mut settings = layout.settings.clone();
    if sorted_by_nullable && !settings.iter().any(|(n, _)| n == "allow_nullable_key") {
        settings.insert(0, ("allow_nullable_key".into(), "1".into()));
    }
    // Without soft deletes the engine drops a deleted row's last version (FINAL hides it).
    let engine = if meta.soft_delete {
        format!("ReplacingMergeTree({})", ch_ident(&meta.version))
    } else {
        format!(
            "ReplacingMergeTree({}, {})",
            ch_ident(&meta.version),
            ch_ident(&meta.is_deleted)
        )
    };
    let mut sql = format!(
        "CREATE TABLE {} (\n  {}\n) ENGINE = {engine}",
        ch_qualified(database, table),
        defs.join(",\n  "),
    );
    if let Some(p) = &layout.partition_by {
        sql.push_str(&format!("\nPARTITION BY {p}"));
    }
    sql.push_str(&format!("\nORDER BY ({})", order_by.join(", ")));
    if !settings.is_empty() {
        let list: Vec<String> = settings.iter().map(|(n, v)| format!("{n} = {v}")).collect();
        sql.push_str(&format!("\nSETTINGS {}", list.join(", ")));
    }
    sql
}

/// A destination ClickHouse: DDL and inserts, with errors classified.
#[derive(Clone)]
pub struct ClickHouse {
    cfg: ClickhouseConfig,
    client: clickhouse::Client,
    meta: Meta,
}

impl ClickHouse {
    /// A destination for the peer; fails only on TLS settings that cannot be used.
    pub fn new(cfg: &ClickhouseConfig) -> Result<ClickHouse, DestinationError> {
        Ok(ClickHouse {
            cfg: cfg.clone(),
            client: crate::connect::client(cfg)?,
            meta: Meta::default(),
        })
    }

    /// With Ferry's own columns named (and deletions kept) as a mirror asks.
    pub fn with_meta(mut self, meta: Meta) -> ClickHouse {
        self.meta = meta;
        self
    }

    /// Ferry's own columns in this mirror's tables.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The peer's own database, where unqualified destination names go.
    pub fn default_database(&self) -> &str {
        &self.cfg.database
    }

    pub(crate) fn client(&self) -> &clickhouse::Client {
        &self.client
    }

    pub(crate) fn err(&self, e: clickhouse::error::Error) -> DestinationError {
        DestinationError::from_client(&self.cfg, e)
    }

    /// Runs a statement that returns nothing.
    pub async fn execute(&self, sql: &str) -> Result<(), DestinationError> {
        self.client
            .query(sql)
            .execute()
            .await
            .map_err(|e| self.err(e))
    }

    pub async fn database_exists(&self, database: &str) -> Result<bool, DestinationError> {
        let sql = format!(
            "SELECT count() FROM system.databases WHERE name = {}",
            ch_literal(database)
        );
        let n: u64 = self
            .client
            .query(&sql)
            .fetch_one()
            .await
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    pub async fn table_exists(
        &self,
        database: &str,
        table: &str,
    ) -> Result<bool, DestinationError> {
        let sql = format!(
            "SELECT count() FROM system.tables WHERE database = {} AND name = {}",
            ch_literal(database),
            ch_literal(table)
        );
        let n: u64 = self
            .client
            .query(&sql)
            .fetch_one()
            .await
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    /// Creates a database if it is missing.
    pub async fn ensure_database(&self, database: &str) -> Result<(), DestinationError> {
        self.execute(&format!(
            "CREATE DATABASE IF NOT EXISTS {}",
            ch_ident(database)
        ))
        .await
    }

    /// Creates a replicated table (see the module doc for its layout).
    pub async fn create_table(
        &self,
        database: &str,
        table: &str,
        columns: &[ColumnSchema],
        layout: &Resolved,
    ) -> Result<(), DestinationError> {
        self.execute(&create_table_sql(
            database, table, columns, layout, &self.meta,
        ))
        .await
    }

    /// A table's UUID, or `None` when there is no such table.
    pub async fn table_uuid(
        &self,
        database: &str,
        table: &str,
    ) -> Result<Option<String>, DestinationError> {
        let sql = format!(
            "SELECT toString(uuid) FROM system.tables WHERE database = {} AND name = {}",
            ch_literal(database),
            ch_literal(table)
        );
        let rows: Vec<String> = self
            .client
            .query(&sql)
            .fetch_all()
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows.into_iter().next())
    }

    /// Swaps two tables' names atomically.
    pub async fn exchange_tables(
        &self,
        database: &str,
        a: &str,
        b: &str,
    ) -> Result<(), DestinationError> {
        self.execute(&format!(
            "EXCHANGE TABLES {} AND {}",
            ch_qualified(database, a),
            ch_qualified(database, b)
        ))
        .await
    }

    pub async fn drop_table(&self, database: &str, table: &str) -> Result<(), DestinationError> {
        self.execute(&format!(
            "DROP TABLE IF EXISTS {} SYNC",
            ch_qualified(database, table)
        ))
        .await
    }

    /// Starts one insert into a replicated table, streamed in chunks.
    pub fn insert(&self, database: &str, table: &str, columns: &[ColumnSchema]) -> RowInsert {
        self.insert_as(database, table, columns, "RowBinary", false)
    }

    /// Starts one insert of `Native` blocks (see [`crate::native::NativeBlock`]) into a
    /// replicated table: it takes only [`RowInsert::send_encoded`].
    pub fn insert_native(
        &self,
        database: &str,
        table: &str,
        columns: &[ColumnSchema],
    ) -> RowInsert {
        self.insert_as(database, table, columns, "Native", false)
    }

    /// An insert ([`ClickHouse::insert`] with `native` false, else
    /// [`ClickHouse::insert_native`]) whose rows ClickHouse converts to the table's column
    /// types when `converts` (some were chosen in place of the mapped ones): the rows, in the
    /// mapped types, are read through `input()` and cast by `INSERT … SELECT`.
    pub fn insert_for(
        &self,
        database: &str,
        table: &str,
        columns: &[ColumnSchema],
        native: bool,
        converts: bool,
    ) -> RowInsert {
        let format = if native { "Native" } else { "RowBinary" };
        self.insert_as(database, table, columns, format, converts)
    }

    fn insert_as(
        &self,
        database: &str,
        table: &str,
        columns: &[ColumnSchema],
        format: &str,
        converts: bool,
    ) -> RowInsert {
        let names = [self.meta.version.as_str(), self.meta.is_deleted.as_str()];
        let list = crate::native::NativeBlock::column_list_named(columns, names);
        let sql = if converts {
            let mut structure: Vec<String> = columns
                .iter()
                .map(|c| {
                    format!(
                        "{} {}",
                        ch_ident(&c.name),
                        clickhouse_type(&c.kind, c.nullable)
                    )
                })
                .collect();
            structure.push(format!("{} UInt64", ch_ident(names[0])));
            structure.push(format!("{} UInt8", ch_ident(names[1])));
            format!(
                "INSERT INTO {} ({list}) SELECT * FROM input({}) FORMAT {format}",
                ch_qualified(database, table),
                ch_literal(&structure.join(", "))
            )
        } else {
            format!(
                "INSERT INTO {} ({list}) FORMAT {format}",
                ch_qualified(database, table)
            )
        };
        RowInsert {
            destination: self.clone(),
            insert: Some(self.client.insert_formatted_with(sql)),
            columns: columns
                .iter()
                .map(|c| (c.kind.clone(), c.nullable))
                .collect(),
            key_columns: unrepresentable::key_columns(columns),
            names: columns.iter().map(|c| c.name.clone()).collect(),
            policy: UnrepresentablePolicy::default(),
            substitutions: Substitutions::new(columns.len()),
            buf: Vec::with_capacity(CHUNK_BYTES + 64 * 1024),
            rows: 0,
            rows_substituted: 0,
        }
    }
}

/// An insert in progress. Dropping it without [`RowInsert::finish`] aborts the insert.
pub struct RowInsert {
    destination: ClickHouse,
    insert: Option<clickhouse::insert_formatted::InsertFormatted>,
    columns: Vec<(ferry_core::ValueKind, bool)>,
    /// The key columns' positions, in key order (for example keys).
    key_columns: Vec<usize>,
    names: Vec<String>,
    policy: UnrepresentablePolicy,
    substitutions: Substitutions,
    buf: Vec<u8>,
    rows: u64,
    rows_substituted: u64,
}

/// Why a row could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("column {column}: {source}")]
    Encode {
        /// The column's position in the insert's column list.
        column: usize,
        #[source]
        source: EncodeError,
    },
    #[error(transparent)]
    Destination(#[from] DestinationError),
}

impl From<WriteError> for ferry_core::Error {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Destination(d) => d.into(),
            WriteError::Encode { source, .. } => {
                ferry_core::Error::new(source.kind(), "22000", source.to_string())
            }
        }
    }
}

impl RowInsert {
    /// Deals with values ClickHouse cannot hold by `policy` (the default is to substitute).
    pub fn with_policy(mut self, policy: UnrepresentablePolicy) -> RowInsert {
        self.policy = policy;
        self
    }

    /// Adds a row (values in column order) with its version and deletion marker, and sends a
    /// chunk when enough has gathered. A row that cannot be encoded is not added.
    pub async fn push(
        &mut self,
        values: &[Value],
        version: u64,
        is_deleted: bool,
    ) -> Result<(), WriteError> {
        self.push_with(values, &[], version, is_deleted).await
    }

    /// As [`RowInsert::push`], with some columns given already encoded (`(column, RowBinary)`,
    /// in column order, as [`ClickHouse::stored_values`] returns them); their `values` are
    /// not looked at.
    pub async fn push_with(
        &mut self,
        values: &[Value],
        encoded: &[(usize, &[u8])],
        version: u64,
        is_deleted: bool,
    ) -> Result<(), WriteError> {
        let start = self.buf.len();
        let mut substituted = false;
        let mut encoded = encoded.iter().peekable();
        for (i, ((kind, nullable), v)) in self.columns.iter().zip(values).enumerate() {
            if let Some((_, bytes)) = encoded.next_if(|(c, _)| *c == i) {
                self.buf.extend_from_slice(bytes);
                continue;
            }
            match encode_with_policy(kind, *nullable, v, self.policy, &mut self.buf) {
                Ok(None) => {}
                Ok(Some(why)) => {
                    substituted = true;
                    if self.substitutions.record(i, why) {
                        let key: Vec<String> = self
                            .key_columns
                            .iter()
                            .filter_map(|&k| {
                                Some(render_value(&self.columns.get(k)?.0, values.get(k)?))
                            })
                            .collect();
                        let names = self.key_columns.iter().map(|&k| self.names[k].as_str());
                        self.substitutions
                            .set_example(i, unrepresentable::format_key(names, &key));
                    }
                }
                Err(e) => {
                    self.buf.truncate(start);
                    return Err(WriteError::Encode {
                        column: i,
                        source: e,
                    });
                }
            }
        }
        self.buf.extend_from_slice(&version.to_le_bytes());
        self.buf.push(u8::from(is_deleted));
        self.rows += 1;
        if substituted {
            self.rows_substituted += 1;
        }
        if self.buf.len() >= CHUNK_BYTES {
            self.send().await?;
        }
        Ok(())
    }

    /// Sends `rows` rows already encoded in the insert's format (whole rows, or whole `Native`
    /// blocks, each with Ferry's version and deletion marker), after what was pushed before.
    pub async fn send_encoded(
        &mut self,
        chunk: impl Into<Bytes>,
        rows: u64,
    ) -> Result<(), DestinationError> {
        self.send().await?;
        self.rows += rows;
        self.send_chunk(chunk.into()).await
    }

    async fn send(&mut self) -> Result<(), DestinationError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CHUNK_BYTES + 64 * 1024),
        ));
        self.send_chunk(chunk).await
    }

    async fn send_chunk(&mut self, chunk: Bytes) -> Result<(), DestinationError> {
        match self.insert.as_mut() {
            Some(insert) => insert
                .send(chunk)
                .await
                .map_err(|e| self.destination.err(e)),
            None => Ok(()),
        }
    }

    /// Rows added so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Rows with a value replaced because ClickHouse cannot hold it (see
    /// [`crate::unrepresentable`]); per column in [`RowInsert::substitutions`].
    pub fn clamped(&self) -> u64 {
        self.rows_substituted
    }

    /// The values replaced so far, per column, with an example key each.
    pub fn substitutions(&self) -> &Substitutions {
        &self.substitutions
    }

    /// Sends what is left and waits for ClickHouse to confirm the insert.
    pub async fn finish(mut self) -> Result<u64, DestinationError> {
        if self.rows == 0 {
            return Ok(0);
        }
        self.send().await?;
        if let Some(insert) = self.insert.take() {
            insert.end().await.map_err(|e| self.destination.err(e))?;
        }
        Ok(self.rows)
    }
}
