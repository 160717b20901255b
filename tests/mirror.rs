//! CDC mirrors' initial load against the real PostgreSQL and every destination: every type
//! value for value, validation errors that create nothing, a table that fails alone, and a
//! resync.

use std::time::Duration;

use ferry_e2e::{
    converge, converge_exactly, on_every_destination, scalar, setup, sqlstate, vals,
    wait_for_state, Dest, Kind, View, ALL_TYPES_EXTENSIONS, ALL_TYPES_ROWS, ALL_TYPES_TABLE,
};

const LOAD_TIMEOUT: Duration = Duration::from_secs(300);

on_every_destination!(every_type_loads_value_for_value);
on_every_destination!(bad_mirrors_are_refused_and_create_nothing);
on_every_destination!(a_failing_table_does_not_stop_the_others_and_drop_cleans_up);
on_every_destination!(resync_reloads_into_fresh_tables_and_swaps_them_in);

async fn every_type_loads_value_for_value(kind: Kind) {
    let s = setup(kind).await;
    s.dest.install_extensions(&ALL_TYPES_EXTENSIONS).await;
    s.src.batch_execute(ALL_TYPES_TABLE).await.unwrap();
    s.src.batch_execute(ALL_TYPES_ROWS).await.unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR types FROM src TO dst WITH TABLE MAPPING (public.all_types:all_types)
             WITH (do_initial_copy = true, initial_copy_only = true)",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "types", "completed", LOAD_TIMEOUT).await;
    converge_exactly(&s.client, &s.source, &s.dest, "all_types", "id", "load").await;

    match &s.dest {
        // Spot checks in ClickHouse's own words, independent of Ferry's encoder.
        Dest::ClickHouse(d) => {
            let ch = d.client();
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
        }
        // The destination's columns have the source's exact types, NOT NULL and key.
        Dest::Postgres(d) => {
            let shape = "SELECT string_agg(format('%s %s %s', attname, format_type(atttypid, atttypmod), attnotnull), ', ' ORDER BY attnum)
                         || ' key ' || (SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'all_types'::regclass AND contype = 'p')
                         FROM pg_attribute WHERE attrelid = 'all_types'::regclass AND attnum > 0 AND NOT attisdropped";
            let want: String = s.src.query_one(shape, &[]).await.unwrap().get(0);
            let got: String = d
                .connect()
                .await
                .query_one(shape, &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(got, want);
        }
    }

    // The slot and publication of an initial_copy_only mirror are gone once it completes.
    let slots: i64 = scalar(
        &s.src,
        "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
    )
    .await;
    assert_eq!(slots, 0);
    s.ferry.stop().await;
}

async fn bad_mirrors_are_refused_and_create_nothing(kind: Kind) {
    let s = setup(kind).await;
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
        ("CREATE MIRROR m FROM src TO dst WITH TABLE MAPPING ({from: keyed, to: k, exclude: [id]}) WITH (do_initial_copy = true)", "22023", "key"),
        ("CREATE MIRROR m FROM src TO dst WITH SCHEMA MAPPING (nope:x) WITH (do_initial_copy = true)", "3F000", "nope"),
    ];
    // A ClickHouse peer is no source.
    let wrong_way = (
        "CREATE MIRROR m FROM dst TO src WITH TABLE MAPPING (keyed:k) WITH (do_initial_copy = true)",
        "42809",
        "POSTGRES",
    );
    let cases = cases
        .into_iter()
        .chain((kind == Kind::ClickHouse).then_some(wrong_way));
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
    let pubs: i64 = scalar(&s.src, "SELECT count(*) FROM pg_publication").await;
    let slots: i64 = scalar(
        &s.src,
        "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
    )
    .await;
    assert_eq!((pubs, slots), (0, 0));
    assert!(s.dest.tables(s.dest.namespace()).await.is_empty());

    // A destination table in the way is refused: any table in ClickHouse, one that cannot
    // take the source's rows in PostgreSQL.
    match &s.dest {
        Dest::ClickHouse(d) => d
            .client()
            .query("CREATE TABLE k (x Int32) ENGINE = MergeTree ORDER BY x")
            .execute()
            .await
            .unwrap(),
        Dest::Postgres(d) => d
            .connect()
            .await
            .batch_execute("CREATE TABLE k (x int)")
            .await
            .unwrap(),
    }
    let e = s
        .client
        .batch_execute("CREATE MIRROR m FROM src TO dst WITH TABLE MAPPING (keyed:k) WITH (do_initial_copy = true)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42P07", "{e:?}");
    s.ferry.stop().await;
}

