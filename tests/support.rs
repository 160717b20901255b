//! Support for the end-to-end tests: an in-process daemon ([`TestFerry`]), the destinations a
//! scenario runs against ([`Dest`], [`Kind`]) with the one way to read their current rows, and
//! the one comparer ([`converge`], [`converge_exactly`]).
//!
//! A scenario that holds for every destination is written once as `async fn name(kind: Kind)`
//! and run against each with [`on_every_destination!`].
#![allow(clippy::print_stdout)]

#[path = "support/compare.rs"]
mod compare;
#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/dest.rs"]
mod dest;
#[path = "support/workload.rs"]
mod workload;

use ferry_core::ident::{ch_ident, ch_qualified, pg_ident};
use ferry_core::{ColumnSchema, Value};
use ferry_postgres::connect::connect;
use ferry_postgres::source::describe_table;
use ferry_postgres::types::decode_text;
use ferry_testkit::{PgServer, TempChDatabase, TempPgDatabase};
use tokio_postgres::Client;

pub use compare::{
    assert_not_failed, converge, converge_exactly, mirror_state, output_rows, scalar, table_states,
    wait_table_state, View, CONVERGE_TIMEOUT,
};
pub use daemon::{metrics_text, TestFerry, KEY, PASSWORD, USER};
pub use dest::{source_digests, source_rows, vals, Col, Dest, Kind};
pub use ferry_testkit::{ChServer, PgServer as Pg};
pub use workload::Workload;

/// Runs a scenario `async fn name(kind: Kind)` against every destination, as the tests
/// `name::clickhouse` and `name::postgres`. An optional `(flavor = …)` goes to `tokio::test`.
#[macro_export]
macro_rules! on_every_destination {
    ($scenario:ident $($flavor:tt)?) => {
        mod $scenario {
            #[tokio::test $($flavor)?]
            async fn clickhouse() {
                super::$scenario($crate::Kind::ClickHouse).await
            }

            #[tokio::test $($flavor)?]
            async fn postgres() {
                super::$scenario($crate::Kind::Postgres).await
            }
        }
    };
}

/// The SQLSTATE of an error from a client call.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// `CREATE PEER … FROM POSTGRES` for the test PostgreSQL, with extra/overriding options.
pub fn pg_peer_sql(name: &str, database: &str, password: &str) -> String {
    let pg = PgServer::from_env();
    format!(
        "CREATE PEER {name} FROM POSTGRES WITH (host = '{}', port = {}, user = '{}', password = '{password}', database = '{database}')",
        pg.host, pg.port, pg.user
    )
}

/// `CREATE PEER … FROM CLICKHOUSE` for the test ClickHouse.
pub fn ch_peer_sql(name: &str, database: &str) -> String {
    let ch = ChServer::from_env();
    format!(
        "CREATE PEER {name} FROM CLICKHOUSE WITH (host = '{}', port = {}, user = 'default', password = '', database = '{database}', disable_tls = true)",
        ch.host, ch.http_port
    )
}

