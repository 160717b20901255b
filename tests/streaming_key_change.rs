//! Key changes and unchanged TOAST values in one batch: an UPDATE that moves a row onto a key
//! that another change of the batch just vacated (a deletion, or a key change away) does not
//! carry its large value, and that value must not be taken from the vacated key's deletion.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use ferry_e2e::{ch_peer_sql, pg_peer_sql, wait_for_state, TestFerry};
use ferry_testkit::{ChServer, PgServer, TempChDatabase};
use tokio_postgres::Client;

const TIMEOUT: Duration = Duration::from_secs(30);

async fn source_rows(src: &Client) -> Vec<String> {
    src.query(
        "SELECT concat_ws('|', id, n, coalesce(md5(doc), '~')) FROM r ORDER BY id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn clickhouse_rows(dest: &TempChDatabase) -> Vec<String> {
    dest.client()
        .query(
            "SELECT concat(toString(id), '|', toString(n), '|', ifNull(lower(hex(MD5(doc))), '~'))
             FROM r FINAL WHERE _ferry_is_deleted = 0 ORDER BY id",
        )
        .fetch_all::<String>()
        .await
        .unwrap_or_default()
}

/// Waits until ClickHouse holds the source's rows; panics with both sides otherwise.
async fn converge(ferry: &Client, src: &Client, dest: &TempChDatabase, step: &str) {
    let want = source_rows(src).await;
    let started = Instant::now();
    let mut got = Vec::new();
    while started.elapsed() < TIMEOUT {
        got = clickhouse_rows(dest).await;
        if got == want {
            println!("{step}: converged in {:?}", started.elapsed());
            return;
        }
        let r = ferry
            .query_one(
                "SELECT state, coalesce(last_error, '') FROM mirror_status",
                &[],
            )
            .await
            .unwrap();
        assert_ne!(r.get::<_, String>(0), "failed", "{}", r.get::<_, String>(1));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{step}: ClickHouse did not converge:\n source     {want:?}\n ClickHouse {got:?}");
}

#[tokio::test]
async fn a_row_moved_onto_a_vacated_key_keeps_its_unchanged_toast_value() {
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
    src.batch_execute(
        "CREATE TABLE r (id int PRIMARY KEY, n int NOT NULL, doc text);
         ALTER TABLE r ALTER COLUMN doc SET STORAGE EXTERNAL;
         INSERT INTO r SELECT g, 0, repeat(md5(g::text), 300) FROM generate_series(1, 4) g;",
    )
    .await
    .unwrap();
    client
        .batch_execute(
            "CREATE MIRROR keys FROM src TO dst WITH TABLE MAPPING (r:r) WITH (do_initial_copy = true)",
        )
        .await
        .unwrap();
    wait_for_state(&client, "keys", "running", TIMEOUT).await;
    converge(&client, &src, &dest, "initial load").await;

    // A row moved away and back within one transaction (one batch): the second move lands
    // on the key the first one vacated.
    src.batch_execute(
        "BEGIN;
         UPDATE r SET id = 10, n = n + 1 WHERE id = 1;
         UPDATE r SET id = 1, n = n + 1 WHERE id = 10;
         COMMIT;",
    )
    .await
    .unwrap();
    converge(&client, &src, &dest, "moved away and back").await;

    // A row deleted, and another moved onto its key.
    src.batch_execute(
        "BEGIN;
         DELETE FROM r WHERE id = 2;
         UPDATE r SET id = 2, n = n + 1 WHERE id = 3;
         COMMIT;",
    )
    .await
    .unwrap();
    converge(&client, &src, &dest, "moved onto a deleted key").await;
    ferry.stop().await;
}
