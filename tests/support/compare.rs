//! The one comparer: a destination's current rows against the source's.
//!
//! [`converge`] waits until a destination table's rows, rendered as a [`View`] asks, equal the
//! source's; [`converge_exactly`] until every column of every row holds the source's value
//! exactly, as the destination must hold it (ClickHouse: the RowBinary of the mapped value;
//! PostgreSQL: the same value, compared by the type's own output). Both fail at once when the
//! mirror fails, and on timeout say what differs.

use std::time::{Duration, Instant};

use ferry_core::ident::pg_ident;
use ferry_testkit::TempPgDatabase;
use tokio_postgres::Client;

use crate::dest::{source_rows, Col, Dest};
use crate::{clickhouse_row_bytes, expected_rows};

/// How long a destination may take to converge.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(180);

/// A source table and its destination table, compared as rendered by `cols` in `order`.
pub struct View<'a> {
    pub source: &'a str,
    pub dest: &'a str,
    pub cols: Vec<Col<'a>>,
    pub order: &'a str,
}

impl<'a> View<'a> {
    /// The same table name at both ends.
    pub fn new(table: &'a str, cols: &[Col<'a>], order: &'a str) -> View<'a> {
        View {
            source: table,
            dest: table,
            cols: cols.to_vec(),
            order,
        }
    }

