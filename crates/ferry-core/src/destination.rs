//! The destination boundary: what the engine asks of a place rows are replicated into.
//!
//! The engine (`ferry-flow`) orchestrates; it speaks no destination's dialect. Everything it
//! needs from a destination is in the [`Destination`] trait, implemented by each destination
//! crate (`ferry-clickhouse`, `ferry-pgdest`) and handed to the engine as an
//! `Arc<dyn Destination>` built for one mirror. A trait rather than a closed enum, so that a new
//! destination (a ClickHouse cluster, another database) is a new crate and one line where the
//! engine turns a peer into a destination, and nothing else in the engine changes.
//!
//! # What travels
//!
//! - The initial load hands each CTID range to a [`LoadSink`] as the source sent it: a binary
//!   `COPY` stream of the table's copied columns, each field in the form [`Destination::wire`]
//!   asked for. A sink may pass the bytes through (same types on both sides) or transcode
//!   them.
//! - Streaming hands over [`TableChanges`]: row changes with their versions, deletion and the
//!   old key, unchanged TOAST fields marked as such (see [`crate::change`]).
//!
//! # The durability contract
//!
//! - [`LoadSink::finish`] returns only once the range's rows are durable in the destination.
//!   The engine records the range as done in the catalog after that. A range may be handed
//!   over again after a crash, read in a newer snapshot: a destination must end with each row
//!   once (by key), or recognise a range it already holds ([`Destination::load`] answers
//!   [`Load::Done`]).
//! - [`Apply::write`] may be called several times for one batch; [`Apply::commit`] returns
//!   only once everything written since the last commit is durable. The engine confirms a
//!   position to the source only after `commit` returned. After a crash the engine replays
//!   from its last confirmed position, so every write must be idempotent under replay: the
//!   same changes applied again leave the same state. A destination that keeps its own
//!   position with its data ([`Capabilities::stores_position`]) commits the position in the
//!   same transaction and reports it from [`Destination::position`], and the engine resumes
//!   from there.
//! - An error says whether it concerns one table ([`ApplyError::table`]): the engine then
//!   fails that table alone and goes on with the others.
//!
//! # Query mirrors
//!
//! A destination that can hold a query mirror's table answers [`Destination::query`] with
//! its [`QueryDestination`]. A query mirror's run is cut into partitions, each a binary COPY
//! stream of the query's result (fields in the form [`Destination::wire`] asks for) handed to
//! a [`LoadSink`] from [`QueryDestination::load_partition`], with the same durability
//! contract as a range of the initial load: `finish` returns once the partition's rows are
//! durable, and the engine records the partition as done only after that. A partition may be
//! handed over again after a crash (read again, possibly seeing newer rows): the destination
//! must then end with that partition's rows once — by recognising a partition it recorded
//! with its rows ([`Load::Done`]), or by replacing what an earlier attempt left
//! ([`QueryPartition::attempt`]). What "once" means depends on the mode
//! ([`crate::qrep::QueryMode`]): in append mode each row of the partition is added once; in
//! upsert mode the row with the highest version per key is kept ([`QueryTable::version`]); in
//! overwrite mode partitions load into a fresh table, swapped in by [`Destination::swap_in`]
//! once all are in.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::change::TableChanges;
use crate::qrep::QueryMode;
use crate::{ColumnSchema, Error, Lsn, TableName};

/// What a destination is told about the mirror it serves, when it is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorContext {
    /// The mirror's name (unique in the catalog): what a destination keeps for the mirror
    /// (its position, say) is kept under it.
    pub mirror: String,
    /// What a value the destination cannot hold does.
    pub unrepresentable: crate::mirror::Unrepresentable,
    /// How each table is laid out ([`crate::layout`]); a destination refuses in
    /// [`Destination::check`] what it cannot honour.
    pub layouts: crate::layout::Layouts,
    /// Its own columns' names and whether deleted rows stay visible; likewise checked.
    pub meta_columns: crate::layout::MetaColumns,
}

/// Where a table lives in the destination: a namespace (a ClickHouse database, a PostgreSQL
/// schema) and a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TargetName {
    pub namespace: String,
    pub table: String,
}

impl TargetName {
    pub fn new(namespace: impl Into<String>, table: impl Into<String>) -> TargetName {
        TargetName {
            namespace: namespace.into(),
            table: table.into(),
        }
    }
}

impl std::fmt::Display for TargetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.namespace, self.table)
    }
}

