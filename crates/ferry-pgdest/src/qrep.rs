//! Query mirrors into PostgreSQL: the table of each mode, checks of a table that exists, and
//! the load of one partition.
//!
//! A query mirror's table holds the query's result columns, each with its exact type at the
//! source (a column read straight from a table has that column's type, collation and array
//! dimensions), and nothing of Ferry's: what makes a partition's load idempotent is kept in
//! `_ferry.loaded_partitions` ([`crate::state`]), not in the rows.
//!
//! | mode | table | a partition's rows |
//! |---|---|---|
//! | append | the result columns | `COPY … FROM STDIN (FORMAT binary)` into the table |
//! | upsert | the result columns, primary key `unique_key_columns` | `COPY` into a temporary table, then `INSERT … ON CONFLICT (key) DO UPDATE`, the higher version winning |
//! | overwrite | as append, loaded into a fresh table | as append; the fresh table is swapped in at the end ([`Destination::swap_in`]: in one transaction the live table is dropped and the fresh one renamed into its place) |
//!
//! **Once, across crashes.** Each partition is loaded in one destination transaction that also
//! inserts the partition's line (mirror, table, run, partition, rows) into
//! `_ferry.loaded_partitions`. A crash before the commit leaves nothing of the attempt; after
//! it, the next attempt finds the line and answers [`Load::Done`] without reading the source.
//! So in append mode each row of a partition is added once, whatever the number of attempts.
//! Runs of a mirror follow one another (the engine finishes a run before it starts the next),
//! so when a partition of run `r` starts, the lines of the mirror's earlier runs are no longer
//! needed and are removed: the table holds at most one run's partitions per mirror.
//!
//! **Upsert.** The partition's rows are staged with binary `COPY` into a temporary table
//! (dropped at commit) and applied in the same transaction: one row per key (the one with the
//! highest version when the partition holds several), inserted, or replacing the table's row
//! of that key unless the table's is newer. The version is the row's watermark when the query
//! returns the watermark column (so a row read again by `watermark_lag`, or a partition read
//! again after a crash, never replaces a newer row); otherwise rows of a later run replace
//! those of an earlier one, since runs follow one another and each reads a later state.
//!
//! **A table that exists** is used if it can take the result: every result column there with
//! the same type and collation and not generated, its other columns nullable or with a
//! default, and in upsert mode a primary key or unique index on exactly the unique key. A
//! NOT NULL column where the query's column may hold NULL is accepted (the query's own
//! description says "may" of every computed column): a NULL there fails the partition with
//! PostgreSQL's error.

use async_trait::async_trait;
use ferry_core::destination::{
    Load, QueryDestination, QueryPartition, QueryTable, TableSpec, TableToken, TargetName,
    VersionSource,
};
use ferry_core::ident::{pg_ident, pg_qualified};
use ferry_core::qrep::QueryMode;
use ferry_core::{Error, ErrorKind, TableName};
use tokio_postgres::Client;
use tracing::info;

use crate::check::{compare_columns, Checker, Mismatch};
use crate::db::table_oid;
use crate::ddl::{create_table_sql, has_key_index, quoted_list};
use crate::load::{RangeSink, RangeTarget};
use crate::state::{self, Loaded};
use crate::PgDestination;

/// The temporary table an upsert partition is staged in (one per load connection).
const STAGE: &str = "pg_temp._ferry_partition";

/// The query's table as the table checks and DDL take it: the result columns, upsert's key
/// marked (and only upsert's).
fn spec(table: &QueryTable, into: &TargetName) -> TableSpec {
    let mut columns = table.columns.clone();
    if !matches!(table.mode, QueryMode::Upsert { .. }) {
        columns.iter_mut().for_each(|c| c.key_position = None);
    }
    TableSpec {
        id: table.id,
        source: TableName::new(&into.namespace, &into.table),
        target: into.clone(),
        columns,
    }
}

/// The unique key's columns, in key order (empty unless upsert).
fn key_names(spec: &TableSpec) -> Vec<String> {
    crate::ddl::key_names(spec)
}

