//! What a mirror needs to know about its source before it starts: the server's settings and
//! the tables' shapes.

use ferry_core::ident::{pg_ident, pg_literal};
use ferry_core::peer::PostgresConfig;
use ferry_core::{ColumnSchema, ErrorKind, TableName};
use tokio_postgres::Client;

use crate::connect::SourceError;
use crate::types::{value_kind, Mapping, PgColumn, COLUMNS_QUERY};

/// A heap relation a table's rows are read from: the table itself, or a leaf partition.
#[derive(Debug, Clone, PartialEq)]
pub struct HeapRelation {
    pub name: TableName,
    pub pages: u64,
    /// The planner's row estimate; negative when the relation was never analysed.
    pub tuples: f64,
}

/// A source table as a mirror copies it.
#[derive(Debug, Clone)]
pub struct SourceTable {
    pub name: TableName,
    pub oid: u32,
    /// `d` default (primary key), `f` full, `i` index, `n` nothing.
    pub replica_identity: char,
    /// The copied columns, in the source's order.
    pub columns: Vec<ColumnSchema>,
    /// How each copied column is selected, in the same order.
    pub mappings: Vec<Mapping>,
    /// Where the rows are: one relation, or the leaves of a partitioned table.
    pub heaps: Vec<HeapRelation>,
}

impl SourceTable {
    /// Estimated rows, from the statistics.
    pub fn estimated_rows(&self) -> u64 {
        self.heaps.iter().map(|h| h.tuples.max(0.0) as u64).sum()
    }

    /// Whether changes can be applied by key: a key exists or every column identifies a row.
    pub fn has_identity(&self) -> bool {
        self.replica_identity == 'f' || self.columns.iter().any(|c| c.key_position.is_some())
    }
}

fn query_err(cfg: &PostgresConfig) -> impl Fn(tokio_postgres::Error) -> SourceError + '_ {
    move |e| SourceError::from_pg(cfg, e)
}

fn misconfigured(message: String, hint: &str) -> SourceError {
    SourceError {
        kind: ErrorKind::Misconfigured,
        sqlstate: "55000".into(),
        message,
        hint: Some(hint.into()),
        source: None,
    }
}

/// Checks that logical replication can work: `wal_level`, the user's privilege, free slots.
pub async fn check_replication(
    client: &Client,
    cfg: &PostgresConfig,
    slots_needed: i64,
) -> Result<(), SourceError> {
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'),
                    (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user),
                    current_setting('max_replication_slots')::int8
                      - (SELECT count(*) FROM pg_replication_slots),
                    current_setting('server_version_num')::int4",
            &[],
        )
        .await
        .map_err(query_err(cfg))?;
    let wal_level: String = row.get(0);
    let may_replicate: Option<bool> = row.get(1);
    let free_slots: i64 = row.get(2);
    let version: i32 = row.get(3);
    if version < 140000 {
        return Err(SourceError {
            kind: ErrorKind::Unsupported,
            sqlstate: "0A000".into(),
            message: format!(
                "the source runs PostgreSQL {}, Ferry needs 14 or later",
                version / 10000
            ),
            hint: None,
            source: None,
        });
    }
    if wal_level != "logical" {
        return Err(misconfigured(
            format!("the source has wal_level = {wal_level}; logical replication needs wal_level = logical"),
            "Set wal_level = logical in postgresql.conf and restart the server.",
        ));
    }
    if may_replicate != Some(true) {
        return Err(SourceError {
            kind: ErrorKind::Permission,
            sqlstate: "42501".into(),
            message: format!("user \"{}\" may not replicate", cfg.user),
            hint: Some(format!(
                "Run ALTER ROLE {} WITH REPLICATION on the source.",
                pg_ident(&cfg.user)
            )),
            source: None,
        });
    }
    if free_slots < slots_needed {
        return Err(misconfigured(
            format!("the source has no free replication slot ({free_slots} free, {slots_needed} needed)"),
            "Raise max_replication_slots on the source, or drop slots no longer used.",
        ));
    }
    Ok(())
}

/// The scale of `money` on this server (it follows `lc_monetary`).
pub async fn money_scale(client: &Client, cfg: &PostgresConfig) -> Result<u8, SourceError> {
    let row = client
        .query_one("SELECT scale('1'::money::numeric)", &[])
        .await
        .map_err(query_err(cfg))?;
    let scale: i32 = row.get(0);
    Ok(u8::try_from(scale).unwrap_or(2))
}