    /// A destination table of another name.
    pub fn into_table(mut self, dest: &'a str) -> View<'a> {
        self.dest = dest;
        self
    }
}

/// A mirror's state and last error.
pub async fn mirror_state(ferry: &Client, mirror: &str) -> (String, String) {
    let r = ferry
        .query_one(
            "SELECT state, coalesce(last_error, '') FROM mirror_status WHERE mirror = $1",
            &[&mirror],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

/// Fails the test when a mirror has failed, or a table of it.
pub async fn assert_not_failed(ferry: &Client, step: &str) {
    for r in ferry
        .query(
            "SELECT mirror, state, coalesce(last_error, '') FROM mirror_status",
            &[],
        )
        .await
        .unwrap()
    {
        let (mirror, state, error): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        assert_ne!(state, "failed", "{step}: mirror {mirror} failed: {error}");
    }
    let failed = ferry
        .query(
            "SELECT source_table, coalesce(error, '') FROM mirror_tables WHERE state = 'failed'",
            &[],
        )
        .await
        .unwrap();
    if let Some(r) = failed.first() {
        panic!(
            "{step}: table {} failed: {}",
            r.get::<_, String>(0),
            r.get::<_, String>(1)
        );
    }
}

/// Waits until `dest` holds exactly the source's rows of `view`.
pub async fn converge(ferry: &Client, src: &Client, dest: &Dest, view: &View<'_>, step: &str) {
    let started = Instant::now();
    loop {
        let want = source_rows(src, view.source, &view.cols, view.order).await;
        let got = dest.rows(view.dest, &view.cols, view.order).await;
        if want == got {
            println!(
                "{step}: {} rows of {} equal after {:?}",
                want.len(),
                view.dest,
                started.elapsed()
            );
            return;
        }
        assert_not_failed(ferry, step).await;
        if started.elapsed() > CONVERGE_TIMEOUT {
            let missing: Vec<&String> = want.iter().filter(|r| !got.contains(r)).take(5).collect();
            let extra: Vec<&String> = got.iter().filter(|r| !want.contains(r)).take(5).collect();
            panic!(
                "{step}: {:?} did not converge: source {} rows, destination {}; \
                 only at the source: {missing:?}; only at the destination: {extra:?}",
                dest.kind(),
                want.len(),
                got.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every column of `table` as its type outputs it, in `key` order (NULL as `None`), with the
/// session settings every Ferry connection has.
pub async fn output_rows(db: &TempPgDatabase, table: &str, key: &str) -> Vec<Vec<Option<String>>> {
    let client = db.connect().await;
    client
        .batch_execute("SET DateStyle = 'ISO'; SET IntervalStyle = 'postgres'; SET TimeZone = 'UTC'; SET extra_float_digits = 3")
        .await
        .unwrap();
    let columns: Vec<String> = client
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass
             AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&pg_ident(table)],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default();
    if columns.is_empty() {
        return Vec::new();
    }
    // A row value whose fields are all NULL is not NULL itself.
    let list: Vec<String> = columns
        .iter()
        .map(|c| {
            let q = pg_ident(c);
            format!("CASE WHEN num_nulls({q}) = 0 THEN format('%s', {q}) END")
        })
        .collect();
    let sql = format!(
        "SELECT {} FROM {} ORDER BY {}",
        list.join(", "),
        pg_ident(table),
        pg_ident(key)
    );
    match client.query(&sql, &[]).await {
        Ok(rows) => rows
            .iter()
            .map(|r| (0..columns.len()).map(|i| r.get(i)).collect())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Waits until the destination's `table` holds the source's, every column value for value.
pub async fn converge_exactly(
    ferry: &Client,
    source: &TempPgDatabase,
    dest: &Dest,
    table: &str,
    key: &str,
    step: &str,
) {
    let started = Instant::now();
    loop {
        let Some(diff) = exact_difference(source, dest, table, key, false).await else {
            println!(
                "{step}: {table} equal, value for value, after {:?}",
                started.elapsed()
            );
            return;
        };
        assert_not_failed(ferry, step).await;
        if started.elapsed() > CONVERGE_TIMEOUT {
            let detail = exact_difference(source, dest, table, key, true)
                .await
                .unwrap_or(diff);
            panic!(
                "{step}: {:?} holds other values than the source: {detail}",
                dest.kind()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How the destination's `table` differs from the source's, if it does; `detailed` names
/// the columns.
async fn exact_difference(
    source: &TempPgDatabase,
    dest: &Dest,
    table: &str,
    key: &str,
    detailed: bool,
) -> Option<String> {
    match dest {
        Dest::Postgres(d) => {
            let want = output_rows(source, table, key).await;
            let got = output_rows(d, table, key).await;
            if want == got {
                return None;
            }
            let first = want
                .iter()
                .zip(&got)
                .enumerate()
                .find(|(_, (a, b))| a != b)
                .map(|(i, (a, b))| {
                    let cols: Vec<String> = a
                        .iter()
                        .zip(b)
                        .enumerate()
                        .filter(|(_, (x, y))| x != y)
                        .map(|(c, (x, y))| format!("column {c}: {x:?} vs {y:?}"))
                        .collect();
                    format!("row {i}: {cols:?}")
                });
            Some(format!(
                "source {} rows, destination {}; first difference: {first:?}",
                want.len(),
                got.len()
            ))
        }
        Dest::ClickHouse(d) => {
            let expected = expected_rows(source, table, key).await;
            let names: Vec<&str> = expected.columns.iter().map(|c| c.name.as_str()).collect();
            if clickhouse_row_bytes(d, table, &names, key).await == expected.rows_bytes {
                return None;
            }
            let mut differing = Vec::new();
            if detailed {
                for (i, c) in expected.columns.iter().enumerate() {
                    let got = clickhouse_row_bytes(d, table, &[c.name.as_str()], key).await;
                    if got != expected.per_column[i] {
                        differing.push(c.name.clone());
                    }
                }
            }
            Some(format!(
                "source {} rows; columns that differ: {differing:?}",
                expected.rows
            ))
        }
    }
}

/// Every table of the mirrors: (source table, state, error).
pub async fn table_states(client: &Client) -> Vec<(String, String, String)> {
    client
        .query(
            "SELECT source_table, state, coalesce(error, '') FROM mirror_tables ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Waits until `table` of the mirror is in `state`; returns its error text.
pub async fn wait_table_state(client: &Client, table: &str, state: &str) -> String {
    let started = Instant::now();
    loop {
        let rows = client
            .query(
                "SELECT state, coalesce(error, '') FROM mirror_tables WHERE source_table = $1",
                &[&table],
            )
            .await
            .unwrap();
        if let Some(r) = rows.first() {
            if r.get::<_, String>(0) == state {
                return r.get(1);
            }
        }
        assert!(
            started.elapsed() < CONVERGE_TIMEOUT,
            "{table} did not become {state}: {:?}",
            table_states(client).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The one `bigint` that `sql` (with no parameters) returns.
pub async fn scalar(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}
