//! CDC mirrors' initial load against the real PostgreSQL and ClickHouse: every type value for
//! value, validation errors that create nothing, and a table that fails alone.

use std::time::Duration;

use ferry_e2e::{clickhouse_row_bytes, expected_rows, setup, sqlstate, wait_for_state};

const LOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// The table with a column of every type the README's mapping lists, and rows covering NULLs
/// and edge values.
const ALL_TYPES: &str = r#"
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

#[tokio::test]
async fn every_type_loads_value_for_value() {
    let s = setup().await;
    s.src.batch_execute(ALL_TYPES).await.unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR types FROM src TO dst WITH TABLE MAPPING (public.all_types:all_types)
             WITH (do_initial_copy = true, initial_copy_only = true)",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "types", "completed", LOAD_TIMEOUT).await;

    let expected = expected_rows(&s.source, "all_types", "id").await;
    let columns: Vec<&str> = expected.columns.iter().map(|c| c.name.as_str()).collect();
    let actual = clickhouse_row_bytes(&s.dest, "all_types", &columns, "id").await;
    let expected = expected.rows_bytes;
    assert_eq!(actual.len(), expected.len(), "row bytes differ in length");
    assert!(
        actual == expected,
        "ClickHouse's rows differ from the source's"
    );

    // Spot checks in ClickHouse's own words, independent of Ferry's encoder.
    let ch = s.dest.client();
    let big: String = ch
        .query("SELECT assumeNotNull(c_numeric) FROM all_types FINAL WHERE id = 1")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        big,
        "123456789012345678901234567890.123456789012345678901234567890"
    );
    let ts: String = ch
        .query("SELECT toString(assumeNotNull(c_ts)) FROM all_types FINAL WHERE id = 1")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(ts, "2024-01-02 03:04:05.678901");
    let nulls: u64 = ch
        .query("SELECT count() FROM all_types FINAL WHERE id = 2 AND c_int4 IS NULL AND c_text IS NULL AND c_uuid IS NULL")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(nulls, 1);

    // The slot and publication of an initial_copy_only mirror are gone once it completes.
    let slots: i64 = s
        .src
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0);
    s.ferry.stop().await;
}

#[tokio::test]
async fn bad_mirrors_are_refused_and_create_nothing() {
    let s = setup().await;
    s.src
        .batch_execute(
            "CREATE TABLE keyed (id int PRIMARY KEY, v text);
             CREATE TABLE unkeyed (v text);
             CREATE TABLE full_identity (v text); ALTER TABLE full_identity REPLICA IDENTITY FULL;",
        )
        .await
        .unwrap();
    let cases = [
        ("CREATE MIRROR m FROM src TO dst WITH TABLE MAPPING (keyed:k)", "42601", "do_initial_copy"),
        ("CREATE MIRROR m FROM src TO dst WITH TABLE MAPPING (keyed:k) WITH (do_initial_copy = true, colour = 1)", "42601", "\"colour\""),
        ("CREATE MIRROR m FROM src TO dst WITH TABLE MAPPING (nope:k) WITH (do_initial_copy = true)", "42P01", "public.nope"),
        ("CREATE MIRROR m FROM src TO dst WITH TABLE MAPPING (unkeyed:u) WITH (do_initial_copy = true)", "55000", "public.unkeyed"),
        ("CREATE MIRROR m FROM src TO dst WITH TABLE MAPPING (keyed:k, public.keyed:k2) WITH (do_initial_copy = true)", "42710", "public.keyed"),
        ("CREATE MIRROR m FROM src TO dst WITH TABLE MAPPING (keyed:k, full_identity:k) WITH (do_initial_copy = true)", "42710", ".k"),
        ("CREATE MIRROR m FROM nosuch TO dst WITH TABLE MAPPING (keyed:k) WITH (do_initial_copy = true)", "42704", "nosuch"),
        ("CREATE MIRROR m FROM dst TO src WITH TABLE MAPPING (keyed:k) WITH (do_initial_copy = true)", "42809", "POSTGRES"),
        ("CREATE MIRROR m FROM src TO dst WITH TABLE MAPPING ({from: keyed, to: k, exclude: [id]}) WITH (do_initial_copy = true)", "22023", "key"),
        ("CREATE MIRROR m FROM src TO dst WITH SCHEMA MAPPING (nope:x) WITH (do_initial_copy = true)", "3F000", "nope"),
    ];
    for (sql, code, text) in cases {
        let e = s.client.batch_execute(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&e), code, "{sql}: {e:?}");
        let message = e
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_default();
        assert!(message.contains(text), "{sql}: {message:?} lacks {text:?}");
    }
    // Nothing was created anywhere.
    let mirrors: i64 = s
        .ferry
        .catalog()
        .await
        .query_one("SELECT count(*) FROM ferry.mirrors", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(mirrors, 0);
    let pubs: i64 = s
        .src
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .unwrap()
        .get(0);
    let slots: i64 = s
        .src
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!((pubs, slots), (0, 0));
    let tables: u64 = s
        .dest
        .client()
        .query("SELECT count() FROM system.tables WHERE database = currentDatabase()")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(tables, 0);

    // A destination table that exists already is refused too.
    s.dest
        .client()
        .query("CREATE TABLE k (x Int32) ENGINE = MergeTree ORDER BY x")
        .execute()
        .await
        .unwrap();
    let e = s
        .client
        .batch_execute("CREATE MIRROR m FROM src TO dst WITH TABLE MAPPING (keyed:k) WITH (do_initial_copy = true)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42P07", "{e:?}");
    s.ferry.stop().await;
}

