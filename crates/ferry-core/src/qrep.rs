//! Query mirrors: a SQL query run again and again over the next range of a watermark, its
//! result landing in one destination table (`CREATE MIRROR … FOR $$query$$ WITH (…)`, as
//! PeerDB writes it).
//!
//! This module holds what such a mirror is (its options, typed and checked: [`QuerySpec`]),
//! the watermark's values ([`WatermarkKind`], [`Watermark`]) and what one partition of a run
//! reads ([`Bounds`]). The algorithm that runs it lives in the engine (`ferry-flow`'s `qrep`
//! module); reading the source is `ferry-postgres`'s `query` module; the destination side is
//! [`crate::destination::QueryDestination`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::mirror::{Destination, Unrepresentable};
use crate::peer::{OptionError, OptionReader, OptionValue};
use crate::TableName;

/// How a run's rows land in the destination table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryMode {
    /// Every row read is added (a partition copied again after a crash replaces its own rows).
    Append,
    /// The newest row per key wins.
    Upsert { unique_key: Vec<String> },
    /// The result replaces the table's contents at once (with `initial_copy_only` only).
    Overwrite,
}

impl QueryMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            QueryMode::Append => "append",
            QueryMode::Upsert { .. } => "upsert",
            QueryMode::Overwrite => "overwrite",
        }
    }

    /// The key columns of upsert mode; empty otherwise.
    pub fn unique_key(&self) -> &[String] {
        match self {
            QueryMode::Upsert { unique_key } => unique_key,
            _ => &[],
        }
    }
}

/// What a run's range is cut by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatermarkSource {
    /// A column of `table` whose values grow (an integer, a date or a timestamp).
    Column { table: TableName, column: String },
    /// The transaction id of each row version of `table` (`xmin`).
    Xmin { table: TableName },
}

impl WatermarkSource {
    pub fn table(&self) -> &TableName {
        match self {
            WatermarkSource::Column { table, .. } | WatermarkSource::Xmin { table } => table,
        }
    }
}

/// A query mirror's settings from its `WITH (…)` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryOptions {
    /// The destination table (`destination_table_name`).
    pub destination: Destination,
    /// `watermark_column` of `watermark_table_name`; `None` for a query read whole once
    /// (`initial_copy_only` without placeholders).
    pub watermark: Option<WatermarkSource>,
    pub mode: QueryMode,
    /// Partitions copied at once.
    pub parallelism: u16,
    /// Seconds from the end of one run to the start of the next.
    pub refresh_interval_secs: u32,
    /// Rows a partition should hold, roughly.
    pub rows_per_partition: u64,
    /// One run, then the mirror is completed.
    pub initial_copy_only: bool,
    /// Create the destination table from the query's columns when it is missing.
    pub setup_destination_table: bool,
    /// How far below the last watermark each run reads again (in the watermark's units:
    /// values for integers, seconds for dates and timestamps), for rows committed late.
    pub watermark_lag: Option<u64>,
    pub unrepresentable_values: Unrepresentable,
}

/// A query mirror as stored in the catalog: its query as written, and its options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuerySpec {
    pub query: String,
    pub options: QueryOptions,
}

/// The largest `parallelism`.
pub const MAX_PARALLELISM: i64 = 64;

