//! Query mirrors at the source: the user's query made ready to run ([`SourceQuery`]), its
//! result columns described, a run's snapshot and range ([`RunSnapshot`]), and one partition
//! read as a binary COPY stream ([`copy_partition`]).
//!
//! # How the watermark reaches the query
//!
//! A partition is read with `COPY (SELECT … FROM (query) AS q) TO STDOUT (FORMAT binary)`, so
//! that its rows come as the initial load's do, field by field in binary, into the same
//! destination sinks. `COPY` takes no parameters, and the partition's bounds must never be
//! spliced into the SQL as text. Nor may reading leave anything on the source (a temporary
//! view or function would need a writable primary, and privileges a read-only user lacks).
//! So each placeholder is replaced by a one-time sub-select that reads a setting of the
//! reading transaction, in the watermark's own type:
//!
//! ```text
//! {{.start}}  →  (SELECT pg_catalog.current_setting('ferry.qrep_start')::pg_catalog.timestamptz)
//! ```
//!
//! and before the `COPY`, the transaction sets it from a bound, typed parameter:
//! `SELECT pg_catalog.set_config('ferry.qrep_start', $1::pg_catalog.timestamptz::pg_catalog.text, true)`.
//! The value goes to the server in binary as the watermark's type, becomes text by that type's
//! output function and the same type again by its input function in the same session
//! (`DateStyle = ISO`, `TimeZone = UTC`): exact for integers, dates and microsecond timestamps.
//! `set_config(…, true)` lasts until the transaction ends. An uncorrelated sub-select is an
//! *initplan*: evaluated once per execution, and usable in index conditions (and TID range
//! conditions) like a parameter, so the plan is the one a literal or `$1` would get. This works
//! in a `READ ONLY` transaction and on a hot standby.
//!
//! # xmin
//!
//! With `watermark_column = 'xmin'` the query has no placeholders; Ferry adds its own condition
//! on the watermark table's `xmin` (and `ctid`, which cuts the run into block ranges) to the
//! query's `WHERE` ([`ferry_sql::query::Query::with_filter`]), its values read from settings in
//! the same way. A row's `xmin` is a 32-bit transaction id; it is placed in the 64-bit id space
//! by its distance back from the run snapshot's next id (`xmax`), modulo 2^32 — exact for every
//! row not frozen more than 2^32 transactions ago (see [`ferry_core::qrep::XidRange`]). Ids 0 to
//! 2 (invalid, bootstrap, frozen before PostgreSQL 9.4) count as older than any run: only the
//! first run reads them.

use ferry_core::destination::Wire;
use ferry_core::ident::{pg_ident, pg_qualified};
use ferry_core::peer::PostgresConfig;
use ferry_core::qrep::{Bounds, Watermark, WatermarkKind};
use ferry_core::{ColumnSchema, ErrorKind, TableName};
use ferry_sql::query::Query;
use postgres_types::{FromSql, IsNull, ToSql, Type};
use tokio_postgres::Client;

use crate::connect::SourceError;
use crate::session::{CopyOut, Param};
use crate::snapshot::RangeReader;
use crate::types::{result_types, value_kind, Mapping, PgColumn, RESULT_COLUMNS_QUERY};

const START: &str = "ferry.qrep_start";
const END: &str = "ferry.qrep_end";
const CTID_FROM: &str = "ferry.qrep_ctid_from";
const CTID_TO: &str = "ferry.qrep_ctid_to";
const XID_NEXT: &str = "ferry.qrep_xid_next";
const XID_MIN: &str = "ferry.qrep_xid_min";
const XID_MAX: &str = "ferry.qrep_xid_max";
const XID_SPECIAL: &str = "ferry.qrep_xid_special";

/// `(SELECT current_setting(name)::ty)`: a setting of the transaction, once per execution.
fn setting(name: &str, ty: &str) -> String {
    format!("(SELECT pg_catalog.current_setting('{name}')::{ty})")
}

