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
    ALL_TYPES_ROWS, ALL_TYPES_TABLE,
};
use ferry_testkit::{ChServer, PgServer, TempChDatabase, TempPgDatabase};
use tokio_postgres::Client;

const TIMEOUT: Duration = Duration::from_secs(120);

/// Large values stored out of line, so that updates leave them unchanged (TOAST).
const STORAGE: &str = r#"
ALTER TABLE all_types ALTER COLUMN c_not_null SET STORAGE EXTERNAL,
                      ALTER COLUMN c_bytea SET STORAGE EXTERNAL;
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
    src.batch_execute(ALL_TYPES_TABLE).await.unwrap();
    src.batch_execute(STORAGE).await.unwrap();
    client
        .batch_execute(
            "CREATE MIRROR types FROM src TO dst WITH TABLE MAPPING (public.all_types:all_types)
             WITH (do_initial_copy = true)",
        )
        .await
        .unwrap();
    wait_for_state(&client, "types", "running", TIMEOUT).await;

    src.batch_execute(ALL_TYPES_ROWS).await.unwrap();
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
