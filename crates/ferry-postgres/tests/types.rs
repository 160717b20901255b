//! Type mapping and decoding against a real PostgreSQL (`scripts/services start`; connection
//! from `FERRY_TEST_PG_HOST` / `_PORT` / `_USER` / `_PASSWORD`).
//!
//! One table holds a column of every mapped type. Its rows are read twice: through
//! `COPY (SELECT …) TO STDOUT (FORMAT binary)` and the [`BinaryCopyDecoder`], fed in chunks of
//! random sizes, and as `col::text` through [`decode_text`], the way pgoutput sends them. Both
//! must give equal values, and a few of them are checked against what they must be.

use std::collections::HashMap;

use ferry_core::ident::{pg_ident, pg_literal};
use ferry_core::value::{PG_EPOCH_UNIX_DAYS, PG_EPOCH_UNIX_MICROS};
use ferry_core::{days_from_civil, Numeric, Value, ValueKind};
use ferry_postgres::copy::BinaryCopyDecoder;
use ferry_postgres::types::{decode_text, value_kind, Mapping, PgColumn, COLUMNS_QUERY};
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

fn config(dbname: &str) -> tokio_postgres::Config {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    let mut c = tokio_postgres::Config::new();
    c.host(env("FERRY_TEST_PG_HOST", "127.0.0.1"))
        .port(env("FERRY_TEST_PG_PORT", "54329").parse().expect("port"))
        .user(env("FERRY_TEST_PG_USER", "postgres"))
        .password(env("FERRY_TEST_PG_PASSWORD", "ferry"))
        .dbname(dbname);
    c
}

async fn connect(dbname: &str) -> Client {
    let (client, conn) = config(dbname)
        .connect(NoTls)
        .await
        .expect("PostgreSQL is not reachable: run scripts/services start");
    tokio::spawn(conn);
    client
}

/// A database of the test's own, dropped when the test ends (even if it fails).
struct TestDb {
    name: String,
}

impl TestDb {
    async fn new() -> TestDb {
        let name = format!("ferry_test_types_{:016x}", rand::random::<u64>());
        connect("postgres")
            .await
            .batch_execute(&format!("CREATE DATABASE {}", pg_ident(&name)))
            .await
            .expect("create database");
        TestDb { name }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            pg_ident(&self.name)
        );
        // The test's runtime is blocked here: use one of our own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async { connect("postgres").await.batch_execute(&sql).await })
        })
        .join();
    }
}

const SCHEMA: &str = r#"
CREATE EXTENSION IF NOT EXISTS citext;
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE pair AS (a int, b text);
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE DOMAIN price AS numeric(10, 2);
CREATE DOMAIN dear AS price;
CREATE DOMAIN intarr AS int[];
CREATE TABLE t (
    id int PRIMARY KEY,
    c_bool bool, c_int2 int2, c_int4 int4, c_int8 int8,
    c_oid oid, c_xid xid, c_regclass regclass,
    c_float4 float4, c_float8 float8,
    c_num numeric, c_num_ps numeric(40, 20), c_num_76 numeric(76, 10), c_num_huge numeric(100, 5),
    c_money money,
    c_text text, c_varchar varchar(10), c_bpchar char(5), c_name name, c_citext citext,
    c_json json, c_jsonb jsonb, c_xml xml,
    c_bytea bytea, c_uuid uuid, c_date date, c_ts timestamp, c_tstz timestamptz,
    c_ts3 timestamp(3),
    c_time time, c_timetz timetz, c_interval interval, c_inet inet, c_cidr cidr,
    c_macaddr macaddr, c_macaddr8 macaddr8, c_bit bit(4), c_varbit varbit, c_char "char",
    c_enum mood, c_comp pair, c_range int4range, c_multirange int4multirange, c_point point,
    c_box box, c_hstore hstore, c_tsvector tsvector, c_tsquery tsquery, c_lsn pg_lsn,
    c_posint posint, c_price price, c_dear dear, c_intarr intarr,
    a_int4 int4[], a_int2d int4[][], a_text text[], a_num numeric(10, 2)[], a_numeric numeric[],
    a_money money[], a_interval interval[], a_uuid uuid[], a_date date[], a_tstz timestamptz[],
    a_bool bool[], a_float8 float8[], a_bytea bytea[], a_enum mood[], a_posint posint[],
    a_box box[], a_jsonb jsonb[], a_price price[]
);
"#;