/// The condition Ferry adds to an xmin query: the partition's CTID blocks, and the run's
/// transaction ids. `reference` is how the query names the watermark table (quoted).
fn xmin_filter(reference: &str) -> String {
    let xid = format!("{reference}.xmin::pg_catalog.text::pg_catalog.int8");
    format!(
        "{reference}.ctid >= {from} AND {reference}.ctid < {to} AND \
         CASE WHEN {xid} < 3 THEN {special} \
         ELSE (({next} - {xid}) & 4294967295) BETWEEN {min} AND {max} END",
        from = setting(CTID_FROM, "pg_catalog.tid"),
        to = setting(CTID_TO, "pg_catalog.tid"),
        special = setting(XID_SPECIAL, "pg_catalog.bool"),
        next = setting(XID_NEXT, "pg_catalog.int8"),
        min = setting(XID_MIN, "pg_catalog.int8"),
        max = setting(XID_MAX, "pg_catalog.int8"),
    )
}

fn query_error(message: String) -> SourceError {
    SourceError {
        kind: ErrorKind::InvalidInput,
        sqlstate: "22023".into(),
        message,
        hint: None,
        source: None,
    }
}

/// A query mirror's query, ready to run: the user's SQL with the placeholders (or the xmin
/// condition) in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceQuery {
    sql: String,
    kind: Option<WatermarkKind>,
}

/// One column of a query's result.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryColumn {
    pub schema: ColumnSchema,
    /// How the partition's `SELECT` reads it.
    pub mapping: Mapping,
}

impl SourceQuery {
    /// The query for a watermark of `kind` (`Xid`: picked by `xmin`), or for a query read
    /// whole (`None`).
    pub fn new(query: &Query, kind: Option<WatermarkKind>) -> Result<SourceQuery, SourceError> {
        let sql = match kind {
            Some(WatermarkKind::Xid) => query.with_filter(xmin_filter).ok_or_else(|| {
                query_error(
                    "with watermark_column = 'xmin' the query must read one table, without placeholders"
                        .into(),
                )
            })?,
            Some(k) => query.render(&setting(START, k.pg_type()), &setting(END, k.pg_type())),
            None => query.render("NULL", "NULL"),
        };
        Ok(SourceQuery { sql, kind })
    }

    /// The SQL run as the subquery `q` of every partition.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// Prepares the query (as a partition runs it, a subquery) and describes its result:
    /// names, and types mapped as a table's columns are. PostgreSQL's own errors (syntax, a
    /// table or column that does not exist, a query that is not a `SELECT`) come back as
    /// they are, with "the query:" before them.
    pub async fn describe(
        &self,
        client: &Client,
        cfg: &PostgresConfig,
        money_scale: u8,
    ) -> Result<Vec<QueryColumn>, SourceError> {
        let stmt = client
            .prepare(&format!("SELECT * FROM (\n{}\n) AS q", self.sql))
            .await
            .map_err(|e| {
                let mut e = SourceError::from_pg(cfg, e);
                if e.kind != ErrorKind::Transient {
                    e.kind = ErrorKind::InvalidInput;
                    e.message = format!("the query: {}", e.message);
                    if e.sqlstate == "42601" && e.hint.is_none() {
                        e.hint = Some(
                            "A query mirror's query is one SELECT (or VALUES, or WITH … SELECT): \
                             each partition runs it as a subquery."
                                .into(),
                        );
                    }
                }
                e
            })?;
        let cols = stmt.columns();
        let names: Vec<&str> = cols.iter().map(|c| c.name()).collect();
        let types: Vec<u32> = cols.iter().map(|c| c.type_().oid()).collect();
        let typmods: Vec<i32> = cols.iter().map(|c| c.type_modifier()).collect();
        let tables: Vec<u32> = cols.iter().map(|c| c.table_oid().unwrap_or(0)).collect();
        let attnums: Vec<i16> = cols.iter().map(|c| c.column_id().unwrap_or(0)).collect();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(SourceError {
                    kind: ErrorKind::InvalidInput,
                    sqlstate: "42701".into(),
                    message: format!("the query returns more than one column named \"{n}\""),
                    hint: Some(
                        "Give each result column a name of its own: SELECT … AS name.".into(),
                    ),
                    source: None,
                });
            }
        }
        if names.is_empty() {
            return Err(query_error("the query returns no columns".into()));
        }
        let rows = client
            .query(
                RESULT_COLUMNS_QUERY,
                &[&names, &types, &typmods, &tables, &attnums],
            )
            .await
            .map_err(|e| SourceError::from_pg(cfg, e))?;
        // The exact type a PostgreSQL destination creates each column with.
        let exact = result_types(client, cfg, &types, &typmods, &tables, &attnums).await?;
        let mut out = Vec::with_capacity(rows.len());
        for (r, pg_type) in rows.iter().zip(exact) {
            let c = PgColumn::from_row(r).map_err(|e| SourceError::from_pg(cfg, e))?;
            let mapping = value_kind(&c.type_info, money_scale);
            out.push(QueryColumn {
                schema: ColumnSchema {
                    name: c.name,
                    type_oid: c.type_info.oid,
                    type_name: c.type_name,
                    kind: mapping.kind.clone(),
                    nullable: !c.not_null,
                    key_position: None,
                    pg_type: Some(pg_type),
                },
                mapping,
            });
        }
        if out.len() != names.len() {
            return Err(SourceError {
                kind: ErrorKind::Internal,
                sqlstate: "XX000".into(),
                message: format!(
                    "the query's {} columns resolved to {} types",
                    names.len(),
                    out.len()
                ),
                hint: None,
                source: None,
            });
        }
        Ok(out)
    }

    /// `COPY (SELECT <columns> FROM (query) AS q) TO STDOUT (FORMAT binary)`, each column read
    /// in the form `wire` asks for (with the casts the canonical form needs).
    pub fn copy_sql(&self, columns: &[QueryColumn], wire: Wire) -> String {
        let list: Vec<String> = columns
            .iter()
            .map(|c| {
                let q = format!("q.{}", pg_ident(&c.schema.name));
                match wire {
                    Wire::Canonical => c.mapping.select_expr(&q),
                    Wire::Native => q,
                }
            })
            .collect();
        format!(
            "COPY (SELECT {} FROM (\n{}\n) AS q) TO STDOUT (FORMAT binary)",
            list.join(", "),
            self.sql
        )
    }
}

