//! Every PostgreSQL type through the streaming path, value for value: rows inserted, updated
//! (with large values left unchanged, so they come back from the source by key) and deleted
//! after the mirror started streaming reach ClickHouse exactly as the source holds them.
//!
//! The comparison is the one of `mirror.rs`: ClickHouse's current state as RowBinary against
//! the source's values read as text, decoded by the streaming path's decoder and encoded by
//! Ferry's encoder.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use ferry_e2e::{
    ch_peer_sql, clickhouse_row_bytes, expected_rows, pg_peer_sql, wait_for_state, TestFerry,
};
use ferry_testkit::{ChServer, PgServer, TempChDatabase, TempPgDatabase};
use tokio_postgres::Client;

const TIMEOUT: Duration = Duration::from_secs(120);

/// `mirror.rs`'s table of every type, empty. Two columns are stored out of line uncompressed,
/// so the large values of rows 3 and 4 are TOASTed and an UPDATE that leaves them alone does
/// not carry them.
const SCHEMA: &str = r#"
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
ALTER TABLE all_types ALTER COLUMN c_not_null SET STORAGE EXTERNAL,
                      ALTER COLUMN c_bytea SET STORAGE EXTERNAL;
"#;

/// The rows of `mirror.rs`, covering NULLs and edge values.
const ROWS: &str = r#"
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

/// Waits until ClickHouse's current state of `all_types` is the source's, value for value.
async fn converge(ferry: &Client, source: &TempPgDatabase, dest: &TempChDatabase, step: &str) {
    let expected = expected_rows(source, "all_types", "id").await;
    let names: Vec<&str> = expected.columns.iter().map(|c| c.name.as_str()).collect();
    let started = Instant::now();
    loop {
        let actual = clickhouse_row_bytes(dest, "all_types", &names, "id").await;
        if actual == expected.rows_bytes {
            println!(
                "{step}: {} rows equal after {:?}",
                expected.rows,
                started.elapsed()
            );
            return;
        }
        let r = ferry
            .query_one(
                "SELECT state, coalesce(last_error, '') FROM mirror_status",
                &[],
            )
            .await
            .unwrap();
        assert_ne!(
            r.get::<_, String>(0),
            "failed",
            "{step}: the mirror failed: {}",
            r.get::<_, String>(1)
        );
        if started.elapsed() > TIMEOUT {
            // Name the columns that differ.
            let mut differing = Vec::new();
            for (i, c) in expected.columns.iter().enumerate() {
                let got = clickhouse_row_bytes(dest, "all_types", &[c.name.as_str()], "id").await;
                if got != expected.per_column[i] {
                    differing.push(format!(
                        "{} (expected {:02x?}, got {:02x?})",
                        c.name,
                        &expected.per_column[i][..expected.per_column[i].len().min(64)],
                        &got[..got.len().min(64)]
                    ));
                }
            }
            let ids: Vec<i64> = dest
                .client()
                .query("SELECT id FROM all_types FINAL WHERE _ferry_is_deleted = 0 ORDER BY id")
                .fetch_all()
                .await
                .unwrap();
            panic!(
                "{step}: ClickHouse's rows differ from the source's after {TIMEOUT:?}: \
                 source has {} rows, ClickHouse ids {ids:?}; differing columns: {differing:#?}",
                expected.rows
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn every_type_streams_value_for_value() {
    let ferry = TestFerry::start().await;
    let pg = PgServer::from_env();
    let source = pg.temp_database("ferry_src").await;
    let dest = ChServer::from_env().temp_database("ferry_dst").await;
    let client = ferry.connect().await;
    client
        .batch_execute(&pg_peer_sql("src", &source.name, &pg.password))
        .await
        .unwrap();
    client
        .batch_execute(&ch_peer_sql("dst", &dest.name))
        .await
        .unwrap();
    let src = source.connect().await;
    src.batch_execute(SCHEMA).await.unwrap();
    client
        .batch_execute(
            "CREATE MIRROR types FROM src TO dst WITH TABLE MAPPING (public.all_types:all_types)
             WITH (do_initial_copy = true)",
        )
        .await
        .unwrap();
    wait_for_state(&client, "types", "running", TIMEOUT).await;

    src.batch_execute(ROWS).await.unwrap();
    converge(&client, &source, &dest, "insert").await;
    // Every row came through the stream, none through a load.
    let ch = dest.client();
    let (rows, min_version): (u64, u64) = ch
        .query("SELECT count(), min(_ferry_version) FROM all_types")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(rows, 4);
    assert!(min_version > 0, "streamed rows carry their change's LSN");

    // The two large values are stored out of line, so these updates do not carry them.
    let toast: String = src
        .query_one(
            "SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = 'all_types'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let toasted: i64 = src
        .query_one(
            &format!("SELECT count(DISTINCT chunk_id) FROM {toast}"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(toasted, 2, "rows 3 and 4 hold values stored out of line");
    src.batch_execute(
        "UPDATE all_types SET c_int4 = c_int4 / 2, c_text = c_text || '!',
                              c_int_arr = array_append(c_int_arr, 9)",
    )
    .await
    .unwrap();
    converge(&client, &source, &dest, "update").await;
    let changed: u64 = ch
        .query("SELECT count() FROM all_types FINAL WHERE _ferry_is_deleted = 0 AND endsWith(ifNull(c_text, ''), '!')")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(changed, 3, "rows 1, 3 and 4 have a text to append to");

    src.batch_execute("DELETE FROM all_types WHERE id IN (1, 3)")
        .await
        .unwrap();
    converge(&client, &source, &dest, "delete").await;
    let ids: Vec<i64> = ch
        .query("SELECT id FROM all_types FINAL WHERE _ferry_is_deleted = 0 ORDER BY id")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(ids, [2, 4]);
    // Without FINAL, the deletions are there as rows of their own.
    let deleted: Vec<i64> = ch
        .query("SELECT arraySort(groupUniqArray(id)) FROM all_types WHERE _ferry_is_deleted = 1")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(deleted, [1, 3], "deletions are written as marked rows");
    ferry.stop().await;
}
