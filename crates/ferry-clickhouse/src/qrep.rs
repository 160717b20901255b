//! Query mirrors into ClickHouse: the table of each mode, checks of a table that exists, and
//! the sink of one partition.
//!
//! Every table has Ferry's `_ferry_version`, `_ferry_is_deleted` (always 0: a query mirror sees
//! no deletions) and `_ferry_synced_at` after the query's columns, as CDC tables have
//! ([`crate::table`]); what tells rows apart depends on the mode:
//!
//! | mode | engine | extra columns | `ORDER BY` | `_ferry_version` | read with |
//! |---|---|---|---|---|---|
//! | append, overwrite | `MergeTree` | `_ferry_run Int64`, `_ferry_partition Int32` | `(_ferry_run, _ferry_partition)` | the attempt at the partition | `SELECT … FROM t` |
//! | upsert | `ReplacingMergeTree` | — | the unique key | the row's watermark, or its run's ([`VersionSource`]) | `SELECT … FROM t FINAL` |
//!
//! **Append** keeps every row, in the order runs and partitions copied them (which follows the
//! watermark). Each row carries its run (the catalog's id, never reused) and partition. A
//! partition is one streamed insert; a crash part-way through can leave some of its blocks
//! behind, so an attempt after the first removes what earlier attempts left before it inserts
//! (a lightweight `DELETE … WHERE _ferry_run = r AND _ferry_partition = p`, synchronous), and
//! once its insert is in, removes again any row of an earlier attempt (`_ferry_version` below
//! its own) that an insert still under way then might have added. So after any number of
//! crashes a partition is in the table once. The two extra columns are constant within a
//! partition: they cost ClickHouse next to nothing to store, and add no sorting.
//!
//! **Upsert** keeps the row with the highest version per key (`SELECT … FINAL`): the row's own
//! watermark when the query returns the watermark column, else the watermark its run read up
//! to, so that a later run's row replaces an earlier one; a partition copied again writes the
//! same keys at the same versions.
//!
//! **Overwrite** loads as append does, into a fresh table swapped in at the end (the engine
//! calls [`Destination::swap_in`]).

use async_trait::async_trait;
use bytes::Bytes;
use ferry_core::binary_copy::{CopyFramer, DEFAULT_MAX_ROW_BYTES};
use ferry_core::destination::{
    Destination, Load, LoadSink, QueryDestination, QueryPartition, QueryTable, Summary, TableToken,
    TargetName, VersionSource,
};
use ferry_core::ident::{ch_ident, ch_literal, ch_qualified};
use ferry_core::qrep::QueryMode;
use ferry_core::{ColumnSchema, Error, ErrorKind, ValueKind};
use tracing::info;

use crate::destination::{ClickHouseDestination, RESERVED_COLUMNS};
use crate::load::{
    frame_error, policy, send_block, summarise, transcode_error, BLOCK_BYTES, BLOCK_ROWS,
};
use crate::native::NativeBlock;
use crate::table::{create_table_sql, ClickHouse, RowInsert, IS_DELETED_COLUMN, VERSION_COLUMN};
use crate::transcode::Transcoder;
use crate::types::clickhouse_type;

/// The run a row of append or overwrite mode came from (the run's catalog id).
pub const RUN_COLUMN: &str = "_ferry_run";
/// The partition of the run.
pub const PARTITION_COLUMN: &str = "_ferry_partition";

const IDENTITY: [&str; 2] = [RUN_COLUMN, PARTITION_COLUMN];

fn ferry_column(name: &str, kind: ValueKind, key: u16) -> ColumnSchema {
    ColumnSchema {
        name: name.to_owned(),
        type_oid: 0,
        type_name: String::new(),
        kind,
        nullable: false,
        key_position: Some(key),
        pg_type: None,
    }
}

fn appends(table: &QueryTable) -> bool {
    !matches!(table.mode, QueryMode::Upsert { .. })
}