/// `INSERT … ON CONFLICT` applying a staged partition (see the module doc). `version` is the
/// column holding each row's version, when a row carries its own.
pub(crate) fn upsert_sql(
    target: &str,
    stage: &str,
    columns: &[String],
    keys: &[String],
    version: Option<&str>,
) -> String {
    let cols = quoted_list(columns);
    let key = quoted_list(keys);
    let order = match version {
        Some(v) => format!("{key}, {} DESC NULLS LAST", pg_ident(v)),
        None => key.clone(),
    };
    let set: Vec<String> = columns
        .iter()
        .filter(|c| !keys.contains(c))
        .map(|c| format!("{q} = EXCLUDED.{q}", q = pg_ident(c)))
        .collect();
    let action = if set.is_empty() {
        "DO NOTHING".to_owned()
    } else {
        let mut a = format!("DO UPDATE SET {}", set.join(", "));
        if let Some(v) = version {
            let v = pg_ident(v);
            a.push_str(&format!(" WHERE t.{v} IS NULL OR t.{v} <= EXCLUDED.{v}"));
        }
        a
    };
    format!(
        "INSERT INTO {target} AS t ({cols}) SELECT DISTINCT ON ({key}) {cols} FROM {stage} \
         ORDER BY {order} ON CONFLICT ({key}) {action}"
    )
}

fn mismatch(sqlstate: &str, message: String, ddl: &str) -> Error {
    Error::new(ErrorKind::InvalidInput, sqlstate, message).with_hint(format!(
        "Ferry would create it as:\n{ddl}\nDrop the table, or make it so."
    ))
}