/// A value the destination cannot hold fails its table: ClickHouse's decimals hold no NaN;
/// a PostgreSQL destination's own table (used as it is, compatible) has a constraint the row
/// breaks.
async fn a_failing_table_does_not_stop_the_others_and_drop_cleans_up(kind: Kind) {
    let s = setup(kind).await;
    s.src
        .batch_execute(
            "CREATE TABLE good (id int PRIMARY KEY, v text);
             INSERT INTO good SELECT g, 'v' || g FROM generate_series(1, 5000) g;
             CREATE TABLE bad (id int PRIMARY KEY, amount numeric(10, 2));
             INSERT INTO bad VALUES (1, 1.5), (2, 'NaN');",
        )
        .await
        .unwrap();
    if let Dest::Postgres(d) = &s.dest {
        d.connect()
            .await
            .batch_execute("CREATE TABLE bad (id int PRIMARY KEY, amount numeric(10, 2) CHECK (amount < 'NaN'))")
            .await
            .unwrap();
    }
    s.client
        .batch_execute(
            "CREATE MIRROR two FROM src TO dst WITH TABLE MAPPING (good:good, bad:bad)
             WITH (do_initial_copy = true, snapshot_num_rows_per_partition = 1000,
                   snapshot_num_tables_in_parallel = 2, unrepresentable_values = 'fail')",
        )
        .await
        .unwrap();
    // The mirror goes on with the good table, and says which table failed.
    let deadline = std::time::Instant::now() + LOAD_TIMEOUT;
    let (error, failed): (String, i64) = loop {
        let r = s
            .client
            .query_one(
                "SELECT state, coalesce(last_error, ''), tables_failed FROM mirror_status WHERE mirror = 'two'",
                &[],
            )
            .await
            .unwrap();
        let state: String = r.get(0);
        assert_ne!(state, "failed", "{}", r.get::<_, String>(1));
        if state == "running" {
            break (r.get(1), r.get(2));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "mirror did not start streaming"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(failed, 1);
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
    let names_it = match kind {
        Kind::ClickHouse => bad_error.contains("amount") && bad_error.contains("NaN"),
        Kind::Postgres => bad_error.contains("bad_amount_check"),
    };
    assert!(names_it, "{bad_error}");
    assert_eq!(s.dest.count("good").await, 5000);

    // DROP MIRROR removes the slot and publication, keeps the destination tables.
    s.client.batch_execute("DROP MIRROR two").await.unwrap();
    let slots: i64 = scalar(
        &s.src,
        "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
    )
    .await;
    let pubs: i64 = scalar(&s.src, "SELECT count(*) FROM pg_publication").await;
    assert_eq!((slots, pubs), (0, 0));
    assert_eq!(s.dest.count("good").await, 5000);
    let e = s.client.batch_execute("DROP MIRROR two").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42704");
    s.ferry.stop().await;
}

async fn resync_reloads_into_fresh_tables_and_swaps_them_in(kind: Kind) {
    let s = setup(kind).await;
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

    // The source changes behind the completed mirror; a resync brings the destination up to
    // date.
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
    let view = View::new("items", &vals(&["id", "name", "qty"]), "id");
    converge(&s.client, &s.src, &s.dest, &view, "resync").await;
    let leftovers: Vec<String> = s
        .dest
        .tables(s.dest.namespace())
        .await
        .into_iter()
        .filter(|t| t.contains("ferry_resync"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let slots: i64 = scalar(
        &s.src,
        "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
    )
    .await;
    assert_eq!(
        slots, 0,
        "the resync's slot is dropped when an initial_copy_only mirror completes"
    );
    s.ferry.stop().await;
}

/// Values ClickHouse cannot hold are replaced as the README's type mapping says, the table goes
/// on loading, and the mirror runs.
#[tokio::test]
async fn unrepresentable_values_are_substituted() {
    let s = setup(Kind::ClickHouse).await;
    let Dest::ClickHouse(ch) = &s.dest else {
        unreachable!()
    };
    s.src
        .batch_execute(
            "CREATE TABLE good (id int PRIMARY KEY, v text);
             INSERT INTO good SELECT g, 'v' || g FROM generate_series(1, 5000) g;
             CREATE TABLE odd (id int PRIMARY KEY, amount numeric(10, 2) NOT NULL,
                               maybe numeric(10, 2), day date NOT NULL, days date[] NOT NULL);
             INSERT INTO odd VALUES
                 (1, 1.5, 1.5, '2024-01-01', '{2024-01-01}'),
                 (2, 'NaN', 'NaN', 'infinity', '{infinity,2000-01-01}'),
                 (3, 7, NULL, '0044-03-15 BC', '{{2000-01-01}}'),
                 (4, 'NaN', 2, '-infinity', '[0:1]={2000-01-02,NULL}');",
        )
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR two FROM src TO dst WITH TABLE MAPPING (good:good, odd:odd)
             WITH (do_initial_copy = true, snapshot_num_rows_per_partition = 1000, snapshot_num_tables_in_parallel = 2)",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "two", "running", LOAD_TIMEOUT).await;
    let tables = s
        .client
        .query("SELECT source_table, state, coalesce(error, '') FROM mirror_tables WHERE mirror = 'two' ORDER BY 1", &[])
        .await
        .unwrap();
    let states: Vec<(String, String, String)> = tables
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        states,
        [
            ("public.good".into(), "done".into(), String::new()),
            ("public.odd".into(), "done".into(), String::new())
        ]
    );
    let odd = ch
        .client()
        .query(
            "SELECT concat(toString(amount), ' ', ifNull(toString(maybe), 'NULL'), ' ',
                           toString(day), ' ', toString(days))
             FROM odd FINAL ORDER BY id",
        )
        .fetch_all::<String>()
        .await
        .unwrap();
    assert_eq!(
        odd,
        [
            "1.5 1.5 2024-01-01 ['2024-01-01']",
            // NaN: 0, or NULL where the column is nullable; an infinite date: the range's end;
            // an element that cannot be held: a NULL element.
            "0 NULL 2299-12-31 [NULL,'2000-01-01']",
            // A date before 1900: the range's start; an array of other dimensions than the
            // column's: empty.
            "7 NULL 1900-01-01 []",
            // A lower bound other than 1: the elements, from 1.
            "0 2 1900-01-01 ['2000-01-02',NULL]",
        ]
    );
    // Counted per column, with the key of a row as an example; streamed values too.
    s.src
        .batch_execute("INSERT INTO odd VALUES (5, 'NaN', 1, '2000-01-01', '{}')")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + LOAD_TIMEOUT;
    let counts: Vec<(String, i64, String)> = loop {
        let rows: Vec<(String, i64, String)> = s
            .client
            .query(
                "SELECT column_name, values_replaced, coalesce(example_key, '') FROM substitutions
                 WHERE mirror = 'two' AND source_table = 'public.odd' ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        if rows.iter().any(|(c, n, _)| c == "amount" && *n == 3) {
            break rows;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "substitutions: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let amount = counts.iter().find(|(c, ..)| c == "amount").unwrap();
    assert!(
        amount.2.contains("id") && amount.2.contains('2'),
        "{amount:?}"
    );
    assert!(
        counts.iter().any(|(c, n, _)| c == "day" && *n == 3),
        "{counts:?}"
    );
    assert!(counts.iter().all(|(c, ..)| c != "id"), "{counts:?}");
    // The same counts for Prometheus, per table and column.
    let metrics = s.ferry.metrics().await;
    let amount_series = format!(
        "ferry_table_values_substituted_total{{mirror=\"two\",table=\"public.odd\",column=\"amount\"}} {}",
        amount.1
    );
    assert!(
        metrics.lines().any(|l| l == amount_series),
        "{amount_series} not in {metrics}"
    );

    let n: u64 = ch
        .client()
        .query("SELECT count() FROM good FINAL")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(n, 5000);

    s.ferry.stop().await;
}