/// The columns a table of this mode stores before Ferry's version and deletion columns, with
/// the key positions its `ORDER BY` follows.
fn storage_columns(table: &QueryTable) -> Vec<ColumnSchema> {
    let mut columns = table.columns.clone();
    if appends(table) {
        columns.iter_mut().for_each(|c| c.key_position = None);
        columns.push(ferry_column(RUN_COLUMN, ValueKind::Int64, 1));
        columns.push(ferry_column(PARTITION_COLUMN, ValueKind::Int32, 2));
    }
    columns
}

/// `CREATE TABLE` for a query mirror's table (see the module doc).
pub fn query_table_sql(table: &QueryTable, into: &TargetName) -> String {
    let storage = storage_columns(table);
    let replacing = create_table_sql(
        &into.namespace,
        &into.table,
        &storage,
        &crate::layout::Resolved::default(),
        &crate::layout::Meta::default(),
    );
    if !appends(table) {
        return replacing;
    }
    // The same columns and order, kept as they come: a MergeTree.
    let engine = format!(
        "ENGINE = ReplacingMergeTree({}, {})",
        ch_ident(VERSION_COLUMN),
        ch_ident(IS_DELETED_COLUMN)
    );
    replacing.replacen(&engine, "ENGINE = MergeTree", 1)
}

