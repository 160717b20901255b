//! The destinations a test runs against, and the one way to read what a destination holds now.
//!
//! A scenario is written once, for a [`Dest`], and run against each [`Kind`]
//! ([`crate::on_every_destination`]). It reads a destination's current rows through
//! [`Dest::rows`], which renders each row as text the same way for every destination (and for
//! the source, [`source_rows`]): a ClickHouse table's current rows are those of `FINAL` not
//! marked deleted (every row of a plain `MergeTree`, a query mirror's append table), a
//! PostgreSQL table's rows are its rows.

use ferry_core::ident::{ch_ident, ch_qualified, pg_ident, pg_qualified};
use ferry_testkit::{ChServer, PgServer, TempChDatabase, TempPgDatabase};
use tokio_postgres::Client;

/// A kind of destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ClickHouse,
    Postgres,
}

/// A destination database of the test's own, dropped with it.
pub enum Dest {
    ClickHouse(TempChDatabase),
    Postgres(TempPgDatabase),
}

/// How a column shows in a row's text. NULL shows as `~`.
#[derive(Debug, Clone, Copy)]
pub enum Col<'a> {
    /// Its value: integers and text (`char(n)` with its padding).
    Val(&'a str),
    /// The MD5 of a text (for large values).
    Md5(&'a str),
    /// A `numeric` without trailing zeros.
    Num(&'a str),
    /// A `timestamp` with microseconds.
    Ts(&'a str),
    /// A `timestamptz` in UTC with microseconds.
    TsTz(&'a str),
}

/// `Col::Val` of each name.
pub fn vals<'a>(names: &[&'a str]) -> Vec<Col<'a>> {
    names.iter().map(|n| Col::Val(n)).collect()
}

/// A PostgreSQL expression rendering a row as [`Col`]s ask.
fn pg_render(cols: &[Col<'_>]) -> String {
    let exprs: Vec<String> = cols
        .iter()
        .map(|c| match c {
            Col::Val(n) => format!(
                "CASE WHEN {q} IS NULL THEN '~' ELSE format('%s', {q}) END",
                q = pg_ident(n)
            ),
            Col::Md5(n) => format!("coalesce(md5({}), '~')", pg_ident(n)),
            Col::Num(n) => format!("coalesce(trim_scale({})::text, '~')", pg_ident(n)),
            Col::Ts(n) => format!(
                "coalesce(to_char({}, 'YYYY-MM-DD HH24:MI:SS.US'), '~')",
                pg_ident(n)
            ),
            Col::TsTz(n) => format!(
                "coalesce(to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), '~')",
                pg_ident(n)
            ),
        })
        .collect();
    format!("concat_ws('|', {})", exprs.join(", "))
}

/// A ClickHouse expression rendering a row as [`Col`]s ask, as [`pg_render`] does.
fn ch_render(cols: &[Col<'_>]) -> String {
    let exprs: Vec<String> = cols
        .iter()
        .map(|c| match c {
            Col::Val(n) | Col::Num(n) | Col::Ts(n) | Col::TsTz(n) => {
                format!("ifNull(toString({}), '~')", ch_ident(n))
            }
            Col::Md5(n) => format!("ifNull(lower(hex(MD5({}))), '~')", ch_ident(n)),
        })
        .collect();
    format!("concat('', {})", exprs.join(", '|', "))
}

/// A PostgreSQL query rendering `table`'s rows as [`Col`]s ask, ordered by `order`.
fn pg_rows_sql(table: &str, cols: &[Col<'_>], order: &str) -> String {
    format!("SELECT {} FROM {table} ORDER BY {order}", pg_render(cols))
}

/// A PostgreSQL query of per-bucket digests (see [`Dest::digests`]).
fn pg_digests_sql(table: &str, cols: &[Col<'_>], key: &str, bucket: i64) -> String {
    let k = pg_ident(key);
    format!(
        "SELECT ({k} / {bucket})::int8, count(*), md5(string_agg({}, E'\\n' ORDER BY {k}))
         FROM {table} GROUP BY 1 ORDER BY 1",
        pg_render(cols)
    )
}

/// The source's per-bucket digests of `table` (see [`Dest::digests`]).
pub async fn source_digests(
    src: &Client,
    table: &str,
    cols: &[Col<'_>],
    key: &str,
    bucket: i64,
) -> Vec<(i64, i64, String)> {
    let sql = pg_digests_sql(&pg_table(table, "public"), cols, key, bucket);
    src.query(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// `schema.table` or `table` (in `default`) as a quoted PostgreSQL name.
fn pg_table(name: &str, default: &str) -> String {
    match name.split_once('.') {
        Some((s, t)) => pg_qualified(s, t),
        None => pg_qualified(default, name),
    }
}

/// The source's rows of `table` (in `public` unless qualified), rendered as for [`Dest::rows`].
pub async fn source_rows(src: &Client, table: &str, cols: &[Col<'_>], order: &str) -> Vec<String> {
    let sql = pg_rows_sql(&pg_table(table, "public"), cols, order);
    src.query(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

impl Dest {
    /// A fresh database on the shared server of that kind.
    pub async fn create(kind: Kind) -> Dest {
        match kind {
            Kind::ClickHouse => {
                Dest::ClickHouse(ChServer::from_env().temp_database("ferry_dst").await)
            }
            Kind::Postgres => Dest::Postgres(PgServer::from_env().temp_database("ferry_dst").await),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Dest::ClickHouse(_) => Kind::ClickHouse,
            Dest::Postgres(_) => Kind::Postgres,
        }
    }

    /// `CREATE PEER name FROM …` for this database.
    pub fn peer_sql(&self, name: &str) -> String {
        match self {
            Dest::ClickHouse(d) => format!(
                "CREATE PEER {name} FROM CLICKHOUSE WITH (host = '{}', port = {}, user = 'default', password = '', database = '{}', disable_tls = true)",
                d.server.host, d.server.http_port, d.name
            ),
            Dest::Postgres(d) => format!(
                "CREATE PEER {name} FROM POSTGRES WITH (host = '{}', port = {}, user = '{}', password = '{}', database = '{}')",
                d.server.host, d.server.port, d.server.user, d.server.password, d.name
            ),
        }
    }

    /// Where a destination name without a namespace goes: the ClickHouse database, or the
    /// PostgreSQL schema `public`.
    pub fn namespace(&self) -> &str {
        match self {
            Dest::ClickHouse(d) => &d.name,
            Dest::Postgres(_) => "public",
        }
    }

    /// The PostgreSQL database (panics for ClickHouse).
    pub fn pg(&self) -> &TempPgDatabase {
        match self {
            Dest::Postgres(d) => d,
            Dest::ClickHouse(_) => panic!("not a PostgreSQL destination"),
        }
    }

    /// The ClickHouse database (panics for PostgreSQL).
    pub fn ch(&self) -> &TempChDatabase {
        match self {
            Dest::ClickHouse(d) => d,
            Dest::Postgres(_) => panic!("not a ClickHouse destination"),
        }
    }

    /// The current rows of `table` (in [`Dest::namespace`] unless qualified), rendered as
    /// `cols` asks and ordered by `order` (a list of columns); empty while the table cannot
    /// be read.
    pub async fn rows(&self, table: &str, cols: &[Col<'_>], order: &str) -> Vec<String> {
        match self {
            Dest::Postgres(d) => {
                let sql = pg_rows_sql(&pg_table(table, "public"), cols, order);
                let client = d.connect().await;
                match client.query(&sql, &[]).await {
                    Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
                    Err(_) => Vec::new(),
                }
            }
            Dest::ClickHouse(d) => {
                let sql = format!(
                    "SELECT {} FROM {} ORDER BY {order}",
                    ch_render(cols),
                    self.ch_current(table).await
                );
                d.client()
                    .query(&sql)
                    .fetch_all::<String>()
                    .await
                    .unwrap_or_default()
            }
        }
    }

    /// Per bucket of keys (`key / bucket`, an integer key), the number of current rows and
    /// an MD5 of their rendering in key order: a large table compared without pulling its
    /// rows into the test. Empty while the table cannot be read.
    pub async fn digests(
        &self,
        table: &str,
        cols: &[Col<'_>],
        key: &str,
        bucket: i64,
    ) -> Vec<(i64, i64, String)> {
        match self {
            Dest::Postgres(d) => {
                let sql = pg_digests_sql(&pg_table(table, "public"), cols, key, bucket);
                match d.connect().await.query(&sql, &[]).await {
                    Ok(rows) => rows
                        .iter()
                        .map(|r| (r.get(0), r.get(1), r.get(2)))
                        .collect(),
                    Err(_) => Vec::new(),
                }
            }
            Dest::ClickHouse(d) => {
                let k = ch_ident(key);
                let sql = format!(
                    "SELECT toInt64(intDiv({k}, {bucket})) AS b, toInt64(count()),
                            lower(hex(MD5(arrayStringConcat(arrayMap(x -> x.2, arraySort(x -> x.1,
                              groupArray(({k}, {})))), '\\n'))))
                     FROM {} GROUP BY b ORDER BY b",
                    ch_render(cols),
                    self.ch_current(table).await
                );
                d.client()
                    .query(&sql)
                    .fetch_all::<(i64, i64, String)>()
                    .await
                    .unwrap_or_default()
            }
        }
    }

    fn ch_table(&self, table: &str) -> String {
        match table.split_once('.') {
            Some((db, t)) => ch_qualified(db, t),
            None => ch_qualified(self.namespace(), table),
        }
    }

    /// A ClickHouse table's current rows, as a `FROM` clause: `FINAL` of the rows not marked
    /// deleted, or every row of a plain `MergeTree` (a query mirror's append table).
    async fn ch_current(&self, table: &str) -> String {
        let (db, t) = table.split_once('.').unwrap_or((self.namespace(), table));
        let engine = ChServer::from_env()
            .client()
            .query("SELECT engine FROM system.tables WHERE database = ? AND name = ?")
            .bind(db)
            .bind(t)
            .fetch_optional::<String>()
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        if engine == "MergeTree" {
            self.ch_table(table)
        } else {
            format!("{} FINAL WHERE _ferry_is_deleted = 0", self.ch_table(table))
        }
    }

    /// How many rows `table` stores: in ClickHouse every row written, before merges and
    /// `FINAL`.
    pub async fn stored_rows(&self, table: &str) -> i64 {
        match self {
            Dest::Postgres(_) => self.count(table).await,
            Dest::ClickHouse(d) => d
                .client()
                .query(&format!("SELECT count() FROM {}", self.ch_table(table)))
                .fetch_one::<u64>()
                .await
                .unwrap() as i64,
        }
    }

    /// Waits (up to ten seconds) until no write of the initial load runs in the destination
    /// any more: an insert whose last bytes ClickHouse received still commits after its
    /// sender is gone; a PostgreSQL load transaction ends with its connection.
    pub async fn wait_load_writes_ended(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let running: i64 = match self {
                Dest::ClickHouse(d) => d
                    .client()
                    .query(
                        "SELECT count() FROM system.processes
                         WHERE query_kind = 'Insert' AND current_database = ?",
                    )
                    .bind(&d.name)
                    .fetch_one::<u64>()
                    .await
                    .unwrap() as i64,
                Dest::Postgres(d) => d
                    .connect()
                    .await
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity
                         WHERE datname = current_database() AND application_name = 'ferry load'",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0),
            };
            if running == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{running} writes of the load still running"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The number of current rows of `table` and the sum of an integer column of theirs;
    /// `None` while the table cannot be read.
    pub async fn count_and_sum(&self, table: &str, column: &str) -> Option<(i64, i64)> {
        match self {
            Dest::Postgres(d) => {
                let sql = format!(
                    "SELECT count(*), coalesce(sum({}), 0)::int8 FROM {}",
                    pg_ident(column),
                    pg_table(table, "public")
                );
                let r = d.connect().await.query_one(&sql, &[]).await.ok()?;
                Some((r.get(0), r.get(1)))
            }
            Dest::ClickHouse(d) => {
                let sql = format!(
                    "SELECT toInt64(count()), toInt64(ifNull(sum({}), 0)) FROM {}",
                    ch_ident(column),
                    self.ch_current(table).await
                );
                d.client().query(&sql).fetch_one::<(i64, i64)>().await.ok()
            }
        }
    }

    /// How many current rows `table` has.
    pub async fn count(&self, table: &str) -> i64 {
        match self {
            Dest::Postgres(d) => d
                .connect()
                .await
                .query_one(
                    &format!("SELECT count(*) FROM {}", pg_table(table, "public")),
                    &[],
                )
                .await
                .unwrap_or_else(|e| panic!("counting {table}: {e}"))
                .get(0),
            Dest::ClickHouse(d) => {
                d.client()
                    .query(&format!(
                        "SELECT count() FROM {}",
                        self.ch_current(table).await
                    ))
                    .fetch_one::<u64>()
                    .await
                    .unwrap_or_else(|e| panic!("counting {table}: {e}")) as i64
            }
        }
    }

    /// The tables of a namespace, by name.
    pub async fn tables(&self, namespace: &str) -> Vec<String> {
        match self {
            Dest::Postgres(d) => d
                .connect()
                .await
                .query(
                    "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY 1",
                    &[&namespace],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect(),
            Dest::ClickHouse(_) => ChServer::from_env()
                .client()
                .query("SELECT name FROM system.tables WHERE database = ? ORDER BY name")
                .bind(namespace)
                .fetch_all::<String>()
                .await
                .unwrap(),
        }
    }

    /// Creates a namespace beside the default one (a ClickHouse database, a PostgreSQL
    /// schema); drop it with [`Dest::drop_namespace`].
    pub async fn create_namespace(&self, name: &str) {
        match self {
            Dest::Postgres(d) => d
                .connect()
                .await
                .batch_execute(&format!("CREATE SCHEMA {}", pg_ident(name)))
                .await
                .unwrap(),
            Dest::ClickHouse(_) => ChServer::from_env()
                .client()
                .query(&format!("CREATE DATABASE {}", ch_ident(name)))
                .execute()
                .await
                .unwrap(),
        }
    }

    /// Drops a namespace made by [`Dest::create_namespace`] (a PostgreSQL schema goes with its
    /// database).
    pub async fn drop_namespace(&self, name: &str) {
        match self {
            Dest::Postgres(_) => {}
            Dest::ClickHouse(_) => ChServer::from_env()
                .client()
                .query(&format!("DROP DATABASE IF EXISTS {}", ch_ident(name)))
                .execute()
                .await
                .unwrap(),
        }
    }

    /// Installs extensions a PostgreSQL destination needs for the source's types (ClickHouse
    /// needs none).
    pub async fn install_extensions(&self, names: &[&str]) {
        if let Dest::Postgres(d) = self {
            let client = d.connect().await;
            for n in names {
                client
                    .batch_execute(&format!("CREATE EXTENSION IF NOT EXISTS {}", pg_ident(n)))
                    .await
                    .unwrap();
            }
        }
    }

    /// The columns of a table in their order, Ferry's own columns left out.
    pub async fn columns(&self, table: &str) -> Vec<String> {
        let (ns, t) = match table.split_once('.') {
            Some((n, t)) => (n.to_owned(), t.to_owned()),
            None => (self.namespace().to_owned(), table.to_owned()),
        };
        match self {
            Dest::Postgres(d) => d
                .connect()
                .await
                .query(
                    "SELECT a.attname::text FROM pg_attribute a
                     JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
                     ORDER BY a.attnum",
                    &[&ns, &t],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect(),
            Dest::ClickHouse(_) => ChServer::from_env()
                .client()
                .query(
                    "SELECT name FROM system.columns WHERE database = ? AND table = ?
                     AND name NOT LIKE '\\_ferry\\_%' ORDER BY position",
                )
                .bind(ns)
                .bind(t)
                .fetch_all::<String>()
                .await
                .unwrap(),
        }
    }
}