/// A replicated table, as a destination needs to know it.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSpec {
    /// The table's id in the catalog (stable for the mirror's life).
    pub id: i64,
    pub source: TableName,
    /// The live destination table.
    pub target: TargetName,
    /// The copied columns, in the source's order (columns added later at the end).
    pub columns: Vec<ColumnSchema>,
}

impl TableSpec {
    /// Indices of the key columns, in key order; empty for a table without a key (REPLICA
    /// IDENTITY FULL, where the whole row identifies it).
    pub fn key_columns(&self) -> Vec<usize> {
        let mut keys: Vec<usize> = (0..self.columns.len())
            .filter(|&i| self.columns[i].key_position.is_some())
            .collect();
        keys.sort_by_key(|&i| self.columns[i].key_position);
        keys
    }

    pub fn has_key(&self) -> bool {
        self.columns.iter().any(|c| c.key_position.is_some())
    }
}

/// The form fields must arrive in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// The canonical binary form of each column's kind ([`crate::canonical`]).
    Canonical,
    /// The binary send format of the column's own PostgreSQL type (for a PostgreSQL
    /// destination with the same types).
    Native,
}

/// What a destination can do beyond the contract every destination keeps.
#[derive(Debug, Clone, Copy, Default)]
pub struct Capabilities {
    /// It stores the mirror's position atomically with the data.
    pub stores_position: bool,
}

/// An opaque identity of a destination table (a ClickHouse UUID, a PostgreSQL OID), by which a
/// swap interrupted by a crash is recognised as done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableToken(pub String);

/// How a range of the initial load starts.
pub enum Load {
    /// Send the range's rows here.
    Sink(Box<dyn LoadSink>),
    /// The destination holds this range already (written before a crash); with its rows.
    Done { rows: u64 },
}

/// Values the destination could not hold and replaced, per column.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Substitution {
    /// The table's catalog id.
    pub table: i64,
    pub column: String,
    pub count: u64,
    /// The key of the first row concerned, as text (none for a table without a key).
    pub example_key: Option<String>,
}

/// What a range or a write did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub rows: u64,
    pub substitutions: Vec<Substitution>,
}

/// A failure to apply changes, and the table it concerns when it concerns only one.
#[derive(Debug, Clone)]
pub struct ApplyError {
    pub error: Error,
    /// The catalog id of the table at fault (a value it cannot hold, its destination table
    /// gone); `None` when the destination as a whole failed.
    pub table: Option<i64>,
}

impl From<Error> for ApplyError {
    fn from(error: Error) -> Self {
        ApplyError { error, table: None }
    }
}

impl ApplyError {
    pub fn for_table(table: i64, error: Error) -> ApplyError {
        ApplyError {
            error,
            table: Some(table),
        }
    }
}

/// A destination, built for one mirror.
#[async_trait]
pub trait Destination: Send + Sync {
    /// "ClickHouse at host:port", for messages.
    fn describe(&self) -> String;

    /// Where a destination name without a namespace goes.
    fn default_namespace(&self) -> &str;

    fn wire(&self) -> Wire;

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// Checks that every table can be created and hold its columns: the namespace exists, no
    /// table of that name is in the way (or one that is compatible), every type can be held,
    /// no column clashes with the destination's own. Creates nothing.
    async fn check(&self, tables: &[TableSpec]) -> Result<(), Error>;

    /// Creates `into` for the table (the live table, or a fresh one to swap in later) unless a
    /// table of that name and identity exists; returns its identity.
    async fn create_table(&self, table: &TableSpec, into: &TargetName)
        -> Result<TableToken, Error>;

    /// A table's identity, or `None` when there is no such table.
    async fn table_token(&self, name: &TargetName) -> Result<Option<TableToken>, Error>;

    /// Drops a table if it exists.
    async fn drop_table(&self, name: &TargetName) -> Result<(), Error>;

    /// Makes `fresh` (identity `token`) the table's live table and drops the old data. Safe to
    /// call again after a crash part-way.
    async fn swap_in(
        &self,
        table: &TableSpec,
        fresh: &TargetName,
        token: &TableToken,
    ) -> Result<(), Error>;

    /// Starts loading range `range` of the initial load into `into`.
    async fn load(&self, table: &TableSpec, into: &TargetName, range: i32) -> Result<Load, Error>;

    /// Every range of the table is loaded (build what is better built after a load).
    async fn finish_load(&self, table: &TableSpec, into: &TargetName) -> Result<(), Error>;