/// The ordinary and partitioned tables of a schema (partitions themselves excluded).
pub async fn tables_in_schema(
    client: &Client,
    cfg: &PostgresConfig,
    schema: &str,
) -> Result<Vec<TableName>, SourceError> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
             ORDER BY c.relname",
            &[&schema],
        )
        .await
        .map_err(query_err(cfg))?;
    Ok(rows
        .iter()
        .map(|r| TableName::new(schema, r.get::<_, String>(0)))
        .collect())
}

/// Whether a schema exists.
pub async fn schema_exists(
    client: &Client,
    cfg: &PostgresConfig,
    schema: &str,
) -> Result<bool, SourceError> {
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
            &[&schema],
        )
        .await
        .map_err(query_err(cfg))?;
    Ok(row.get::<_, i64>(0) > 0)
}

/// Describes a table, or `None` when there is no such table. `exclude` names columns not to
/// copy; naming a column that does not exist, or a key column, is an error.
pub async fn describe_table(
    client: &Client,
    cfg: &PostgresConfig,
    name: &TableName,
    exclude: &[String],
    money_scale: u8,
) -> Result<Option<SourceTable>, SourceError> {
    let row = client
        .query_opt(
            "SELECT c.oid, c.relkind::text, c.relreplident::text
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&name.schema, &name.name],
        )
        .await
        .map_err(query_err(cfg))?;
    let Some(row) = row else { return Ok(None) };
    let oid: u32 = row.get(0);
    let relkind: String = row.get(1);
    let replident: String = row.get(2);

    let rows = client
        .query(COLUMNS_QUERY, &[&oid])
        .await
        .map_err(query_err(cfg))?;
    let mut pg_columns = Vec::with_capacity(rows.len());
    for r in &rows {
        pg_columns.push(PgColumn::from_row(r).map_err(query_err(cfg))?);
    }
    for x in exclude {
        match pg_columns.iter().find(|c| &c.name == x) {
            None => {
                return Err(SourceError {
                    kind: ErrorKind::InvalidInput,
                    sqlstate: "42703".into(),
                    message: format!(
                        "column \"{x}\" of table {name} does not exist (named in exclude)"
                    ),
                    hint: None,
                    source: None,
                })
            }
            Some(c) if c.key_position.is_some() => {
                return Err(SourceError {
                    kind: ErrorKind::InvalidInput,
                    sqlstate: "22023".into(),
                    message: format!(
                        "column \"{x}\" of table {name} is part of its key and cannot be excluded"
                    ),
                    hint: None,
                    source: None,
                })
            }
            Some(_) => {}
        }
    }
    let mut exact = crate::types::exact_types(client, cfg, oid).await?;
    let mut columns = Vec::new();
    let mut mappings = Vec::new();
    for c in pg_columns
        .into_iter()
        .filter(|c| !exclude.contains(&c.name))
    {
        let mapping = value_kind(&c.type_info, money_scale);
        columns.push(ColumnSchema {
            pg_type: exact.remove(&c.name),
            name: c.name,
            type_oid: c.type_info.oid,
            type_name: c.type_name,
            kind: mapping.kind.clone(),
            nullable: !c.not_null,
            key_position: c.key_position,
        });
        mappings.push(mapping);
    }

    // A partitioned table's rows live in its leaf partitions.
    let heap_rows = if relkind == "p" {
        client
            .query(
                "SELECT n.nspname::text, c.relname::text, c.relpages::int8, c.reltuples::float8
                 FROM pg_partition_tree($1::oid) t
                 JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE t.isleaf AND c.relkind = 'r'
                 ORDER BY 1, 2",
                &[&oid],
            )
            .await
    } else {
        client
            .query(
                "SELECT $2::text, $3::text, c.relpages::int8, c.reltuples::float8 FROM pg_class c WHERE c.oid = $1",
                &[&oid, &name.schema, &name.name],
            )
            .await
    }
    .map_err(query_err(cfg))?;
    let mut heaps = Vec::with_capacity(heap_rows.len());
    for r in heap_rows {
        let relation = TableName::new(r.get::<_, String>(0), r.get::<_, String>(1));
        let mut pages = r.get::<_, i64>(2).max(0) as u64;
        let mut tuples: f64 = r.get(3);
        if tuples < 0.0 {
            // Never analysed: count blocks, and let the planner's own estimate fill in rows.
            let est = client
                .query_one(
                    &format!(
                        "SELECT pg_relation_size({lit}::regclass) / current_setting('block_size')::int8,
                                (SELECT reltuples FROM pg_class WHERE oid = {lit}::regclass)::float8",
                        lit = pg_literal(&relation.quoted())
                    ),
                    &[],
                )
                .await
                .map_err(query_err(cfg))?;
            pages = est.get::<_, i64>(0).max(0) as u64;
            tuples = est.get(1);
            if tuples < 0.0 {
                // Assume a modest row width: ranges then err on the small side.
                tuples = pages as f64 * 60.0;
            }
        }
        heaps.push(HeapRelation {
            name: relation,
            pages,
            tuples,
        });
    }
    Ok(Some(SourceTable {
        name: name.clone(),
        oid,
        replica_identity: replident.chars().next().unwrap_or('d'),
        columns,
        mappings,
        heaps,
    }))
}