/// A watermark value bound as a parameter, or read from a result, in binary as the type the
/// statement has there (`int2`, `int4`, `int8`, `date`, `timestamp`, `timestamptz`, `xid8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkParam(pub i64);

fn watermark_type(ty: &Type) -> bool {
    matches!(
        *ty,
        Type::INT2
            | Type::INT4
            | Type::INT8
            | Type::DATE
            | Type::TIMESTAMP
            | Type::TIMESTAMPTZ
            | Type::XID8
    )
}

impl ToSql for WatermarkParam {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let v = self.0;
        match *ty {
            Type::INT2 => out.extend_from_slice(&i16::try_from(v)?.to_be_bytes()),
            Type::INT4 | Type::DATE => out.extend_from_slice(&i32::try_from(v)?.to_be_bytes()),
            _ => out.extend_from_slice(&v.to_be_bytes()),
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        watermark_type(ty)
    }

    postgres_types::to_sql_checked!();
}

impl<'a> FromSql<'a> for WatermarkParam {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let v = match (
            *ty == Type::INT2 || *ty == Type::INT4 || *ty == Type::DATE,
            raw.len(),
        ) {
            (true, 2) => i64::from(i16::from_be_bytes([raw[0], raw[1]])),
            (true, 4) => i64::from(i32::from_be_bytes(raw.try_into()?)),
            (false, 8) => i64::from_be_bytes(raw.try_into()?),
            _ => return Err(format!("a {ty} value of {} bytes", raw.len()).into()),
        };
        Ok(WatermarkParam(v))
    }

    fn accepts(ty: &Type) -> bool {
        watermark_type(ty)
    }
}

/// The watermark kind of a column's type, if it can be one (a domain's base type counts).
pub fn watermark_kind(type_oid: u32) -> Option<WatermarkKind> {
    use crate::types::oid;
    Some(match type_oid {
        oid::INT2 => WatermarkKind::Int16,
        oid::INT4 => WatermarkKind::Int32,
        oid::INT8 => WatermarkKind::Int64,
        oid::DATE => WatermarkKind::Date,
        oid::TIMESTAMP => WatermarkKind::Timestamp,
        oid::TIMESTAMPTZ => WatermarkKind::TimestampTz,
        _ => return None,
    })
}

/// What a run reads the source in: a `REPEATABLE READ` transaction, its snapshot exported for
/// the partitions' readers when the server allows it, open until the run has read them all.
pub struct RunSnapshot {
    client: Client,
    cfg: PostgresConfig,
    /// The exported snapshot (`None` where the server exports none: every partition then
    /// reads in a fresh snapshot of its own).
    pub exported: Option<String>,
}

/// What a watermark column holds after a value: the smallest and largest values, and about how
/// many rows (the planner's estimate: it only sizes the partitions, and counting would read the
/// whole range once more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnRange {
    pub min: i64,
    pub max: i64,
    pub rows: i64,
}