/// Polls `mirror_status` through Ferry until the mirror reaches `state` (or `failed`, which
/// ends the wait early unless it is the state awaited). Panics after `timeout`.
pub async fn wait_for_state(
    client: &Client,
    mirror: &str,
    state: &str,
    timeout: std::time::Duration,
) -> String {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let rows = client
            .query(
                "SELECT state, coalesce(last_error, '') FROM mirror_status WHERE mirror = $1",
                &[&mirror],
            )
            .await
            .expect("read mirror_status");
        if let Some(r) = rows.first() {
            let s: String = r.get(0);
            let err: String = r.get(1);
            if s == state {
                return s;
            }
            if s == "failed" {
                panic!("mirror {mirror} failed while waiting for {state}: {err}");
            }
            last = s;
        }
        if std::time::Instant::now() > deadline {
            panic!("mirror {mirror} did not reach {state} in {timeout:?} (last state {last:?})");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A daemon, a source and a destination database, and peers `src` and `dst` for them.
pub struct Setup {
    pub ferry: TestFerry,
    /// A client of the daemon.
    pub client: Client,
    pub source: TempPgDatabase,
    pub dest: Dest,
    /// A client of the source database.
    pub src: Client,
}

/// Starts a daemon with a fresh source and a fresh destination of `kind`, and declares their
/// peers.
pub async fn setup(kind: Kind) -> Setup {
    let ferry = TestFerry::start().await;
    let pg = PgServer::from_env();
    let source = pg.temp_database("ferry_src").await;
    let dest = Dest::create(kind).await;
    let client = ferry.connect().await;
    client
        .batch_execute(&pg_peer_sql("src", &source.name, &pg.password))
        .await
        .expect("source peer");
    client
        .batch_execute(&dest.peer_sql("dst"))
        .await
        .expect("destination peer");
    let src = source.connect().await;
    Setup {
        ferry,
        client,
        source,
        dest,
        src,
    }
}

/// A connection to `database` with the initial load's session settings, and `public.table`
/// as the load sees it.
async fn describe(database: &str, table: &str) -> (Client, ferry_postgres::source::SourceTable) {
    let pg = PgServer::from_env();
    let cfg = ferry_core::peer::PostgresConfig {
        host: pg.host.clone(),
        port: pg.port,
        user: pg.user.clone(),
        password: pg.password.clone(),
        database: database.to_owned(),
        ssl_mode: Default::default(),
        ssl_root_cert: None,
    };
    let client = connect(&cfg, "test").await.unwrap();
    client
        .batch_execute(
            "SET DateStyle = 'ISO'; SET IntervalStyle = 'postgres'; SET TimeZone = 'UTC';
             SET extra_float_digits = 3; SET bytea_output = 'hex'",
        )
        .await
        .unwrap();
    let scale = ferry_postgres::source::money_scale(&client, &cfg)
        .await
        .unwrap();
    let t = describe_table(
        &client,
        &cfg,
        &ferry_core::TableName::new("public", table),
        &[],
        scale,
    )
    .await
    .unwrap()
    .unwrap_or_else(|| panic!("no table {table}"));
    (client, t)
}

/// A source table as the initial load reads it: its columns, and the binary COPY stream of
/// `SELECT <the load's select list> FROM table <rest>` in the chunks the server sent (one
/// CopyData message each).
pub async fn copy_stream(
    database: &str,
    table: &str,
    rest: &str,
) -> (Vec<ColumnSchema>, Vec<bytes::Bytes>) {
    use futures::StreamExt;
    let (client, t) = describe(database, table).await;
    let select: Vec<String> = t
        .columns
        .iter()
        .zip(&t.mappings)
        .map(|(c, m)| m.select_expr(&pg_ident(&c.name)))
        .collect();
    let sql = format!(
        "COPY (SELECT {} FROM {} {rest}) TO STDOUT (FORMAT binary)",
        select.join(", "),
        pg_ident(table)
    );
    let stream = client.copy_out(sql.as_str()).await.unwrap();
    futures::pin_mut!(stream);
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.next().await {
        chunks.push(chunk.unwrap());
    }
    (t.columns, chunks)
}

/// The source's rows of a table, read as text in key order, decoded and encoded as ClickHouse
/// must hold them: per column, the RowBinary of that column's values in key order.
pub struct Expected {
    pub columns: Vec<ColumnSchema>,
    pub rows: usize,
    /// Per column, the RowBinary of that column's values in key order.
    pub per_column: Vec<Vec<u8>>,
    /// Whole rows, one after the other: what `SELECT <every column> … FORMAT RowBinary` gives.
    pub rows_bytes: Vec<u8>,
}

pub async fn expected_rows(source: &TempPgDatabase, table: &str, key: &str) -> Expected {
    let (client, t) = describe(&source.name, table).await;
    // Each value in its type's output format, as pgoutput sends it. A row value whose fields
    // are all NULL is not NULL itself.
    let list: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            let q = pg_ident(&c.name);
            format!("CASE WHEN num_nulls({q}) = 0 THEN format('%s', {q}) END")
        })
        .collect();
    let rows = client
        .query(
            &format!(
                "SELECT {} FROM {} ORDER BY {}",
                list.join(", "),
                pg_ident(table),
                pg_ident(key)
            ),
            &[],
        )
        .await
        .unwrap();
    let mut per_column = vec![Vec::new(); t.columns.len()];
    let mut rows_bytes = Vec::new();
    for r in &rows {
        for (i, c) in t.columns.iter().enumerate() {
            let text: Option<String> = r.get(i);
            let v = match text {
                None => Value::Null,
                Some(s) => {
                    decode_text(&c.kind, &s).unwrap_or_else(|e| panic!("column {}: {e}", c.name))
                }
            };
            let mut one = Vec::new();
            ferry_clickhouse::rowbinary::encode(&c.kind, c.nullable, &v, &mut one)
                .unwrap_or_else(|e| panic!("column {}: {e}", c.name));
            rows_bytes.extend_from_slice(&one);
            per_column[i].extend_from_slice(&one);
        }
    }
    Expected {
        columns: t.columns,
        rows: rows.len(),
        per_column,
        rows_bytes,
    }
}

/// ClickHouse's current state of `columns` (in key order) as RowBinary.
pub async fn clickhouse_row_bytes(
    dest: &TempChDatabase,
    table: &str,
    columns: &[&str],
    key: &str,
) -> Vec<u8> {
    let list: Vec<String> = columns.iter().map(|c| ch_ident(c)).collect();
    let sql = format!(
        "SELECT {} FROM {} FINAL WHERE _ferry_is_deleted = 0 ORDER BY {} FORMAT RowBinary",
        list.join(", "),
        ch_qualified(&dest.name, table),
        ch_ident(key)
    );
    let mut cursor = dest.client().query(&sql).fetch_bytes("RowBinary").unwrap();
    match cursor.collect().await {
        Ok(b) => b.to_vec(),
        Err(e) => panic!("reading {table} from ClickHouse: {e}"),
    }
}