impl QueryOptions {
    /// Types and checks a query mirror's `WITH (…)` list. What needs the servers (the watermark
    /// column's type, the destination) is checked later. `query_table` is the one table the
    /// query reads, when it reads one (`SELECT … FROM table [WHERE …]`): the watermark table
    /// when `watermark_table_name` is not given.
    pub fn from_options(
        options: &[(String, OptionValue)],
        query_table: Option<TableName>,
    ) -> Result<QueryOptions, OptionError> {
        let mut r = OptionReader::new("a query mirror", options)?;
        let dest = r.required_string("destination_table_name")?;
        let destination = match dest.split_once('.') {
            None if !dest.is_empty() => Destination {
                database: None,
                table: dest.clone(),
            },
            Some((db, t)) if !db.is_empty() && !t.is_empty() && !t.contains('.') => Destination {
                database: Some(db.to_owned()),
                table: t.to_owned(),
            },
            _ => {
                return Err(wrong(
                    "destination_table_name",
                    "'table', or 'namespace.table' (a ClickHouse database, a PostgreSQL schema)",
                    options,
                ))
            }
        };
        let column = r.string("watermark_column")?;
        let table = r.string("watermark_table_name")?;
        let mode = r.string("mode")?;
        let keys = r.string("unique_key_columns")?;
        let o_parallelism = r.integer("parallelism", 1, MAX_PARALLELISM)?;
        let refresh = r.integer("refresh_interval", 1, 86_400 * 7)?;
        let rows = r.integer("num_rows_per_partition", 1, 1_000_000_000)?;
        let initial_copy_only = r.boolean("initial_copy_only")?.unwrap_or(false);
        let setup = r
            .boolean("setup_watermark_table_on_destination")?
            .unwrap_or(true);
        let lag = r.integer("watermark_lag", 0, i64::from(u32::MAX))?;
        let unrepresentable_values = match r.string("unrepresentable_values")?.as_deref() {
            None | Some("substitute") => Unrepresentable::Substitute,
            Some("fail") => Unrepresentable::Fail,
            Some(_) => {
                return Err(wrong(
                    "unrepresentable_values",
                    "'substitute' or 'fail'",
                    options,
                ))
            }
        };
        r.finish()?;

        let table = match table {
            Some(t) => Some(parse_table_name(&t).ok_or_else(|| {
                wrong("watermark_table_name", "'table' or 'schema.table'", options)
            })?),
            None if column.is_some() => query_table,
            None => None,
        };
        let watermark = match (column, table) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(OptionError::Missing {
                    name: "watermark_table_name",
                    context: "a query mirror whose query reads more than one table".into(),
                })
            }
            (None, Some(_)) => {
                return Err(OptionError::Missing {
                    name: "watermark_column",
                    context: "a query mirror with a watermark_table_name".into(),
                })
            }
            (Some(c), Some(table)) if c.eq_ignore_ascii_case("xmin") => {
                Some(WatermarkSource::Xmin { table })
            }
            (Some(c), Some(_)) if c.is_empty() => {
                return Err(wrong("watermark_column", "a column name", options))
            }
            (Some(column), Some(table)) => Some(WatermarkSource::Column { table, column }),
        };
        if watermark.is_none() && !initial_copy_only {
            return Err(OptionError::Missing {
                name: "watermark_column",
                context: "a query mirror that runs more than once (initial_copy_only = false)"
                    .into(),
            });
        }
        let unique_key: Vec<String> = keys
            .as_deref()
            .map(|k| {
                k.split(',')
                    .map(|c| c.trim().to_owned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if unique_key.iter().any(String::is_empty)
            || (1..unique_key.len()).any(|i| unique_key[..i].contains(&unique_key[i]))
        {
            return Err(wrong(
                "unique_key_columns",
                "distinct column names separated by commas",
                options,
            ));
        }
        let mode = match mode.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("append") => QueryMode::Append,
            Some("upsert") => {
                if unique_key.is_empty() {
                    return Err(OptionError::Missing {
                        name: "unique_key_columns",
                        context: "a query mirror in upsert mode".into(),
                    });
                }
                QueryMode::Upsert {
                    unique_key: unique_key.clone(),
                }
            }
            Some("overwrite") => {
                if !initial_copy_only {
                    return Err(wrong(
                        "mode",
                        "'append' or 'upsert' unless initial_copy_only = true ('overwrite' replaces the table once)",
                        options,
                    ));
                }
                QueryMode::Overwrite
            }
            Some(_) => return Err(wrong("mode", "'append', 'upsert' or 'overwrite'", options)),
        };
        if !unique_key.is_empty() && !matches!(mode, QueryMode::Upsert { .. }) {
            return Err(wrong(
                "unique_key_columns",
                "given only with mode = 'upsert'",
                options,
            ));
        }
        if lag.is_some_and(|l| l > 0) {
            if matches!(watermark, Some(WatermarkSource::Xmin { .. })) {
                return Err(wrong(
                    "watermark_lag",
                    "left out with watermark_column = 'xmin' (runs by transaction id never miss a late commit)",
                    options,
                ));
            }
            if !matches!(mode, QueryMode::Upsert { .. }) {
                return Err(wrong(
                    "watermark_lag",
                    "given only with mode = 'upsert' (it reads rows again, which only upsert makes safe)",
                    options,
                ));
            }
        }
        Ok(QueryOptions {
            destination,
            watermark,
            mode,
            parallelism: o_parallelism.unwrap_or(4) as u16,
            refresh_interval_secs: refresh.unwrap_or(10) as u32,
            rows_per_partition: rows.unwrap_or(500_000) as u64,
            initial_copy_only,
            setup_destination_table: setup,
            watermark_lag: lag.filter(|l| *l > 0).map(|l| l as u64),
            unrepresentable_values,
        })
    }
}