const ROWS: &str = r#"
INSERT INTO t VALUES (
    1, true, 1, 2, 3, 4, '5', 'pg_class',
    1.5, 0.1, 1e-30, 12345678901234567890.12345678901234567890,
    '123456789012345678901234567890123456789012345678901234567890123456.0123456789',
    123456789012345678901234567890.123456789,
    -1234.56,
    'plain', 'varchar', 'ab', 'name', 'CiText', '{"b": 1,  "a": [1, 2]}', '{"b": 1,  "a": [1, 2]}',
    '<a>x</a>',
    '\x00ff41', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29',
    '2024-02-29 12:34:56.123456', '2024-02-29 12:34:56.123456+05:30', '2024-02-29 12:34:56.789',
    '12:34:56', '12:34:56+05:30', '1 year 2 mons 3 days 04:05:06.7', '192.168.0.1/24', '10.0.0.0/8',
    '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05', B'1010', B'101', 'x',
    'happy', ROW(1, 'a,b'), '[1,5)', '{[1,3),[5,7)}', '(1.5,2)',
    '((0,0),(1,1))', 'a=>1, b=>NULL', 'a fat cat', 'fat & cat', '16/B374D848',
    7, 12.5, 99.99, '{1,2}',
    '{1,NULL,3}', '{{1,NULL},{3,4}}', '{"a \"b\"",NULL,"NULL","",é,"x,y","{}"}',
    '{1.50,NULL,-2}', '{1e-30,NaN,Infinity}', '{"$1,234.56","-$0.01"}',
    '{"1 day",NULL,"-00:00:01"}', '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}',
    '{2000-01-01,infinity,"4713-01-01 BC"}', '{"2000-01-01 00:00:00+00","0044-03-15 12:00:00+00 BC"}',
    '{t,f,NULL}', '{NaN,Infinity,-Infinity,1e+300,-0}', '{"\\x00ff",NULL}', '{sad,happy}',
    '{1,2}', ARRAY['((0,0),(1,1))'::box, '((2,2),(3,3))'::box], ARRAY['{"k": "v,w"}'::jsonb],
    '{1.25}'
);
INSERT INTO t VALUES (
    2, false, -32768, -2147483648, -9223372036854775808, 4294967295, '4294967295', 'pg_type',
    'NaN', '-Infinity', 'NaN', -0.00000000000000000001,
    '-999999999999999999999999999999999999999999999999999999999999999999.9999999999',
    'NaN',
    '-92233720368547758.08',
    '', '', '', '', '', '[]', 'null', '', '\x', '00000000-0000-0000-0000-000000000000',
    '-infinity', '-infinity', '-infinity', '4713-01-01 00:00:00 BC',
    '00:00', '00:00-12', '-178000000 years', '::1', '::/0', '00:00:00:00:00:00',
    '00:00:00:00:00:00:00:00', B'0000', B'', E'\\001',
    'sad', ROW(NULL, NULL), 'empty', '{}', '(0,0)',
    '((0,0),(0,0))', '', '', 'a', '0/0',
    1, -99999999.99, 0, '{}',
    '[0:2]={1,2,3}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}',
    '{}', '{}', '{}', '{}'
);
INSERT INTO t VALUES (
    3, true, 32767, 2147483647, 9223372036854775807, 0, '0', '-',
    'Infinity', 'Infinity', 'Infinity', 99999999999999999999.99999999999999999999,
    0, -1.5, '92233720368547758.07',
    E'tab\there\nnewline \\ backslash "quote" ''apos''', 'x', 'abcde', 'n', 'É', '"s"', '"s"',
    '<?xml version="1.0"?><r/>',
    '\xdeadbeef', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '5874897-12-31',
    '294276-12-31 23:59:59.999999', '1900-01-01 00:00:00+00', 'infinity',
    '24:00:00', '23:59:59.999999+14', '-1 days +02:03:04.5', '::ffff:1.2.3.4', '2001:db8::/32',
    'ff:ff:ff:ff:ff:ff', 'ff:ff:ff:ff:ff:ff:ff:ff', B'1111', B'1111111111111111111', '"',
    'ok', ROW(-1, ''), '(,)', '{(,)}', '(-1e+300,1e-300)',
    '((1,2),(3,4))', '"a b"=>"c\"d"', '''a'':1A ''b c'':2B', '!a | (b <-> c)', 'FFFFFFFF/FFFFFFFF',
    2147483647, 0.01, -0.01, '{{1,2},{3,4}}',
    '{-2147483648,2147483647}', '{{NULL,NULL}}', '{" spaced ","\\","null"," "}',
    '{99999999.99}', '{-0.000001}', '{"$92,233,720,368,547,758.07"}', '{"178000000 years"}',
    '{NULL}', '{-infinity,"0001-01-01 BC"}', '{infinity}', '{NULL,NULL}', '{1.5e-323}',
    '{"\\x"}', '{ok}', '{3}', '{}', '{"\"quoted\""}', '{NULL}'
);
INSERT INTO t (id) VALUES (4);
"#;

/// The streaming path's session settings (pgoutput's text output depends on them).
const TEXT_SETTINGS: &str = "SET DateStyle = ISO; SET IntervalStyle = postgres; \
    SET extra_float_digits = 3; SET bytea_output = hex; SET lc_monetary = 'C';";

/// Equality that also holds for NaN (PostgreSQL's NaN equals itself).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float32(x), Value::Float32(y)) => {
            x.to_bits() == y.to_bits() || x.is_nan() && y.is_nan()
        }
        (Value::Float64(x), Value::Float64(y)) => {
            x.to_bits() == y.to_bits() || x.is_nan() && y.is_nan()
        }
        (
            Value::Array {
                dims: da,
                elements: ea,
            },
            Value::Array {
                dims: db,
                elements: eb,
            },
        ) => da == db && ea.len() == eb.len() && ea.iter().zip(eb).all(|(x, y)| same(x, y)),
        _ => a == b,
    }
}

struct Table {
    columns: Vec<PgColumn>,
    mappings: Vec<Mapping>,
}

async fn load_table(client: &Client) -> Table {
    let money_scale: i32 = client
        .query_one("SELECT scale('1'::money::numeric)", &[])
        .await
        .expect("money scale")
        .get(0);
    let oid: u32 = client
        .query_one("SELECT 't'::regclass::oid", &[])
        .await
        .expect("oid")
        .get(0);
    let columns: Vec<PgColumn> = client
        .query(COLUMNS_QUERY, &[&oid])
        .await
        .expect("columns query")
        .iter()
        .map(|r| PgColumn::from_row(r).expect("column row"))
        .collect();
    let money_scale = u8::try_from(money_scale).expect("money scale");
    let mappings = columns
        .iter()
        .map(|c| value_kind(&c.type_info, money_scale))
        .collect();
    Table { columns, mappings }
}

/// All rows through binary COPY, the stream cut into random pieces.
async fn copy_rows(client: &Client, table: &Table, seed: u64) -> Vec<Vec<Value>> {
    let select: Vec<String> = table
        .columns
        .iter()
        .zip(&table.mappings)
        .map(|(c, m)| m.select_expr(&pg_ident(&c.name)))
        .collect();
    let sql = format!(
        "COPY (SELECT {} FROM t ORDER BY id) TO STDOUT (FORMAT binary)",
        select.join(", ")
    );
    let mut stream = Box::pin(client.copy_out(&sql).await.expect("copy out"));
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.expect("copy data"));
    }
    let kinds = table.mappings.iter().map(|m| m.kind.clone()).collect();
    let mut decoder = BinaryCopyDecoder::new(kinds);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut rows = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let n = rng.gen_range(1..=rest.len().min(97));
        decoder.push(&rest[..n]);
        rest = &rest[n..];
        while let Some(row) = decoder.next_row().expect("decode copy row") {
            rows.push(row);
        }
    }
    assert_eq!(
        decoder.finish().expect("complete stream"),
        rows.len() as u64
    );
    rows
}

/// All rows in the columns' text output (what pgoutput sends; the simple query protocol returns
/// it too), decoded with `decode_text`. Not `col::text`: that differs for `bool`, `inet` and more.
async fn text_rows(client: &Client, table: &Table, time_zone: &str) -> Vec<Vec<Value>> {
    let select: Vec<String> = table.columns.iter().map(|c| pg_ident(&c.name)).collect();
    let sql = format!(
        "{TEXT_SETTINGS} SET TimeZone = {}; SELECT {} FROM t ORDER BY id",
        pg_literal(time_zone),
        select.join(", ")
    );
    let mut rows = Vec::new();
    for message in client.simple_query(&sql).await.expect("select text") {
        if let SimpleQueryMessage::Row(row) = message {
            let values = table
                .columns
                .iter()
                .zip(&table.mappings)
                .enumerate()
                .map(|(i, (c, m))| match row.get(i) {
                    None => Value::Null,
                    Some(text) => {
                        decode_text(&m.kind, text).unwrap_or_else(|e| panic!("{}: {e}", c.name))
                    }
                })
                .collect();
            rows.push(values);
        }
    }
    rows
}

fn num(s: &str) -> Value {
    Value::Numeric(Numeric::Finite(s.to_owned()))
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn date(y: i64, m: u32, d: u32) -> i32 {
    (days_from_civil(y, m, d) - i64::from(PG_EPOCH_UNIX_DAYS)) as i32
}

fn micros(y: i64, mo: u32, d: u32, h: i64, mi: i64, s: i64, us: i64) -> i64 {
    let unix = (i128::from(days_from_civil(y, mo, d)) * 86_400
        + i128::from((h * 60 + mi) * 60 + s))
        * 1_000_000
        + i128::from(us);
    i64::try_from(unix - i128::from(PG_EPOCH_UNIX_MICROS)).expect("in range")
}

fn arr(dims: Vec<i32>, elements: Vec<Value>) -> Value {
    Value::Array { dims, elements }
}

/// Values some cells must have (row id, column, value).
fn expected() -> Vec<(usize, &'static str, Value)> {
    let big76 = "123456789012345678901234567890123456789012345678901234567890123456.0123456789";
    vec![
        (1, "c_oid", Value::UInt32(4)),
        (1, "c_regclass", text("pg_class")),
        (1, "c_num", text("0.000000000000000000000000000001")),
        (
            1,
            "c_num_ps",
            num("12345678901234567890.12345678901234567890"),
        ),
        (1, "c_num_76", num(big76)),
        (
            1,
            "c_num_huge",
            text("123456789012345678901234567890.12346"),
        ),
        (1, "c_money", num("-1234.56")),
        (1, "c_bpchar", text("ab   ")),
        (1, "c_citext", text("CiText")),
        (1, "c_json", text(r#"{"b": 1,  "a": [1, 2]}"#)),
        (1, "c_jsonb", text(r#"{"a": [1, 2], "b": 1}"#)),
        (1, "c_bytea", Value::Bytes(vec![0, 0xFF, 0x41])),
        (1, "c_date", Value::Date(date(2024, 2, 29))),
        (
            1,
            "c_ts",
            Value::Timestamp(micros(2024, 2, 29, 12, 34, 56, 123_456)),
        ),
        (
            1,
            "c_tstz",
            Value::TimestampTz(micros(2024, 2, 29, 7, 4, 56, 123_456)),
        ),
        (1, "c_interval", text("1 year 2 mons 3 days 04:05:06.7")),
        (1, "c_enum", text("happy")),
        (1, "c_comp", text(r#"(1,"a,b")"#)),
        (1, "c_price", num("12.50")),
        (1, "c_dear", num("99.99")),
        (
            1,
            "c_intarr",
            arr(vec![2], vec![Value::Int32(1), Value::Int32(2)]),
        ),
        (
            1,
            "a_int2d",
            arr(
                vec![2, 2],
                vec![
                    Value::Int32(1),
                    Value::Null,
                    Value::Int32(3),
                    Value::Int32(4),
                ],
            ),
        ),
        (
            1,
            "a_text",
            arr(
                vec![7],
                vec![
                    text("a \"b\""),
                    Value::Null,
                    text("NULL"),
                    text(""),
                    text("é"),
                    text("x,y"),
                    text("{}"),
                ],
            ),
        ),
        (
            1,
            "a_numeric",
            arr(
                vec![3],
                vec![
                    text("0.000000000000000000000000000001"),
                    text("NaN"),
                    text("Infinity"),
                ],
            ),
        ),
        (
            1,
            "a_money",
            arr(vec![2], vec![num("1234.56"), num("-0.01")]),
        ),
        (1, "a_box", text("{(1,1),(0,0);(3,3),(2,2)}")),
        (1, "a_price", arr(vec![1], vec![num("1.25")])),
        (2, "c_int8", Value::Int64(i64::MIN)),
        (2, "c_oid", Value::UInt32(u32::MAX)),
        (2, "c_num", text("NaN")),
        (2, "c_num_huge", text("NaN")),
        (2, "c_money", num("-92233720368547758.08")),
        (2, "c_date", Value::Date(i32::MIN)),
        (
            2,
            "c_ts3",
            Value::Timestamp(micros(-4712, 1, 1, 0, 0, 0, 0)),
        ),
        (2, "c_bytea", Value::Bytes(vec![])),
        (
            2,
            "a_int4",
            arr(
                vec![3],
                vec![Value::Int32(1), Value::Int32(2), Value::Int32(3)],
            ),
        ),
        (2, "a_text", arr(vec![], vec![])),
        (3, "c_num", text("Infinity")),
        (2, "c_num_ps", num("-0.00000000000000000001")),
        (
            3,
            "c_num_ps",
            num("99999999999999999999.99999999999999999999"),
        ),
        (3, "c_num_76", num("0.0000000000")),
        (3, "c_num_huge", text("-1.50000")),
        (3, "c_money", num("92233720368547758.07")),
        (
            3,
            "c_text",
            text("tab\there\nnewline \\ backslash \"quote\" 'apos'"),
        ),
        (3, "c_date", Value::Date(date(5_874_897, 12, 31))),
        (
            3,
            "c_ts",
            Value::Timestamp(micros(294_276, 12, 31, 23, 59, 59, 999_999)),
        ),
        (3, "c_ts3", Value::Timestamp(i64::MAX)),
        (3, "c_dear", num("-0.01")),
        (
            3,
            "a_text",
            arr(
                vec![4],
                vec![text(" spaced "), text("\\"), text("null"), text(" ")],
            ),
        ),
        (
            3,
            "a_date",
            arr(
                vec![2],
                vec![Value::Date(i32::MIN), Value::Date(date(0, 1, 1))],
            ),
        ),
        (3, "a_bytea", arr(vec![1], vec![Value::Bytes(vec![])])),
        (3, "a_jsonb", arr(vec![1], vec![text("\"quoted\"")])),
        (4, "c_bool", Value::Null),
        (4, "a_int4", Value::Null),
    ]
}

fn check_mappings(table: &Table) {
    let by_name: HashMap<&str, (&PgColumn, &Mapping)> = table
        .columns
        .iter()
        .zip(&table.mappings)
        .map(|(c, m)| (c.name.as_str(), (c, m)))
        .collect();
    let kind = |name: &str| by_name[name].1.kind.clone();
    let array = |element: ValueKind, dims: u8| ValueKind::Array {
        element: Box::new(element),
        dims,
    };
    let price = ValueKind::Decimal {
        precision: 10,
        scale: 2,
    };
    assert_eq!(by_name["id"].0.key_position, Some(1));
    assert!(by_name["id"].0.not_null);
    assert_eq!(by_name["c_bool"].0.key_position, None);
    assert_eq!(by_name["c_posint"].0.type_name, "posint");
    assert_eq!(kind("c_posint"), ValueKind::Int32);
    assert_eq!(kind("c_price"), price);
    assert_eq!(kind("c_dear"), price);
    assert_eq!(kind("c_intarr"), array(ValueKind::Int32, 1));
    assert_eq!(kind("a_posint"), array(ValueKind::Int32, 1));
    assert_eq!(kind("a_price"), array(price.clone(), 1));
    assert_eq!(kind("a_int2d"), array(ValueKind::Int32, 2));
    assert_eq!(kind("a_num"), array(price, 1));
    assert_eq!(kind("a_interval"), array(ValueKind::Text, 1));
    assert!(by_name["a_interval"].1.select_as_text());
    assert_eq!(kind("a_box"), ValueKind::Text);
    assert_eq!(
        kind("c_num_76"),
        ValueKind::Decimal {
            precision: 76,
            scale: 10
        }
    );
    assert_eq!(kind("c_num_huge"), ValueKind::Text);
    assert_eq!(
        kind("c_money"),
        ValueKind::Decimal {
            precision: 19,
            scale: 2
        }
    );
    assert_eq!(kind("c_citext"), ValueKind::Text);
    assert!(!by_name["c_citext"].1.select_as_text());
    assert!(by_name["c_hstore"].1.select_as_text());
    assert!(by_name["c_enum"].1.select_as_text());
}

#[tokio::test]
async fn binary_and_text_decoding_agree() {
    let db = TestDb::new().await;
    let client = connect(&db.name).await;
    client.batch_execute(SCHEMA).await.expect("schema");
    client.batch_execute(ROWS).await.expect("rows");
    let table = load_table(&client).await;
    check_mappings(&table);

    let binary = copy_rows(&client, &table, 1).await;
    assert_eq!(binary.len(), 4);
    for seed in 2..6 {
        let again = copy_rows(&client, &table, seed).await;
        assert!(again
            .iter()
            .flatten()
            .zip(binary.iter().flatten())
            .all(|(a, b)| same(a, b)));
    }
    for time_zone in ["UTC", "Asia/Kolkata", "America/Los_Angeles"] {
        let text = text_rows(&client, &table, time_zone).await;
        assert_eq!(text.len(), binary.len());
        for (row, (b, t)) in binary.iter().zip(&text).enumerate() {
            for ((c, bv), tv) in table.columns.iter().zip(b).zip(t) {
                assert!(
                    same(bv, tv),
                    "{} row {} ({time_zone}): binary {bv:?} text {tv:?}",
                    c.name,
                    row + 1
                );
            }
        }
    }

    let index: HashMap<&str, usize> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    for (id, column, value) in expected() {
        let got = &binary[id - 1][index[column]];
        assert!(
            same(got, &value),
            "{column} row {id}: got {got:?}, expected {value:?}"
        );
    }
    // Row 4 is NULL everywhere but its key.
    assert!(binary[3][1..].iter().all(|v| *v == Value::Null));
}