#[tokio::test]
async fn a_failing_table_does_not_stop_the_others_and_drop_cleans_up() {
    let s = setup().await;
    s.src
        .batch_execute(
            "CREATE TABLE good (id int PRIMARY KEY, v text);
             INSERT INTO good SELECT g, 'v' || g FROM generate_series(1, 5000) g;
             CREATE TABLE bad (id int PRIMARY KEY, amount numeric(10, 2));
             INSERT INTO bad VALUES (1, 1.5), (2, 'NaN');",
        )
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR two FROM src TO dst WITH TABLE MAPPING (good:good, bad:bad)
             WITH (do_initial_copy = true, snapshot_num_rows_per_partition = 1000, snapshot_num_tables_in_parallel = 2)",
        )
        .await
        .unwrap();
    // The mirror fails (a table failed), and says which.
    let deadline = std::time::Instant::now() + LOAD_TIMEOUT;
    let error: String = loop {
        let r = s
            .client
            .query_one(
                "SELECT state, coalesce(last_error, '') FROM mirror_status WHERE mirror = 'two'",
                &[],
            )
            .await
            .unwrap();
        if r.get::<_, String>(0) == "failed" {
            break r.get(1);
        }
        assert!(std::time::Instant::now() < deadline, "mirror did not fail");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(error.contains("public.bad"), "{error}");
    let tables = s
        .client
        .query("SELECT source_table, state, coalesce(error, '') FROM mirror_tables WHERE mirror = 'two' ORDER BY 1", &[])
        .await
        .unwrap();
    let states: Vec<(String, String)> = tables.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        states,
        [
            ("public.bad".into(), "failed".into()),
            ("public.good".into(), "done".into())
        ]
    );
    let bad_error: String = tables[0].get(2);
    assert!(
        bad_error.contains("amount") && bad_error.contains("NaN"),
        "{bad_error}"
    );
    let n: u64 = s
        .dest
        .client()
        .query("SELECT count() FROM good FINAL")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(n, 5000);

    // DROP MIRROR removes the slot and publication, keeps the destination tables.
    s.client.batch_execute("DROP MIRROR two").await.unwrap();
    let slots: i64 = s
        .src
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let pubs: i64 = s
        .src
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((slots, pubs), (0, 0));
    let n: u64 = s
        .dest
        .client()
        .query("SELECT count() FROM good FINAL")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(n, 5000);
    let e = s.client.batch_execute("DROP MIRROR two").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42704");
    s.ferry.stop().await;
}

#[tokio::test]
async fn resync_reloads_into_fresh_tables_and_swaps_them_in() {
    let s = setup().await;
    s.src
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, name text, qty int);
             INSERT INTO items SELECT g, 'item ' || g, g FROM generate_series(1, 2000) g;",
        )
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR inv FROM src TO dst WITH TABLE MAPPING (items:items)
             WITH (do_initial_copy = true, initial_copy_only = true, snapshot_num_rows_per_partition = 1000)",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "inv", "completed", LOAD_TIMEOUT).await;

    // The source changes behind the completed mirror; a resync brings ClickHouse up to date.
    s.src
        .batch_execute(
            "DELETE FROM items WHERE id <= 500;
             UPDATE items SET qty = -qty WHERE id % 2 = 0;
             INSERT INTO items SELECT g, 'new ' || g, 0 FROM generate_series(3000, 3099) g;",
        )
        .await
        .unwrap();
    s.client.batch_execute("RESYNC MIRROR inv").await.unwrap();
    wait_for_state(&s.client, "inv", "completed", LOAD_TIMEOUT).await;

    let ch = s.dest.client();
    let (count, sum_qty, min_id): (u64, i64, i32) = ch
        .query("SELECT count(), sum(assumeNotNull(qty)), min(id) FROM items FINAL WHERE _ferry_is_deleted = 0")
        .fetch_one()
        .await
        .unwrap();
    let r = s
        .src
        .query_one("SELECT count(*), sum(qty)::int8, min(id) FROM items", &[])
        .await
        .unwrap();
    assert_eq!(
        (count as i64, sum_qty, min_id),
        (r.get(0), r.get(1), r.get(2))
    );
    let leftovers: u64 = ch
        .query("SELECT count() FROM system.tables WHERE database = currentDatabase() AND name LIKE '%ferry_resync%'")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(leftovers, 0);
    let slots: i64 = s
        .src
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        slots, 0,
        "the resync's slot is dropped when an initial_copy_only mirror completes"
    );
    s.ferry.stop().await;
}