/// An option's value as written, for a message.
fn given(options: &[(String, OptionValue)], name: &str) -> String {
    match options.iter().find(|(n, _)| n == name).map(|(_, v)| v) {
        Some(OptionValue::String(s) | OptionValue::Ident(s)) => format!("'{s}'"),
        Some(OptionValue::Number(n)) => n.clone(),
        Some(OptionValue::Bool(b)) => b.to_string(),
        None => "nothing".to_owned(),
    }
}

fn wrong(name: &str, expected: &'static str, options: &[(String, OptionValue)]) -> OptionError {
    OptionError::WrongType {
        name: name.to_owned(),
        expected,
        got: given(options, name),
    }
}

/// `schema.table` or `table` (in `public`), as options name tables: no quoting, one dot at most.
fn parse_table_name(s: &str) -> Option<TableName> {
    let s = s.trim();
    match s.split_once('.') {
        None if !s.is_empty() => Some(TableName::new("public", s)),
        Some((schema, name)) if !schema.is_empty() && !name.is_empty() && !name.contains('.') => {
            Some(TableName::new(schema, name))
        }
        _ => None,
    }
}

/// The type of a watermark, which fixes its unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatermarkKind {
    Int16,
    Int32,
    Int64,
    /// Days since 2000-01-01.
    Date,
    /// Microseconds since 2000-01-01.
    Timestamp,
    /// Microseconds since 2000-01-01 UTC.
    TimestampTz,
    /// A full (epoch-extended, 64-bit) transaction id.
    Xid,
}

impl WatermarkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WatermarkKind::Int16 => "int2",
            WatermarkKind::Int32 => "int4",
            WatermarkKind::Int64 => "int8",
            WatermarkKind::Date => "date",
            WatermarkKind::Timestamp => "timestamp",
            WatermarkKind::TimestampTz => "timestamptz",
            WatermarkKind::Xid => "xid8",
        }
    }

    pub fn parse(s: &str) -> Option<WatermarkKind> {
        [
            WatermarkKind::Int16,
            WatermarkKind::Int32,
            WatermarkKind::Int64,
            WatermarkKind::Date,
            WatermarkKind::Timestamp,
            WatermarkKind::TimestampTz,
            WatermarkKind::Xid,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }

    /// The PostgreSQL type, schema-qualified, as SQL names it in a cast.
    pub fn pg_type(self) -> &'static str {
        match self {
            WatermarkKind::Int16 => "pg_catalog.int2",
            WatermarkKind::Int32 => "pg_catalog.int4",
            WatermarkKind::Int64 => "pg_catalog.int8",
            WatermarkKind::Date => "pg_catalog.date",
            WatermarkKind::Timestamp => "pg_catalog.timestamp",
            WatermarkKind::TimestampTz => "pg_catalog.timestamptz",
            WatermarkKind::Xid => "pg_catalog.xid8",
        }
    }

    /// The smallest and largest finite values.
    pub fn range(self) -> (i64, i64) {
        match self {
            WatermarkKind::Int16 => (i16::MIN.into(), i16::MAX.into()),
            WatermarkKind::Int32 => (i32::MIN.into(), i32::MAX.into()),
            WatermarkKind::Int64 => (i64::MIN, i64::MAX),
            // ±infinity are i32::MIN/MAX, i64::MIN/MAX: not values a range is cut at.
            WatermarkKind::Date => (i64::from(i32::MIN) + 1, i64::from(i32::MAX) - 1),
            WatermarkKind::Timestamp | WatermarkKind::TimestampTz => (i64::MIN + 1, i64::MAX - 1),
            WatermarkKind::Xid => (0, i64::MAX),
        }
    }

    /// `watermark_lag` (values for integers, seconds for dates and timestamps) in this kind's
    /// units, rounded up.
    pub fn lag_units(self, lag: u64) -> i64 {
        let lag = i64::try_from(lag).unwrap_or(i64::MAX);
        match self {
            WatermarkKind::Date => lag / 86_400 + i64::from(lag % 86_400 != 0),
            WatermarkKind::Timestamp | WatermarkKind::TimestampTz => lag.saturating_mul(1_000_000),
            _ => lag,
        }
    }
}

/// A watermark value: the kind's natural integer (the integer itself; days or microseconds
/// since 2000-01-01; a full transaction id), so that ranges are cut by integer arithmetic and
/// every value is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Watermark {
    pub kind: WatermarkKind,
    pub value: i64,
}

impl Watermark {
    pub fn new(kind: WatermarkKind, value: i64) -> Watermark {
        Watermark { kind, value }
    }

