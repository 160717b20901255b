//! One table's trouble never stops the others: a table that fails goes on alone, is loaded
//! again while it is written to and joins the stream exactly; tables dropped at the source, a
//! slot lost behind Ferry's back and Ferry's own column names are each handled on their own.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use ferry_e2e::{
    clickhouse_row_bytes, expected_rows, scalar, setup, sqlstate, table_states, wait_for_state,
    wait_table_state, Kind, Setup, Workload,
};
use tokio_postgres::Client;

const TIMEOUT: Duration = Duration::from_secs(120);

/// Whether the destination holds exactly the source's rows of `table`.
async fn converged(s: &Setup, table: &str, key: &str) -> bool {
    let want = expected_rows(&s.source, table, key).await;
    let names: Vec<&str> = want.columns.iter().map(|c| c.name.as_str()).collect();
    let got = clickhouse_row_bytes(s.dest.ch(), table, &names, key).await;
    got == want.rows_bytes
}

/// Waits until every table (name, key) holds the source's rows; panics with the tables'
/// states otherwise.
async fn wait_converged(s: &Setup, tables: &[(&str, &str)], step: &str) {
    let started = Instant::now();
    loop {
        let mut all = true;
        for (t, k) in tables {
            all &= converged(s, t, k).await;
        }
        if all {
            println!("{step}: converged in {:?}", started.elapsed());
            return;
        }
        if started.elapsed() > TIMEOUT {
            let mut counts = Vec::new();
            for (t, _) in tables {
                let src: i64 = s
                    .src
                    .query_one(&format!("SELECT count(*) FROM {t}"), &[])
                    .await
                    .unwrap()
                    .get(0);
                let dst: u64 = s
                    .dest
                    .ch()
                    .client()
                    .query(&format!(
                        "SELECT count() FROM {t} FINAL WHERE _ferry_is_deleted = 0"
                    ))
                    .fetch_one()
                    .await
                    .unwrap();
                counts.push((t.to_string(), src, dst));
            }
            panic!(
                "{step}: did not converge; (table, source rows, destination rows): {counts:?}; tables: {:?}",
                table_states(&s.client).await
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Writes to the source until stopped: inserts, updates and deletes on `a` and `b`, one
/// transaction per round. Counts the rounds done.
fn workload(client: Client) -> Workload {
    Workload::start(client, false, |i| {
        format!(
            "BEGIN;
             INSERT INTO a VALUES ({id}, {i}, 'w{i}');
             UPDATE a SET note = note || 'u' WHERE id = {u};
             DELETE FROM a WHERE id = {d};
             INSERT INTO b VALUES ({id}, {i});
             UPDATE b SET v = v + 1 WHERE id = {u};
             COMMIT;",
            id = 100_000 + i,
            u = (i * 7) % 3000 + 1,
            d = (i * 13) % 3000 + 1,
        )
    })
}

#[tokio::test]
async fn a_failed_table_is_loaded_again_while_written_and_joins_exactly() {
    let s = setup(Kind::ClickHouse).await;
    s.src
        .batch_execute(
            "CREATE TABLE a (id int PRIMARY KEY, amount numeric(10, 2), note text);
             INSERT INTO a SELECT g, g, 'n' || g FROM generate_series(1, 3000) g;
             CREATE TABLE b (id int PRIMARY KEY, v int);
             INSERT INTO b SELECT g, g FROM generate_series(1, 3000) g;",
        )
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR iso FROM src TO dst WITH TABLE MAPPING (a:a, b:b)
             WITH (do_initial_copy = true, unrepresentable_values = 'fail',
                   snapshot_num_rows_per_partition = 1000)",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "iso", "running", TIMEOUT).await;

    let writer = workload(s.source.connect().await);
    writer.wait_rounds(20).await;

    // A value ClickHouse cannot hold, under the strict policy: table a fails alone.
    s.src
        .batch_execute("UPDATE a SET amount = 'NaN' WHERE id = 5")
        .await
        .unwrap();
    let error = wait_table_state(&s.client, "public.a", "failed").await;
    assert!(error.contains("amount"), "{error}");
    let r = s
        .client
        .query_one(
            "SELECT state, tables_failed FROM mirror_status WHERE mirror = 'iso'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (r.get::<_, String>(0), r.get::<_, i64>(1)),
        ("running".into(), 1)
    );

    // The row is fixed at the source, and the table loaded again while it is written to.
    s.src
        .batch_execute("UPDATE a SET amount = 0 WHERE id = 5")
        .await
        .unwrap();
    writer.wait_rounds(10).await;
    s.client
        .batch_execute("RESYNC MIRROR iso TABLE public.a")
        .await
        .unwrap();
    wait_table_state(&s.client, "public.a", "done").await;
    // Changes after it joined arrive too.
    writer.wait_rounds(30).await;
    writer.stop().await;
    wait_converged(
        &s,
        &[("a", "id"), ("b", "id")],
        "after the table's own load",
    )
    .await;

    // Nothing is left behind: no failed table, no hold, only the mirror's own slot.
    let r = s
        .client
        .query_one(
            "SELECT tables_failed, tables_syncing FROM mirror_status WHERE mirror = 'iso'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((r.get::<_, i64>(0), r.get::<_, i64>(1)), (0, 0));
    let hold: Option<String> = s
        .ferry
        .catalog()
        .await
        .query_one("SELECT hold_lsn::text FROM ferry.mirrors", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(hold, None);
    let slots: i64 = scalar(
        &s.src,
        "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
    )
    .await;
    assert_eq!(slots, 1);
    s.ferry.stop().await;
}

#[tokio::test]
async fn a_table_that_fails_its_load_does_not_stop_the_others() {
    let s = setup(Kind::ClickHouse).await;
    s.src
        .batch_execute(
            "CREATE TABLE good (id int PRIMARY KEY, v text);
             INSERT INTO good SELECT g, 'v' || g FROM generate_series(1, 2000) g;
             CREATE TABLE bad (id int PRIMARY KEY, amount numeric(10, 2));
             INSERT INTO bad VALUES (1, 1.5), (2, 'NaN');",
        )
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR strict FROM src TO dst WITH TABLE MAPPING (good:good, bad:bad)
             WITH (do_initial_copy = true, unrepresentable_values = 'fail')",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "strict", "running", TIMEOUT).await;
    let error = wait_table_state(&s.client, "public.bad", "failed").await;
    assert!(error.contains("amount") && error.contains("NaN"), "{error}");
    let r = s
        .client
        .query_one(
            "SELECT tables_failed, coalesce(last_error, '') FROM mirror_status",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, i64>(0), 1);
    assert!(r.get::<_, String>(1).contains("public.bad"));
    // The good table streams; fixed at the source, RESUME loads the bad one again.
    s.src
        .batch_execute(
            "INSERT INTO good VALUES (2001, 'new'); UPDATE bad SET amount = 0 WHERE id = 2;",
        )
        .await
        .unwrap();
    wait_converged(&s, &[("good", "id")], "the good table").await;
    s.client.batch_execute("PAUSE MIRROR strict").await.unwrap();
    s.client
        .batch_execute("RESUME MIRROR strict")
        .await
        .unwrap();
    wait_table_state(&s.client, "public.bad", "done").await;
    wait_converged(&s, &[("good", "id"), ("bad", "id")], "after RESUME").await;
    s.ferry.stop().await;
}

#[tokio::test]
async fn tables_dropped_at_the_source_are_marked_and_followed_again() {
    let s = setup(Kind::ClickHouse).await;
    s.src
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;
             CREATE TABLE keep (id int PRIMARY KEY);
             INSERT INTO keep SELECT generate_series(1, 10);",
        )
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR drops FROM src TO dst WITH TABLE MAPPING (t:t, keep:keep)
             WITH (do_initial_copy = true)",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "drops", "running", TIMEOUT).await;
    wait_converged(&s, &[("t", "id"), ("keep", "id")], "load").await;

    // Dropped at the source: marked, with a hint; the destination keeps its rows.
    s.src.batch_execute("DROP TABLE t").await.unwrap();
    let error = wait_table_state(&s.client, "public.t", "dropped").await;
    assert!(
        error.contains("dropped") && error.contains("RESYNC MIRROR"),
        "{error}"
    );
    let n: u64 = s
        .dest
        .ch()
        .client()
        .query("SELECT count() FROM t FINAL WHERE _ferry_is_deleted = 0")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(n, 100);

    // Created again with other rows: reported, then followed after RESYNC … TABLE.
    s.src
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, 'new' || g FROM generate_series(1, 30) g;",
        )
        .await
        .unwrap();
    s.client
        .batch_execute("RESYNC MIRROR drops TABLE t")
        .await
        .unwrap();
    wait_table_state(&s.client, "public.t", "done").await;
    s.src
        .batch_execute("INSERT INTO t VALUES (31, 'later'); INSERT INTO keep VALUES (11);")
        .await
        .unwrap();
    wait_converged(&s, &[("t", "id"), ("keep", "id")], "the new table").await;
    s.ferry.stop().await;
}

#[tokio::test]
async fn a_table_created_again_in_a_mapped_schema_joins_by_itself() {
    let s = setup(Kind::ClickHouse).await;
    s.src
        .batch_execute(
            "CREATE SCHEMA app;
             CREATE TABLE app.t (id int PRIMARY KEY, v text);
             INSERT INTO app.t SELECT g, 'v' || g FROM generate_series(1, 50) g;",
        )
        .await
        .unwrap();
    s.client
        .batch_execute(&format!(
            "CREATE MIRROR schemas FROM src TO dst WITH SCHEMA MAPPING (app:{})
             WITH (do_initial_copy = true)",
            s.dest.ch().name
        ))
        .await
        .unwrap();
    wait_for_state(&s.client, "schemas", "running", TIMEOUT).await;
    s.src
        .batch_execute(
            "DROP TABLE app.t;
             CREATE TABLE app.t (id int PRIMARY KEY, v text);
             INSERT INTO app.t SELECT g, 'again' || g FROM generate_series(1, 20) g;",
        )
        .await
        .unwrap();
    // Rows inserted before the first change Ferry sees arrive too: the table is loaded.
    wait_table_state(&s.client, "app.t", "done").await;
    let started = Instant::now();
    loop {
        let rows: Vec<String> = s
            .dest
            .ch()
            .client()
            .query("SELECT ifNull(v, '') FROM t FINAL WHERE _ferry_is_deleted = 0 ORDER BY id")
            .fetch_all()
            .await
            .unwrap();
        if rows.len() == 20 && rows.iter().all(|v| v.starts_with("again")) {
            break;
        }
        assert!(started.elapsed() < TIMEOUT, "got {rows:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.ferry.stop().await;
}

#[tokio::test]
async fn a_slot_lost_behind_ferrys_back_says_what_to_do() {
    let s = setup(Kind::ClickHouse).await;
    s.src
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY);
             INSERT INTO t SELECT generate_series(1, 10);",
        )
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR lost FROM src TO dst WITH TABLE MAPPING (t:t) WITH (do_initial_copy = true)",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "lost", "running", TIMEOUT).await;

    // RESYNC of a paused mirror is refused with a hint; it stays paused.
    s.client.batch_execute("PAUSE MIRROR lost").await.unwrap();
    let e = s
        .client
        .batch_execute("RESYNC MIRROR lost")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{e:?}");
    assert!(
        e.as_db_error()
            .and_then(|d| d.hint())
            .is_some_and(|h| h.contains("RESUME")),
        "{e:?}"
    );
    s.client.batch_execute("RESUME MIRROR lost").await.unwrap();
    wait_for_state(&s.client, "lost", "running", TIMEOUT).await;

    // The slot dropped behind Ferry's back: the mirror fails with a hint.
    let started = Instant::now();
    loop {
        let dropped = s
            .src
            .batch_execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                     WHERE database = current_database() AND active_pid IS NOT NULL;
                 SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                     WHERE database = current_database();",
            )
            .await;
        if dropped.is_ok() {
            break;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "could not drop the slot: {dropped:?}"
        );
    }
    let started = Instant::now();
    let hint: String = loop {
        let r = s
            .client
            .query_one(
                "SELECT state, coalesce(error_hint, '') FROM mirror_status WHERE mirror = 'lost'",
                &[],
            )
            .await
            .unwrap();
        if r.get::<_, String>(0) == "failed" {
            break r.get(1);
        }
        assert!(started.elapsed() < TIMEOUT, "the mirror did not fail");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(hint.contains("RESYNC MIRROR"), "{hint}");

    // RESUME says the same instead of pretending; RESYNC brings the mirror back.
    let e = s
        .client
        .batch_execute("RESUME MIRROR lost")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{e:?}");
    s.src
        .batch_execute("INSERT INTO t VALUES (11)")
        .await
        .unwrap();
    s.client.batch_execute("RESYNC MIRROR lost").await.unwrap();
    wait_for_state(&s.client, "lost", "running", TIMEOUT).await;
    wait_converged(&s, &[("t", "id")], "after the resync").await;
    s.ferry.stop().await;
}

#[tokio::test]
async fn a_source_column_named_like_ferrys_own_is_refused() {
    let s = setup(Kind::ClickHouse).await;
    s.src
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, _ferry_version int)")
        .await
        .unwrap();
    let e = s
        .client
        .batch_execute(
            "CREATE MIRROR own FROM src TO dst WITH TABLE MAPPING (t:t) WITH (do_initial_copy = true)",
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42939", "{e:?}");
    let hint = e.as_db_error().and_then(|d| d.hint()).unwrap_or_default();
    assert!(hint.contains("exclude"), "{hint}");
    // Left out, the table is fine.
    s.client
        .batch_execute(
            "CREATE MIRROR own FROM src TO dst WITH TABLE MAPPING ({ from: t, to: t, exclude: [_ferry_version] })
             WITH (do_initial_copy = true)",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "own", "running", TIMEOUT).await;
    s.ferry.stop().await;
}

/// The multiset of (a, b) rows, as text, in order.
async fn multiset_source(src: &Client) -> Vec<String> {
    src.query("SELECT concat_ws('|', a, b) FROM bag ORDER BY a, b", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn multiset_destination(s: &Setup) -> Vec<String> {
    s.dest
        .ch()
        .client()
        .query(
            "SELECT assumeNotNull(concat(toString(a), '|', b)) FROM bag FINAL
             WHERE _ferry_is_deleted = 0 ORDER BY a, b",
        )
        .fetch_all()
        .await
        .unwrap()
}

async fn wait_multiset(s: &Setup, step: &str) {
    let started = Instant::now();
    loop {
        let want = multiset_source(&s.src).await;
        let got = multiset_destination(s).await;
        if want == got {
            println!("{step}: converged in {:?}", started.elapsed());
            return;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "{step}: source {want:?}, ClickHouse {got:?}; tables {:?}",
            table_states(&s.client).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_table_without_a_key_stays_a_multiset() {
    let s = setup(Kind::ClickHouse).await;
    s.src
        .batch_execute(
            "CREATE TABLE bag (a int, b text);
             ALTER TABLE bag REPLICA IDENTITY FULL;
             INSERT INTO bag VALUES (1, 'x'), (1, 'x'), (2, 'y'), (3, 'z'), (3, 'z'), (3, 'z');",
        )
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR bag FROM src TO dst WITH TABLE MAPPING (bag:bag) WITH (do_initial_copy = true)",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "bag", "running", TIMEOUT).await;
    wait_multiset(&s, "duplicates survive the load").await;

    // One of two identical rows deleted (by ctid): one is left.
    s.src
        .batch_execute("DELETE FROM bag WHERE ctid = (SELECT min(ctid) FROM bag WHERE a = 1)")
        .await
        .unwrap();
    wait_multiset(&s, "one duplicate deleted").await;
    // One of three identical rows updated: two stay as they were.
    s.src
        .batch_execute(
            "UPDATE bag SET b = 'w' WHERE ctid = (SELECT max(ctid) FROM bag WHERE a = 3)",
        )
        .await
        .unwrap();
    wait_multiset(&s, "one duplicate updated").await;
    // More duplicates, some deleted in the same transaction as they came.
    s.src
        .batch_execute(
            "BEGIN;
             INSERT INTO bag VALUES (2, 'y'), (2, 'y'), (4, 'v');
             DELETE FROM bag WHERE ctid = (SELECT max(ctid) FROM bag WHERE a = 2);
             UPDATE bag SET a = 5 WHERE a = 4;
             COMMIT;",
        )
        .await
        .unwrap();
    wait_multiset(&s, "duplicates inserted and deleted together").await;
    // Deleting every copy, then TRUNCATE and rows after it.
    s.src
        .batch_execute("DELETE FROM bag WHERE a = 3 AND b = 'z'")
        .await
        .unwrap();
    wait_multiset(&s, "every copy deleted").await;
    s.src
        .batch_execute("TRUNCATE bag; INSERT INTO bag VALUES (9, 'q'), (9, 'q');")
        .await
        .unwrap();
    wait_multiset(&s, "after TRUNCATE").await;

    // A restart replays from the confirmed position: still the same multiset.
    s.client.batch_execute("PAUSE MIRROR bag").await.unwrap();
    s.src
        .batch_execute("DELETE FROM bag WHERE ctid = (SELECT min(ctid) FROM bag); INSERT INTO bag VALUES (9, 'q');")
        .await
        .unwrap();
    s.client.batch_execute("RESUME MIRROR bag").await.unwrap();
    wait_multiset(&s, "after a pause").await;
    s.ferry.stop().await;
}