/// The extensions [`ALL_TYPES_TABLE`] uses, which a PostgreSQL destination needs too.
pub const ALL_TYPES_EXTENSIONS: [&str; 2] = ["citext", "hstore"];

/// A table with a column of every type Ferry maps (the README's table), in the source.
pub const ALL_TYPES_TABLE: &str = r#"
CREATE EXTENSION IF NOT EXISTS citext;
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text);
CREATE TABLE all_types (
    id int8 PRIMARY KEY,
    c_bool bool, c_int2 int2, c_int4 int4, c_int8 int8, c_float4 float4, c_float8 float8,
    c_numeric numeric, c_numeric_p numeric(20, 5), c_numeric_big numeric(76, 20), c_money money,
    c_text text, c_varchar varchar(10), c_char char(5), c_name name, c_citext citext,
    c_bytea bytea, c_uuid uuid, c_json json, c_jsonb jsonb,
    c_date date, c_time time, c_timetz timetz, c_ts timestamp, c_tstz timestamptz, c_interval interval,
    c_inet inet, c_cidr cidr, c_macaddr macaddr, c_bit bit(4), c_varbit varbit,
    c_enum mood, c_domain posint, c_int_arr int4[], c_text_arr text[], c_int_arr2 int4[][],
    c_num_arr numeric(10, 2)[], c_composite pair, c_range int4range, c_point point, c_hstore hstore,
    c_tsvector tsvector, c_xml xml, c_oid oid, c_not_null text NOT NULL DEFAULT ''
);
"#;

/// Rows of `all_types` covering NULLs and edge values of every type.
pub const ALL_TYPES_ROWS: &str = r#"
INSERT INTO all_types VALUES (
    1, true, -32768, 2147483647, -9223372036854775808, 1.5, 3.141592653589793,
    123456789012345678901234567890.123456789012345678901234567890, -12345.6789, 1234567890123456789012345678901234567890123456.12345678901234567890, -1234.56,
    'héllo wörld ✓', 'varchar', 'ab', 'a_name', 'CaseLess',
    '\x00ff10'::bytea, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2, null]}', '{"b": {"c": true}}',
    '2024-02-29', '23:59:59.999999', '12:34:56.789+05:30', '2024-01-02 03:04:05.678901', '2024-01-02 03:04:05.678901+02', '1 year 2 mons 3 days 04:05:06.789',
    '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', B'1010', B'110',
    'happy', 42, '{1,NULL,3}', '{"a b","c\"d",NULL,"NULL"}', '{{1,2},{3,NULL}}',
    '{1.50,NULL,-2.25}', ROW(7, 'seven'), '[1,10)', '(1.5,-2)', 'a=>1, b=>NULL',
    'fat cats ate rats', '<x>1</x>', 4294967295, 'x'
), (
    2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, ''
), (
    3, false, 0, 0, 9223372036854775807, 'NaN', '-Infinity',
    'NaN', 0.00001, -0.00000000000000000001, 0,
    '', '', '', '', '',
    '\x'::bytea, '00000000-0000-0000-0000-000000000000', '[]', 'null',
    'infinity', '00:00:00', '00:00:00-12', '-infinity', '1900-01-01 00:00:00+00', '-178000000 years',
    '::1', '2001:db8::/32', 'ff:ff:ff:ff:ff:ff', B'0000', B'',
    'sad', 1, '{}', '{}', '{}',
    '{}', ROW(NULL, NULL), 'empty', '(0,0)', '',
    '', '<y/>', 0, repeat('long ', 4000)
), (
    4, true, 1, 1, 1, 'Infinity', 1e308,
    '0.000000000000000000000000000000000000000000000000001', 99999999999999.99999, 0, 92233720368547758.07,
    E'tab\there\nnewline \\ backslash', 'x', 'abcde', 'n', 'Ü',
    decode(repeat('ab', 5000), 'hex'), 'ffffffff-ffff-ffff-ffff-ffffffffffff', '"s"', '[1, "x", {"k": 1.5}]',
    '0001-01-01 BC', '12:00:00', '24:00:00+00', '2299-12-31 23:59:59.999999', '1899-12-31 23:59:59.999999+00', '-1 days +02:03:04',
    '0.0.0.0', '0.0.0.0/0', '00:00:00:00:00:00', B'1111', B'1010101010',
    'ok', 2147483647, '{-1}', '{""}', '{{5},{6}}',
    '{99999999.99}', ROW(-1, ''), '(,)', '(-1e300,1e300)', '"k"=>"v w"',
    'a:1 b:2', '<a b="c"/>', 1, 'y'
);
"#;