impl PgDestination {
    /// A table that exists: can it take the query's rows in this mode (see the module doc)?
    async fn check_existing_query_table(
        &self,
        client: &Client,
        spec: &TableSpec,
        oid: u32,
        ddl: &str,
    ) -> Result<(), Error> {
        let t = &spec.target;
        if let Some(m) = compare_columns(&self.db, client, spec, oid, false).await? {
            let (sqlstate, message) = match m {
                Mismatch::Missing(c) => ("42703", format!("destination table {t} has no column \"{c}\"")),
                Mismatch::Type { column, have, want } => (
                    "42804",
                    format!("column \"{column}\" of destination table {t} is {have}; the query's values are {want}"),
                ),
                Mismatch::Generated(c) => (
                    "42P16",
                    format!("column \"{c}\" of destination table {t} is generated, and Ferry writes the query's values into it"),
                ),
                Mismatch::NotNull(c) => (
                    "42P16",
                    format!("column \"{c}\" of destination table {t} is NOT NULL, and the query's values may be NULL"),
                ),
                Mismatch::ExtraNotNull(c) => (
                    "42P16",
                    format!("column \"{c}\" of destination table {t} is NOT NULL without a default, and the query returns no such column"),
                ),
            };
            return Err(mismatch(sqlstate, message, ddl));
        }
        let keys = key_names(spec);
        if !keys.is_empty() && !has_key_index(&self.db, client, oid, &keys).await? {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "42P16",
                format!(
                    "destination table {t} has no primary key or unique index on ({}); a query mirror in upsert mode needs one",
                    keys.join(", ")
                ),
            )
            .with_hint(format!(
                "Add it: ALTER TABLE {} ADD PRIMARY KEY ({}).",
                pg_qualified(&t.namespace, &t.table),
                quoted_list(&keys)
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl QueryDestination for PgDestination {
    async fn check_query_table(&self, table: &QueryTable, create: bool) -> Result<(), Error> {
        let client = self.db.connect("ferry setup").await?;
        let spec = spec(table, &table.target);
        let upsert = matches!(table.mode, QueryMode::Upsert { .. });
        let ddl = create_table_sql(&spec, &table.target, upsert)?;
        let mut checker = Checker::start(&self.db, &client).await?;
        checker.columns(&self.db, &client, &spec).await?;
        match table_oid(&self.db, &client, &table.target).await? {
            Some(oid) => {
                self.check_existing_query_table(&client, &spec, oid, &ddl)
                    .await?;
                checker.table_access(&self.db, &client, oid, &table.target).await?;
            }
            None if !create => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    "42P01",
                    format!("destination table {} does not exist", table.target),
                )
                .with_hint(format!(
                    "Create it as:\n{ddl}\nor let Ferry create it: setup_watermark_table_on_destination = true."
                )))
            }
            None => {}
        }
        checker.finish()
    }

    async fn create_query_table(
        &self,
        table: &QueryTable,
        into: &TargetName,
    ) -> Result<TableToken, Error> {
        let client = self.db.connect("ferry setup").await?;
        self.ensure_state(&client).await?;
        let upsert = matches!(table.mode, QueryMode::Upsert { .. });
        if self
            .create_unless_there(&client, &spec(table, into), into, upsert)
            .await?
        {
            info!(destination = %into, mode = table.mode.as_str(), "query mirror table created");
        }
        table_oid(&self.db, &client, into)
            .await?
            .map(|oid| TableToken(oid.to_string()))
            .ok_or_else(|| Error::internal(format!("table {into} vanished after it was created")))
    }

    async fn load_partition(
        &self,
        table: &QueryTable,
        into: &TargetName,
        p: &QueryPartition,
    ) -> Result<Load, Error> {
        let client = self.db.connect("ferry load").await?;
        self.ensure_state(&client).await?;
        let oid = table_oid(&self.db, &client, into)
            .await?
            .ok_or_else(|| Self::table_missing(into))?;
        state::forget_partitions_before(&self.db, &client, &self.mirror, p.run).await?;
        let record = Loaded::Partition {
            run: p.run,
            partition: p.partition,
        };
        if let Some(rows) = state::loaded(&self.db, &client, &self.mirror, oid, record).await? {
            return Ok(Load::Done { rows });
        }
        let recode = self.recode_for(&client, oid, &table.columns).await?;
        drop(client);
        let spec = spec(table, into);
        let names: Vec<String> = spec.columns.iter().map(|c| c.name.clone()).collect();
        let live = pg_qualified(&into.namespace, &into.table);
        let keys = key_names(&spec);
        let (before, copy_into, after) = if keys.is_empty() {
            (None, live, None)
        } else {
            let version = match table.version {
                VersionSource::Column(i) => spec.columns.get(i).map(|c| c.name.as_str()),
                VersionSource::Run => None,
            };
            (
                Some(format!(
                    "CREATE TEMPORARY TABLE {STAGE} ON COMMIT DROP AS SELECT {} FROM {live} WITH NO DATA",
                    quoted_list(&names)
                )),
                STAGE.to_owned(),
                Some(upsert_sql(&live, STAGE, &names, &keys, version)),
            )
        };
        let target = RangeTarget {
            mirror: self.mirror.clone(),
            table_oid: oid,
            record,
            before,
            copy_sql: format!(
                "COPY {copy_into} ({}) FROM STDIN (FORMAT binary)",
                quoted_list(&names)
            ),
            after,
            recode,
        };
        let sink = RangeSink::open(self.db.clone(), target, table.columns.len()).await?;
        Ok(Load::Sink(Box::new(sink)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn upsert_keeps_the_newest_row_of_each_key() {
        let sql = upsert_sql(
            "\"public\".\"t\"",
            STAGE,
            &s(&["id", "note", "at"]),
            &s(&["id"]),
            Some("at"),
        );
        assert_eq!(
            sql,
            "INSERT INTO \"public\".\"t\" AS t (\"id\", \"note\", \"at\") SELECT DISTINCT ON (\"id\") \
             \"id\", \"note\", \"at\" FROM pg_temp._ferry_partition ORDER BY \"id\", \"at\" DESC NULLS LAST \
             ON CONFLICT (\"id\") DO UPDATE SET \"note\" = EXCLUDED.\"note\", \"at\" = EXCLUDED.\"at\" \
             WHERE t.\"at\" IS NULL OR t.\"at\" <= EXCLUDED.\"at\""
        );
        // The run's version: a later run's row replaces an earlier one.
        let sql = upsert_sql("t", "s", &s(&["a", "b", "c"]), &s(&["b", "a"]), None);
        assert!(
            sql.ends_with("ORDER BY \"b\", \"a\" ON CONFLICT (\"b\", \"a\") DO UPDATE SET \"c\" = EXCLUDED.\"c\""),
            "{sql}"
        );
        // Nothing but the key: a key seen again changes nothing.
        let sql = upsert_sql("t", "s", &s(&["id"]), &s(&["id"]), Some("id"));
        assert!(sql.ends_with("ON CONFLICT (\"id\") DO NOTHING"), "{sql}");
    }

    #[test]
    fn only_upsert_tables_have_a_key() {
        let col = |name: &str, key| ferry_core::ColumnSchema {
            name: name.into(),
            type_oid: 20,
            type_name: "bigint".into(),
            kind: ferry_core::ValueKind::Int64,
            nullable: true,
            key_position: key,
            pg_type: None,
        };
        let mut table = QueryTable {
            id: 1,
            target: TargetName::new("public", "t"),
            columns: vec![col("id", Some(1)), col("v", None)],
            mode: QueryMode::Upsert {
                unique_key: vec!["id".into()],
            },
            version: VersionSource::Run,
        };
        assert_eq!(key_names(&spec(&table, &table.target)), s(&["id"]));
        table.mode = QueryMode::Append;
        assert!(key_names(&spec(&table, &table.target)).is_empty());
    }
}