    /// An order-preserving unsigned form, for a destination's version column.
    pub fn version(self) -> u64 {
        (self.value as u64) ^ (1 << 63)
    }
}

impl fmt::Display for Watermark {
    /// As PostgreSQL prints it (ISO dates and times, UTC).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.value;
        match self.kind {
            WatermarkKind::Date => match v {
                x if x >= i64::from(i32::MAX) => f.write_str("infinity"),
                x if x <= i64::from(i32::MIN) => f.write_str("-infinity"),
                _ => write_date(f, v),
            },
            WatermarkKind::Timestamp | WatermarkKind::TimestampTz => match v {
                i64::MAX => f.write_str("infinity"),
                i64::MIN => f.write_str("-infinity"),
                _ => {
                    let days = v.div_euclid(86_400_000_000);
                    let us = v.rem_euclid(86_400_000_000);
                    write_date(f, days)?;
                    let secs = us / 1_000_000;
                    write!(
                        f,
                        " {:02}:{:02}:{:02}",
                        secs / 3600,
                        secs / 60 % 60,
                        secs % 60
                    )?;
                    let frac = us % 1_000_000;
                    if frac != 0 {
                        let digits = format!("{frac:06}");
                        write!(f, ".{}", digits.trim_end_matches('0'))?;
                    }
                    if self.kind == WatermarkKind::TimestampTz {
                        f.write_str("+00")?;
                    }
                    Ok(())
                }
            },
            _ => write!(f, "{v}"),
        }
    }
}

fn write_date(f: &mut fmt::Formatter<'_>, days_since_2000: i64) -> fmt::Result {
    let (y, m, d) = crate::civil_from_days(days_since_2000 + 10_957);
    if y <= 0 {
        write!(f, "{:04}-{m:02}-{d:02} BC", 1 - y)
    } else {
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

/// What one partition of a run reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Bounds {
    /// The query with `{{.start}}` = `first` and `{{.end}}` = `last` (both included).
    Values { first: Watermark, last: Watermark },
    /// The rows of the watermark table in CTID blocks `start..end` (to the table's end when
    /// `end` is `None`) whose transaction id is in the run's range.
    Blocks {
        start: u64,
        end: Option<u64>,
        xids: XidRange,
    },
    /// The whole query, once.
    Whole,
}

/// A run's range of transaction ids for `xmin`: rows written by transactions after `after`
/// (none for the first run: every row) up to and including `through`, read with `next` (the
/// run snapshot's first unassigned id) as the reference that extends a row's 32-bit id with
/// its epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct XidRange {
    pub after: Option<u64>,
    pub through: u64,
    pub next: u64,
}