/// The row estimate of the top node of an `EXPLAIN`'s first line (`… rows=N width=…`).
fn estimated_rows(line: &str) -> Option<i64> {
    let rest = &line[line.find(" rows=")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl RunSnapshot {
    pub async fn open(cfg: &PostgresConfig) -> Result<RunSnapshot, SourceError> {
        let client = crate::connect::connect(cfg, "ferry query run").await?;
        let pg = |e| SourceError::from_pg(cfg, e);
        let begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
        client.batch_execute(begin).await.map_err(pg)?;
        let exported = match client
            .query_one("SELECT pg_catalog.pg_export_snapshot()", &[])
            .await
        {
            Ok(r) => Some(r.get::<_, String>(0)),
            Err(e) if e.as_db_error().is_some() => {
                tracing::debug!(error = %e, "the source exports no snapshot; partitions read in fresh ones");
                client.batch_execute("ROLLBACK").await.map_err(pg)?;
                client.batch_execute(begin).await.map_err(pg)?;
                None
            }
            Err(e) => return Err(pg(e)),
        };
        Ok(RunSnapshot {
            client,
            cfg: cfg.clone(),
            exported,
        })
    }

    fn err(&self) -> impl Fn(tokio_postgres::Error) -> SourceError + '_ {
        move |e| SourceError::from_pg(&self.cfg, e)
    }

    /// The range of `column` of `table` above `after` (every row with a value when `None`),
    /// or `None` when no row is there.
    pub async fn column_range(
        &self,
        table: &TableName,
        column: &str,
        kind: WatermarkKind,
        after: Option<i64>,
    ) -> Result<Option<ColumnRange>, SourceError> {
        let c = pg_ident(column);
        let t = pg_qualified(&table.schema, &table.name);
        let condition = match after {
            None => format!("{c} IS NOT NULL"),
            Some(_) => format!("{c} > $1::{}", kind.pg_type()),
        };
        let param = after.map(WatermarkParam);
        let params: Vec<&(dyn ToSql + Sync)> = match &param {
            Some(p) => vec![p],
            None => Vec::new(),
        };
        let row = self
            .client
            .query_one(
                &format!("SELECT min({c}), max({c}) FROM {t} WHERE {condition}"),
                &params,
            )
            .await
            .map_err(self.err())?;
        let (Some(min), Some(max)) = (
            row.get::<_, Option<WatermarkParam>>(0),
            row.get::<_, Option<WatermarkParam>>(1),
        ) else {
            return Ok(None);
        };
        let plan = self
            .client
            .query(
                &format!("EXPLAIN SELECT 1 FROM {t} WHERE {condition}"),
                &params,
            )
            .await
            .map_err(self.err())?;
        let rows = plan
            .first()
            .and_then(|r| estimated_rows(r.get::<_, &str>(0)))
            .unwrap_or(1);
        Ok(Some(ColumnRange {
            min: min.0,
            max: max.0,
            rows,
        }))
    }

    /// The snapshot's transaction id horizon: `(xmin, xmax)` — every id below `xmin` had
    /// ended when the snapshot was taken; `xmax` is the first id not yet assigned.
    pub async fn xid_horizon(&self) -> Result<(u64, u64), SourceError> {
        let row = self
            .client
            .query_one(
                "SELECT pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::text::int8,
                        pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text::int8",
                &[],
            )
            .await
            .map_err(self.err())?;
        let (xmin, xmax): (i64, i64) = (row.get(0), row.get(1));
        Ok((xmin.max(0) as u64, xmax.max(0) as u64))
    }

    /// Ends the transaction (and so the exported snapshot).
    pub async fn close(self) -> Result<(), SourceError> {
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| SourceError::from_pg(&self.cfg, e))
    }
}