fn order_by(columns: &[ColumnSchema]) -> String {
    let mut keys: Vec<&ColumnSchema> = columns
        .iter()
        .filter(|c| c.key_position.is_some())
        .collect();
    keys.sort_by_key(|c| c.key_position);
    keys.iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn mismatch(sqlstate: &str, message: String, table: &QueryTable, ddl: &str) -> Error {
    Error::new(ErrorKind::InvalidInput, sqlstate, message).with_hint(format!(
        "Ferry would create {} as:\n{ddl}\nDrop the table, or create it so.",
        table.target
    ))
}

impl ClickHouseDestination {
    /// Checks that a table that exists fits the mode (see the module doc).
    async fn check_existing(
        &self,
        table: &QueryTable,
        storage: &[ColumnSchema],
    ) -> Result<(), Error> {
        let t = &table.target;
        let ddl = query_table_sql(table, t);
        let sql = format!(
            "SELECT name, type FROM system.columns WHERE database = {} AND table = {}",
            ch_literal(&t.namespace),
            ch_literal(&t.table)
        );
        let present: Vec<(String, String)> = self
            .ch
            .client()
            .query(&sql)
            .fetch_all()
            .await
            .map_err(|e| self.ch.err(e))?;
        let expected = storage
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    clickhouse_type(&c.kind, c.nullable),
                    c.nullable,
                )
            })
            .chain([
                (VERSION_COLUMN.to_owned(), "UInt64".to_owned(), false),
                (IS_DELETED_COLUMN.to_owned(), "UInt8".to_owned(), false),
            ]);
        for (name, ty, nullable) in expected {
            match present.iter().find(|(n, _)| *n == name) {
                None => {
                    return Err(mismatch(
                        "42703",
                        format!("destination table {t} has no column \"{name}\""),
                        table,
                        &ddl,
                    ))
                }
                // A column that holds NULL where the query has none takes the query's values too.
                Some((_, actual))
                    if *actual != ty && (nullable || *actual != format!("Nullable({ty})")) =>
                {
                    return Err(mismatch(
                        "42804",
                        format!("column \"{name}\" of destination table {t} is {actual}; the query's values need {ty}"),
                        table,
                        &ddl,
                    ))
                }
                Some(_) => {}
            }
        }
        let sql = format!(
            "SELECT engine, sorting_key FROM system.tables WHERE database = {} AND name = {}",
            ch_literal(&t.namespace),
            ch_literal(&t.table)
        );
        let (engine, key): (String, String) = self
            .ch
            .client()
            .query(&sql)
            .fetch_one()
            .await
            .map_err(|e| self.ch.err(e))?;
        let want = order_by(storage);
        let want_engine = if appends(table) {
            "MergeTree"
        } else {
            "ReplacingMergeTree"
        };
        if engine != want_engine || key.replace(' ', "") != want.replace(' ', "") {
            return Err(mismatch(
                "42P16",
                format!(
                    "destination table {t} is a {engine} ordered by ({key}); a query mirror in {} mode needs a {want_engine} ordered by ({want})",
                    table.mode.as_str()
                ),
                table,
                &ddl,
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl QueryDestination for ClickHouseDestination {
    async fn check_query_table(&self, table: &QueryTable, create: bool) -> Result<(), Error> {
        let t = &table.target;
        if let Some(c) = table.columns.iter().find(|c| {
            RESERVED_COLUMNS.contains(&c.name.as_str()) || IDENTITY.contains(&c.name.as_str())
        }) {
            return Err(Error::invalid(
                "42939",
                format!(
                    "the query returns a column named \"{}\", the name of one of Ferry's own columns in ClickHouse",
                    c.name
                ),
            )
            .with_hint("Name it otherwise in the query: SELECT … AS other_name."));
        }
        let storage = storage_columns(table);
        Transcoder::new(&storage, policy(self.mirror.unrepresentable))
            .map_err(|e| Error::new(ErrorKind::Unsupported, "0A000", e.to_string()))?;
        if !self.ch.database_exists(&t.namespace).await? {
            return Err(Error::new(
                ErrorKind::NotFound,
                "3D000",
                format!("database \"{}\" does not exist in ClickHouse", t.namespace),
            )
            .with_hint(format!(
                "Create it first (CREATE DATABASE {}), or name another in destination_table_name.",
                ch_ident(&t.namespace)
            )));
        }
        if self.ch.table_exists(&t.namespace, &t.table).await? {
            return self.check_existing(table, &storage).await;
        }
        if !create {
            return Err(Error::new(
                ErrorKind::NotFound,
                "42P01",
                format!("destination table {t} does not exist"),
            )
            .with_hint(format!(
                "Create it as:\n{}\nor let Ferry create it: setup_watermark_table_on_destination = true.",
                query_table_sql(table, t)
            )));
        }
        Ok(())
    }

    async fn create_query_table(
        &self,
        table: &QueryTable,
        into: &TargetName,
    ) -> Result<TableToken, Error> {
        if !self.ch.table_exists(&into.namespace, &into.table).await? {
            self.ch.execute(&query_table_sql(table, into)).await?;
        }
        self.table_token(into)
            .await?
            .ok_or_else(|| Error::internal(format!("table {into} vanished after it was created")))
    }

    async fn load_partition(
        &self,
        table: &QueryTable,
        into: &TargetName,
        partition: &QueryPartition,
    ) -> Result<Load, Error> {
        if appends(table) && partition.attempt > 0 {
            remove_partition(&self.ch, into, partition, None).await?;
        }
        Ok(Load::Sink(Box::new(PartitionSink::new(
            &self.ch,
            table,
            into,
            partition,
            policy(self.mirror.unrepresentable),
        )?)))
    }
}

/// Removes what earlier attempts at a partition left (append and overwrite modes): every row
/// of the partition, or those of attempts before `before` only.
async fn remove_partition(
    ch: &ClickHouse,
    into: &TargetName,
    p: &QueryPartition,
    before: Option<u64>,
) -> Result<(), Error> {
    let table = ch_qualified(&into.namespace, &into.table);
    let mut condition = format!(
        "{} = {} AND {} = {}",
        ch_ident(RUN_COLUMN),
        p.run,
        ch_ident(PARTITION_COLUMN),
        p.partition
    );
    if let Some(attempt) = before {
        condition.push_str(&format!(" AND {} < {attempt}", ch_ident(VERSION_COLUMN)));
    }
    let left: u64 = ch
        .client()
        .query(&format!("SELECT count() FROM {table} WHERE {condition}"))
        .fetch_one()
        .await
        .map_err(|e| ch.err(e))?;
    if left > 0 {
        ch.execute(&format!("DELETE FROM {table} WHERE {condition}"))
            .await?;
        info!(table = %into, run = p.run, partition = p.partition, rows = left, "removed the rows an interrupted attempt at a partition left");
    }
    Ok(())
}

/// How a partition's rows get their identity or version.
enum Rows {
    /// Append, overwrite: run, partition and row number; the attempt as version.
    Identity {
        run: [u8; 8],
        partition: [u8; 4],
        attempt: u64,
    },
    /// Upsert: the version from a column of the row, or the run's.
    Versioned {
        column: Option<(usize, ValueKind)>,
        run: u64,
    },
}

/// The sink of one partition: a binary COPY stream in, one streamed insert of `Native` blocks
/// out (as the initial load's ranges, [`crate::load`]).
struct PartitionSink {
    /// For a later attempt in append mode: where to remove earlier attempts' late rows once
    /// this one's insert is in.
    retry: Option<(ClickHouse, TargetName, QueryPartition)>,
    framer: CopyFramer,
    transcoder: Transcoder,
    block: NativeBlock,
    out: Vec<u8>,
    insert: RowInsert,
    columns: Vec<ColumnSchema>,
    table: i64,
    rows_kind: Rows,
    rows: u64,
}

impl PartitionSink {
    fn new(
        ch: &ClickHouse,
        table: &QueryTable,
        into: &TargetName,
        p: &QueryPartition,
        policy: crate::unrepresentable::UnrepresentablePolicy,
    ) -> Result<PartitionSink, Error> {
        let storage = storage_columns(table);
        let rows_kind = match (&table.mode, table.version) {
            (QueryMode::Upsert { .. }, VersionSource::Column(i)) => Rows::Versioned {
                column: table.columns.get(i).map(|c| (i, c.kind.clone())),
                run: p.version,
            },
            (QueryMode::Upsert { .. }, VersionSource::Run) => Rows::Versioned {
                column: None,
                run: p.version,
            },
            _ => Rows::Identity {
                run: p.run.to_be_bytes(),
                partition: p.partition.to_be_bytes(),
                attempt: u64::try_from(p.attempt).unwrap_or(0),
            },
        };
        let retry = (appends(table) && p.attempt > 0).then(|| (ch.clone(), into.clone(), *p));
        Ok(PartitionSink {
            retry,
            framer: CopyFramer::new(table.columns.len(), DEFAULT_MAX_ROW_BYTES),
            transcoder: Transcoder::new(&storage, policy).map_err(transcode_error)?,
            block: NativeBlock::new(&storage, BLOCK_ROWS, BLOCK_BYTES),
            out: Vec::new(),
            insert: ch.insert_native(&into.namespace, &into.table, &storage),
            columns: table.columns.clone(),
            table: table.id,
            rows_kind,
            rows: 0,
        })
    }

    async fn send_block(&mut self) -> Result<(), Error> {
        send_block(&mut self.block, &mut self.out, &mut self.insert).await
    }
}

/// The order-preserving version of a watermark field in its canonical form (NULL: 0).
fn field_version(kind: &ValueKind, field: Option<&[u8]>) -> u64 {
    let v: i64 = match (kind, field) {
        (ValueKind::Int16, Some(b)) if b.len() == 2 => i64::from(i16::from_be_bytes([b[0], b[1]])),
        (ValueKind::Int32 | ValueKind::Date, Some(b)) if b.len() == 4 => {
            i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
        (ValueKind::Int64 | ValueKind::Timestamp | ValueKind::TimestampTz, Some(b))
            if b.len() == 8 =>
        {
            i64::from_be_bytes(b.try_into().unwrap_or([0; 8]))
        }
        _ => return 0,
    };
    (v as u64) ^ (1 << 63)
}

#[async_trait]
impl LoadSink for PartitionSink {
    async fn write(&mut self, chunk: Bytes) -> Result<(), Error> {
        let mut pos = 0;
        loop {
            let full = {
                let Some(row) = self
                    .framer
                    .next_row(&chunk, &mut pos)
                    .map_err(frame_error)?
                else {
                    break;
                };
                match &self.rows_kind {
                    Rows::Identity {
                        run,
                        partition,
                        attempt,
                    } => {
                        let extra = [Some(&run[..]), Some(&partition[..])];
                        self.transcoder.append_native(
                            row.fields().chain(extra),
                            *attempt,
                            false,
                            &mut self.block,
                        )
                    }
                    Rows::Versioned { column, run } => {
                        let version = match column {
                            Some((i, kind)) => field_version(kind, row.fields().nth(*i).flatten()),
                            None => *run,
                        };
                        self.transcoder
                            .append_native(row.fields(), version, false, &mut self.block)
                    }
                }
                .map_err(transcode_error)?;
                self.rows += 1;
                self.block.is_full()
            };
            if full {
                self.send_block().await?;
            }
        }
        Ok(())
    }

    fn rows(&self) -> u64 {
        self.rows
    }

    async fn finish(mut self: Box<Self>) -> Result<Summary, Error> {
        self.framer.finish().map_err(frame_error)?;
        self.send_block().await?;
        let columns = &self.columns;
        let substitutions = summarise(self.table, columns, self.transcoder.substitutions());
        let PartitionSink { insert, retry, .. } = *self;
        let rows = insert.finish().await?;
        if let Some((ch, into, p)) = retry {
            remove_partition(&ch, &into, &p, Some(u64::try_from(p.attempt).unwrap_or(0))).await?;
        }
        Ok(Summary {
            rows,
            substitutions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, kind: ValueKind) -> ColumnSchema {
        ColumnSchema {
            name: name.into(),
            type_oid: 0,
            type_name: String::new(),
            kind,
            nullable: true,
            key_position: None,
            pg_type: None,
        }
    }

    #[test]
    fn each_mode_has_its_layout() {
        let mut table = QueryTable {
            id: 1,
            target: TargetName::new("db", "t"),
            columns: vec![col("id", ValueKind::Int64), col("v", ValueKind::Text)],
            mode: QueryMode::Append,
            version: VersionSource::Run,
        };
        let into = TargetName::new("db", "t");
        let ddl = query_table_sql(&table, &into);
        assert!(
            ddl.contains("ENGINE = MergeTree\nORDER BY (`_ferry_run`, `_ferry_partition`)"),
            "{ddl}"
        );
        table.mode = QueryMode::Upsert {
            unique_key: vec!["id".into()],
        };
        table.columns[0].key_position = Some(1);
        let ddl = query_table_sql(&table, &into);
        assert!(
            ddl.contains("ReplacingMergeTree(`_ferry_version`, `_ferry_is_deleted`)"),
            "{ddl}"
        );
        assert!(ddl.contains("ORDER BY (`id`)"), "{ddl}");
        assert!(!ddl.contains(RUN_COLUMN), "{ddl}");
        assert_eq!(order_by(&storage_columns(&table)), "id");
    }

    #[test]
    fn versions_keep_the_watermarks_order() {
        let v = |x: i64| field_version(&ValueKind::Int64, Some(&x.to_be_bytes()));
        assert!(v(-5) < v(0) && v(0) < v(7));
        let d = |x: i32| field_version(&ValueKind::Date, Some(&x.to_be_bytes()));
        assert!(d(-1) < d(1));
        assert_eq!(field_version(&ValueKind::Int64, None), 0);
        assert_eq!(
            v(42),
            ferry_core::qrep::Watermark::new(ferry_core::qrep::WatermarkKind::Int64, 42).version()
        );
    }
}