impl XidRange {
    /// The distances back from `next`, `(at_least, below)`, of the 32-bit ids of the range's
    /// row versions: a row's id `x` is in the range when `(next - x) mod 2^32` is in
    /// `at_least..below`. `below` is 2^32 when the range reaches back that far (or for the
    /// first run), which takes every row older than `through`.
    pub fn distances(&self) -> (i64, i64) {
        const WRAP: i64 = 1 << 32;
        let next = i64::try_from(self.next).unwrap_or(i64::MAX);
        let through = i64::try_from(self.through).unwrap_or(i64::MAX);
        let at_least = (next - through).clamp(1, WRAP);
        let below = match self.after {
            None => WRAP,
            Some(a) => (next - i64::try_from(a).unwrap_or(i64::MAX)).clamp(at_least, WRAP),
        };
        (at_least, below)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[(&str, OptionValue)]) -> Vec<(String, OptionValue)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect()
    }

    fn s(v: &str) -> OptionValue {
        OptionValue::String(v.into())
    }

    fn base() -> Vec<(&'static str, OptionValue)> {
        vec![
            ("destination_table_name", s("events")),
            ("watermark_column", s("updated_at")),
            ("watermark_table_name", s("public.events")),
        ]
    }

    #[test]
    fn defaults_and_peerdb_options() {
        let o = QueryOptions::from_options(&opts(&base()), None).unwrap();
        assert_eq!(o.mode, QueryMode::Append);
        assert_eq!(
            (o.parallelism, o.refresh_interval_secs, o.rows_per_partition),
            (4, 10, 500_000)
        );
        assert!(o.setup_destination_table);
        let mut l = base();
        l.extend([
            ("mode", s("upsert")),
            ("unique_key_columns", s("id, region")),
            ("parallelism", OptionValue::Number("2".into())),
            ("watermark_lag", OptionValue::Number("30".into())),
            ("destination_table_name", s("dw.events")),
        ]);
        l.remove(0);
        let o = QueryOptions::from_options(&opts(&l), None).unwrap();
        assert_eq!(o.mode.unique_key(), ["id", "region"]);
        assert_eq!(o.destination.database.as_deref(), Some("dw"));
        assert_eq!(o.watermark_lag, Some(30));
        // The table the query reads is the watermark table when none is named.
        let l = [
            ("destination_table_name", s("t")),
            ("watermark_column", s("at")),
        ];
        let read = TableName::new("sales", "orders");
        let o = QueryOptions::from_options(&opts(&l), Some(read.clone())).unwrap();
        assert_eq!(
            o.watermark.as_ref().map(WatermarkSource::table),
            Some(&read)
        );
        let e = QueryOptions::from_options(&opts(&l), None).unwrap_err();
        assert!(e.to_string().contains("watermark_table_name"), "{e}");
    }

    #[test]
    fn every_inconsistency_is_named() {
        let cases: Vec<(Vec<(&str, OptionValue)>, &str)> = vec![
            (vec![("mode", s("upsert"))], "unique_key_columns"),
            (vec![("mode", s("overwrite"))], "mode"),
            (vec![("mode", s("sideways"))], "mode"),
            (vec![("unique_key_columns", s("id"))], "unique_key_columns"),
            (
                vec![("unique_key_columns", s("id,,x")), ("mode", s("upsert"))],
                "unique_key_columns",
            ),
            (
                vec![("watermark_lag", OptionValue::Number("5".into()))],
                "watermark_lag",
            ),
            (
                vec![("parallelism", OptionValue::Number("0".into()))],
                "parallelism",
            ),
            (vec![("colour", s("red"))], "colour"),
            (
                vec![("watermark_table_name", s("a.b.c"))],
                "watermark_table_name",
            ),
        ];
        for (extra, named) in cases {
            let mut l: Vec<(&str, OptionValue)> = base()
                .into_iter()
                .filter(|(n, _)| !extra.iter().any(|(e, _)| e == n))
                .collect();
            l.extend(extra);
            let e = QueryOptions::from_options(&opts(&l), None).unwrap_err();
            assert!(e.to_string().contains(named), "{named}: {e}");
        }
        // Without a watermark a query mirror runs once only.
        let e = QueryOptions::from_options(&opts(&[("destination_table_name", s("t"))]), None)
            .unwrap_err();
        assert!(e.to_string().contains("watermark_column"), "{e}");
        let o = QueryOptions::from_options(
            &opts(&[
                ("destination_table_name", s("t")),
                ("initial_copy_only", OptionValue::Bool(true)),
                ("mode", s("overwrite")),
            ]),
            None,
        )
        .unwrap();
        assert_eq!((o.watermark, o.mode), (None, QueryMode::Overwrite));
        // xmin takes no lag.
        let mut l = base();
        l[1] = ("watermark_column", s("xmin"));
        l.extend([
            ("mode", s("upsert")),
            ("unique_key_columns", s("id")),
            ("watermark_lag", OptionValue::Number("5".into())),
        ]);
        let e = QueryOptions::from_options(&opts(&l), None).unwrap_err();
        assert!(e.to_string().contains("xmin"), "{e}");
    }

    #[test]
    fn watermarks_print_as_postgresql_does() {
        let w = |k, v| Watermark::new(k, v).to_string();
        assert_eq!(w(WatermarkKind::Int64, -5), "-5");
        assert_eq!(w(WatermarkKind::Date, 0), "2000-01-01");
        assert_eq!(w(WatermarkKind::Date, -730_485), "0001-01-01 BC");
        assert_eq!(
            w(WatermarkKind::TimestampTz, 86_400_000_000 + 1_500_000),
            "2000-01-02 00:00:01.5+00"
        );
        assert_eq!(
            w(WatermarkKind::Timestamp, -1),
            "1999-12-31 23:59:59.999999"
        );
        assert_eq!(w(WatermarkKind::Timestamp, i64::MAX), "infinity");
        assert!(
            Watermark::new(WatermarkKind::Int64, -1).version()
                < Watermark::new(WatermarkKind::Int64, 0).version()
        );
    }

    #[test]
    fn xid_distances() {
        let r = XidRange {
            after: Some(100),
            through: 150,
            next: 160,
        };
        assert_eq!(r.distances(), (10, 60));
        let first = XidRange { after: None, ..r };
        assert_eq!(first.distances(), (10, 1 << 32));
        let far = XidRange {
            after: Some(1),
            through: 5 << 32,
            next: (5 << 32) + 3,
        };
        assert_eq!(far.distances(), (3, 1 << 32));
    }
}