/// Reads one partition: sets its bounds in `reader`'s transaction (as bound parameters, never
/// spliced into the text), then starts `copy_sql` (from [`SourceQuery::copy_sql`]).
pub async fn copy_partition<'r>(
    reader: &'r mut RangeReader,
    copy_sql: &str,
    kind: Option<WatermarkKind>,
    bounds: &Bounds,
) -> Result<CopyOut<'r>, SourceError> {
    let session = reader.session();
    match (bounds, kind) {
        (Bounds::Values { first, last }, Some(k)) if k != WatermarkKind::Xid => {
            let ty = k.pg_type();
            let sql = format!(
                "SELECT pg_catalog.set_config('{START}', $1::{ty}::pg_catalog.text, true),
                        pg_catalog.set_config('{END}', $2::{ty}::pg_catalog.text, true)"
            );
            let (first, last) = (
                send_watermark(k, first.value)?,
                send_watermark(k, last.value)?,
            );
            session
                .execute(&sql, &[Param::Binary(&first), Param::Binary(&last)])
                .await?;
        }
        (Bounds::Blocks { start, end, xids }, Some(WatermarkKind::Xid)) => {
            let (at_least, below) = xids.distances();
            let settings: [(&str, String); 6] = [
                (CTID_FROM, format!("({start},0)")),
                (
                    CTID_TO,
                    format!("({},0)", end.unwrap_or(u64::from(u32::MAX))),
                ),
                (XID_NEXT, (xids.next & 0xFFFF_FFFF).to_string()),
                (XID_MIN, at_least.to_string()),
                (XID_MAX, (below - 1).to_string()),
                (XID_SPECIAL, xids.after.is_none().to_string()),
            ];
            for (name, value) in &settings {
                session
                    .execute(
                        "SELECT pg_catalog.set_config($1::pg_catalog.text, $2::pg_catalog.text, true)",
                        &[Param::Text(name), Param::Text(value)],
                    )
                    .await?;
            }
        }
        (Bounds::Whole, None) => {}
        _ => {
            return Err(SourceError {
                kind: ErrorKind::Internal,
                sqlstate: "XX000".into(),
                message: format!("partition bounds {bounds:?} do not fit a watermark {kind:?}"),
                hint: None,
                source: None,
            })
        }
    }
    reader.session().copy_out(copy_sql).await
}

/// A watermark value in the binary send format of its kind's type.
fn send_watermark(kind: WatermarkKind, value: i64) -> Result<Vec<u8>, SourceError> {
    let ty = match kind {
        WatermarkKind::Int16 => Type::INT2,
        WatermarkKind::Int32 => Type::INT4,
        WatermarkKind::Int64 => Type::INT8,
        WatermarkKind::Date => Type::DATE,
        WatermarkKind::Timestamp => Type::TIMESTAMP,
        WatermarkKind::TimestampTz => Type::TIMESTAMPTZ,
        WatermarkKind::Xid => Type::XID8,
    };
    let mut out = bytes::BytesMut::new();
    WatermarkParam(value)
        .to_sql(&ty, &mut out)
        .map_err(|e| SourceError {
            kind: ErrorKind::Internal,
            sqlstate: "22003".into(),
            message: format!("watermark {value} does not fit {}: {e}", kind.pg_type()),
            hint: None,
            source: None,
        })?;
    Ok(out.to_vec())
}

/// A watermark as PostgreSQL prints it (for the catalog's text).
pub fn watermark_text(kind: WatermarkKind, value: i64) -> String {
    Watermark::new(kind, value).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_are_read_from_the_plan() {
        assert_eq!(
            estimated_rows("Seq Scan on t  (cost=0.00..1.01 rows=5000000 width=0)"),
            Some(5_000_000)
        );
        assert_eq!(
            estimated_rows("Result  (cost=0.00..0.01 rows=1 width=4)"),
            Some(1)
        );
        assert_eq!(estimated_rows("nothing here"), None);
    }

    #[test]
    fn placeholders_become_settings_of_the_watermark_type() {
        let q = ferry_sql::query::parse_query(
            "SELECT * FROM t WHERE u BETWEEN {{.start}} AND {{.end}}",
        )
        .unwrap();
        let s = SourceQuery::new(&q, Some(WatermarkKind::TimestampTz)).unwrap();
        assert_eq!(
            s.sql(),
            "SELECT * FROM t WHERE u BETWEEN \
             (SELECT pg_catalog.current_setting('ferry.qrep_start')::pg_catalog.timestamptz) AND \
             (SELECT pg_catalog.current_setting('ferry.qrep_end')::pg_catalog.timestamptz)"
        );
        let x = ferry_sql::query::parse_query("SELECT * FROM t").unwrap();
        let s = SourceQuery::new(&x, Some(WatermarkKind::Xid)).unwrap();
        assert!(s.sql().contains("\"t\".ctid >= (SELECT"), "{}", s.sql());
        assert!(SourceQuery::new(&q, Some(WatermarkKind::Xid)).is_err());
    }
}