    /// Columns added at the source: add them to the destination table before rows carry them.
    async fn add_columns(&self, table: &TableSpec, added: &[ColumnSchema]) -> Result<(), Error>;

    /// Starts applying changes.
    async fn begin_apply(&self) -> Result<Box<dyn Apply>, Error>;

    /// The position stored with the data, for a destination that stores one.
    async fn position(&self) -> Result<Option<Lsn>, Error> {
        Ok(None)
    }

    /// The mirror is dropped: remove what the destination kept for it besides its tables.
    async fn forget(&self) -> Result<(), Error> {
        Ok(())
    }

    /// Query mirrors into this destination; `None` when it cannot hold them.
    fn query(&self) -> Option<&dyn QueryDestination> {
        None
    }
}

/// A query mirror's destination table, as a destination needs to know it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryTable {
    /// The id of its row in the catalog's tables (values replaced are counted under it).
    pub id: i64,
    /// The live table.
    pub target: TargetName,
    /// The query's result columns, in its order. In upsert mode `key_position` marks the
    /// unique key's columns, in `unique_key_columns` order; otherwise no column has one.
    pub columns: Vec<ColumnSchema>,
    pub mode: QueryMode,
    /// How upsert mode orders the versions of a key's row.
    pub version: VersionSource,
}

impl QueryTable {
    /// The table as [`Destination::swap_in`] and [`Destination::drop_table`] take it.
    pub fn spec(&self) -> TableSpec {
        TableSpec {
            id: self.id,
            source: TableName::new("query", &self.target.table),
            target: self.target.clone(),
            columns: self.columns.clone(),
        }
    }
}

/// Where a row's version (upsert mode: the highest wins) comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSource {
    /// The query returns the watermark column, at this index: each row's own watermark
    /// (order-preserving, see [`crate::qrep::Watermark::version`]).
    Column(usize),
    /// The run's: [`QueryPartition::version`] (a later run read a later state).
    Run,
}

/// One partition of a query mirror's run, as a destination tells its rows apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryPartition {
    /// The run's id: unique in the catalog, across mirrors, never reused.
    pub run: i64,
    pub partition: i32,
    /// How many attempts at this partition came before (0 the first time). An attempt after
    /// the first may find rows an interrupted one left.
    pub attempt: i32,
    /// The run's version (its upper watermark, order-preserving): rows of later runs have
    /// higher ones.
    pub version: u64,
}

/// What a destination does for query mirrors. The engine asks a destination for it through
/// [`Destination::query`].
#[async_trait]
pub trait QueryDestination: Send + Sync {
    /// Checks the destination table without changing anything. With `create`, a missing
    /// table must be creatable (its namespace exists, every type can be held, no column
    /// clashes with the destination's own); a table that exists, and every table without
    /// `create`, must fit: every result column there with its type, and what the mode needs.
    async fn check_query_table(&self, table: &QueryTable, create: bool) -> Result<(), Error>;

    /// Creates `into` (the live table, or overwrite's fresh one) with the mode's layout
    /// unless a table of that name exists; returns its identity.
    async fn create_query_table(
        &self,
        table: &QueryTable,
        into: &TargetName,
    ) -> Result<TableToken, Error>;

    /// Starts loading one partition into `into`.
    async fn load_partition(
        &self,
        table: &QueryTable,
        into: &TargetName,
        partition: &QueryPartition,
    ) -> Result<Load, Error>;
}

/// One range of the initial load on its way in.
#[async_trait]
pub trait LoadSink: Send {
    /// The next piece of the binary COPY stream, as the source sent it.
    async fn write(&mut self, chunk: Bytes) -> Result<(), Error>;

    /// Rows taken so far (for live progress).
    fn rows(&self) -> u64;

    /// Ends the range; returns once its rows are durable.
    async fn finish(self: Box<Self>) -> Result<Summary, Error>;
}

/// Applying streamed changes.
#[async_trait]
pub trait Apply: Send {
    /// Applies changes, table by table in the order given (a table's changes in source order).
    async fn write(&mut self, changes: Vec<TableChanges>) -> Result<Summary, ApplyError>;

    /// Makes everything written since the last commit durable, with `position` (everything
    /// before it is in the destination).
    async fn commit(&mut self, position: Lsn) -> Result<(), ApplyError>;
}

/// A shared destination.
pub type DestinationRef = Arc<dyn Destination>;