/// Where tables are now, by OID: for each OID that still names a table, its current name.
/// A table dropped at the source is missing from the answer; one renamed or moved to another
/// schema answers with its new name.
pub async fn tables_by_oid(
    client: &Client,
    cfg: &PostgresConfig,
    oids: &[u32],
) -> Result<Vec<(u32, TableName)>, SourceError> {
    let rows = client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = ANY($1) AND c.relkind IN ('r', 'p')",
            &[&oids],
        )
        .await
        .map_err(query_err(cfg))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, u32>(0),
                TableName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
            )
        })
        .collect())
}

/// The partitioned table at the top of the tree `oid` is a partition of; `None` for a table that
/// is not a partition (or is gone).
pub async fn partition_root(
    client: &Client,
    cfg: &PostgresConfig,
    oid: u32,
) -> Result<Option<TableName>, SourceError> {
    let row = client
        .query_opt(
            // pg_inherits upwards (pg_partition_root is PostgreSQL 12+).
            "WITH RECURSIVE up (oid, depth) AS (
                 SELECT c.oid, 0 FROM pg_class c WHERE c.oid = $1 AND c.relispartition
                 UNION ALL
                 SELECT i.inhparent, up.depth + 1
                 FROM up JOIN pg_inherits i ON i.inhrelid = up.oid
                 JOIN pg_class p ON p.oid = i.inhparent AND p.relkind = 'p'
                 WHERE up.depth < 64)
             SELECT n.nspname::text, r.relname::text
             FROM up JOIN pg_class r ON r.oid = up.oid
             JOIN pg_namespace n ON n.oid = r.relnamespace
             WHERE up.depth > 0 ORDER BY up.depth DESC LIMIT 1",
            &[&oid],
        )
        .await
        .map_err(query_err(cfg))?;
    Ok(row.map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1))))
}

/// The leaf partitions of a partitioned table (`schema.name`, sorted); `None` for a table that
/// is not partitioned.
pub async fn leaves(
    client: &Client,
    cfg: &PostgresConfig,
    oid: u32,
) -> Result<Option<Vec<String>>, SourceError> {
    let row = client
        .query_opt(
            "SELECT c.relkind::text FROM pg_class c WHERE c.oid = $1",
            &[&oid],
        )
        .await
        .map_err(query_err(cfg))?;
    if row.is_none_or(|r| r.get::<_, String>(0) != "p") {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT n.nspname::text || '.' || c.relname::text
             FROM pg_partition_tree($1::oid::regclass) t
             JOIN pg_class c ON c.oid = t.relid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE t.isleaf ORDER BY 1",
            &[&oid],
        )
        .await
        .map_err(query_err(cfg))?;
    Ok(Some(rows.iter().map(|r| r.get(0)).collect()))
}

/// Which of a table's columns have a default, so that rows already there when the column
/// was added hold a value other than NULL.
pub async fn columns_with_default(
    client: &Client,
    cfg: &PostgresConfig,
    oid: u32,
    names: &[String],
) -> Result<Vec<String>, SourceError> {
    let rows = client
        .query(
            "SELECT attname::text FROM pg_attribute
             WHERE attrelid = $1 AND attname = ANY($2) AND (atthasdef OR atthasmissing)
               AND NOT attisdropped",
            &[&oid, &names],
        )
        .await
        .map_err(query_err(cfg))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
