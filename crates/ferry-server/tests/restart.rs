//! A daemon killed with SIGKILL in the middle of an initial load resumes it after a restart,
//! copies only the ranges not done, and ends with the source's data exactly.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{connect, free_port};
use ferry_testkit::{ChServer, PgServer};
use tokio_postgres::Client;

mod common;

const ROWS: i64 = 400_000;

fn start_daemon(port: u16, catalog_url: &str, log: &std::path::Path) -> Child {
    common::spawn(port, catalog_url, log, &[])
}

/// (partition_no, finished_at, attempts, snapshot) of the partitions done.
async fn done_partitions(catalog: &Client) -> Vec<(i32, String, i32, Option<String>)> {
    catalog
        .query(
            "SELECT partition_no, finished_at::text, attempts, snapshot FROM ferry.mirror_partition
             WHERE state = 'done' ORDER BY partition_no",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

#[tokio::test]
async fn kill_9_mid_load_resumes_only_unfinished_partitions() {
    let pg = PgServer::from_env();
    let catalog_db = pg.temp_database("ferry_restart_cat").await;
    let source = pg.temp_database("ferry_restart_src").await;
    let dest = ChServer::from_env()
        .temp_database("ferry_restart_dst")
        .await;
    let src = source.connect().await;
    src.batch_execute(&format!(
        "CREATE TABLE big (id int8 PRIMARY KEY, grp int4 NOT NULL, note text, amount numeric(12, 2));
         INSERT INTO big SELECT g, g % 97, CASE WHEN g % 10 = 0 THEN NULL ELSE md5(g::text) END, g / 7.0
           FROM generate_series(1, {ROWS}) g;"
    ))
    .await
    .unwrap();
    src.batch_execute("VACUUM ANALYZE big").await.unwrap();

    let port = free_port();
    let dir = std::env::temp_dir().join(format!("ferry-restart-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut daemon = start_daemon(port, &catalog_db.url(), &dir.join("first.log"));
    let client = connect(port).await;
    client
        .batch_execute(&format!(
            "CREATE PEER src FROM POSTGRES WITH (host = '{}', port = {}, user = '{}', password = '{}', database = '{}');
             CREATE PEER dst FROM CLICKHOUSE WITH (host = '127.0.0.1', port = {}, database = '{}', disable_tls = true);
             CREATE MIRROR big FROM src TO dst WITH TABLE MAPPING (public.big:big)
               WITH (do_initial_copy = true, initial_copy_only = true, snapshot_num_rows_per_partition = 5000,
                     snapshot_max_parallel_workers = 2);",
            pg.host,
            pg.port,
            pg.user,
            pg.password,
            source.name,
            ChServer::from_env().http_port,
            dest.name
        ))
        .await
        .unwrap();

    // Kill the daemon once some, but not all, partitions are done.
    let catalog = catalog_db.connect().await;
    let deadline = Instant::now() + Duration::from_secs(300);
    let (done, total) = loop {
        let r = catalog
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'done'), count(*) FROM ferry.mirror_partition",
                &[],
            )
            .await
            .unwrap();
        let (done, total): (i64, i64) = (r.get(0), r.get(1));
        if done >= 3 {
            break (done, total);
        }
        assert!(Instant::now() < deadline, "the load made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    drop(client);
    assert!(total > 20, "expected many partitions, got {total}");
    let before = done_partitions(&catalog).await;
    assert!(
        before.len() < total as usize,
        "the load finished before the kill ({done}/{total})"
    );
    let snapshot_name = before[0].3.clone();
    assert!(
        snapshot_name.is_some(),
        "partitions of the first run were read in the exported snapshot"
    );

    // Restart: the load resumes and completes.
    let mut daemon = start_daemon(port, &catalog_db.url(), &dir.join("second.log"));
    let client = connect(port).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let r = client
            .query_one(
                "SELECT state, coalesce(last_error, '') FROM mirror_status WHERE mirror = 'big'",
                &[],
            )
            .await
            .unwrap();
        let state: String = r.get(0);
        assert_ne!(state, "failed", "{}", r.get::<_, String>(1));
        if state == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the resumed load did not complete"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Partitions done before the kill were not copied again.
    let after = done_partitions(&catalog).await;
    assert_eq!(after.len(), total as usize);
    for p in &before {
        let again = after.iter().find(|a| a.0 == p.0).unwrap();
        assert_eq!(again, p, "partition {} was copied again", p.0);
    }
    // The others were read after the restart, in fresh snapshots.
    let recopied: Vec<_> = after
        .iter()
        .filter(|a| !before.iter().any(|b| b.0 == a.0))
        .collect();
    assert!(!recopied.is_empty());
    assert!(recopied.iter().all(|p| p.3.is_none()), "{recopied:?}");

    // ClickHouse's current state equals the source.
    let ch = dest.client();
    let (count, sum_id, sum_grp, nulls): (u64, i64, i64, u64) = ch
        .query("SELECT count(), sum(id), sum(grp), countIf(note IS NULL) FROM big FINAL WHERE _ferry_is_deleted = 0")
        .fetch_one()
        .await
        .unwrap();
    let r = src
        .query_one("SELECT count(*), sum(id)::int8, sum(grp)::int8, count(*) FILTER (WHERE note IS NULL) FROM big", &[])
        .await
        .unwrap();
    assert_eq!(
        (count as i64, sum_id, sum_grp, nulls as i64),
        (r.get(0), r.get(1), r.get(2), r.get(3))
    );
    let ch_digest: String = ch
        .query(
            "SELECT lower(hex(MD5(arrayStringConcat(arrayMap(x -> x.2, arraySort(x -> x.1,
               groupArray((id, concat(toString(id), ',', toString(grp), ',', ifNull(note, '~'), ',', toString(amount)))))), '\n'))))
             FROM big FINAL WHERE _ferry_is_deleted = 0",
        )
        .fetch_one()
        .await
        .unwrap();
    let pg_digest: String = src
        .query_one(
            "SELECT md5(string_agg(id || ',' || grp || ',' || coalesce(note, '~') || ',' || trim_scale(amount), E'\n' ORDER BY id)) FROM big",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ch_digest, pg_digest);

    let pid = daemon.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    daemon.wait().unwrap();
}
