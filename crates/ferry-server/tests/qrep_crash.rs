//! A daemon killed with SIGKILL in the middle of a query mirror's run (append mode, a table
//! without a key) finishes that run after a restart: only the partitions not done are copied
//! again, no row is in ClickHouse twice, the watermark moves only once the run is whole, and
//! the metrics count the runs.

use std::time::{Duration, Instant};

use common::Daemon;
use ferry_testkit::{ChServer, PgServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::Client;

mod common;

const ROWS: i64 = 240_000;
const TIMEOUT: Duration = Duration::from_secs(300);

/// A metric's value from `/metrics` (the first line that starts with `series`).
async fn metric(port: u16, series: &str) -> Option<f64> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// (partition, finished_at, attempts) of the done partitions of the mirror's first run.
async fn done(catalog: &Client) -> Vec<(i32, String, i32)> {
    catalog
        .query(
            "SELECT p.partition_no, p.finished_at::text, p.attempts FROM ferry.qrep_partition p
             JOIN ferry.qrep_run r ON r.id = p.run_id
             WHERE r.run_no = 1 AND p.state = 'done' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn wait_watermark(client: &Client, watermark: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let r = client
            .query_one(
                "SELECT state, coalesce(last_watermark, ''), coalesce(last_error, '')
                 FROM mirror_status WHERE mirror = 'big'",
                &[],
            )
            .await
            .unwrap();
        let (state, w): (String, String) = (r.get(0), r.get(1));
        assert_ne!(state, "failed", "{}", r.get::<_, String>(2));
        if w == watermark {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "watermark {w:?}, not {watermark}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn kill_9_mid_run_copies_only_what_is_missing_and_nothing_twice() {
    let pg = PgServer::from_env();
    let catalog_db = pg.temp_database("ferry_qcrash_cat").await;
    let source = pg.temp_database("ferry_qcrash_src").await;
    let dest = ChServer::from_env().temp_database("ferry_qcrash_dst").await;
    let src = source.connect().await;
    src.batch_execute(&format!(
        "CREATE TABLE big (seq int8 NOT NULL, grp int4, note text);
         INSERT INTO big SELECT g, g % 97, md5(g::text) FROM generate_series(1, {ROWS}) g;
         INSERT INTO big SELECT g, -1, 'again' FROM generate_series(1, 100) g;"
    ))
    .await
    .unwrap();

    let dir = std::env::temp_dir().join(format!("ferry-qcrash-{}", dest.name));
    std::fs::create_dir_all(&dir).unwrap();
    let metrics_port = common::free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let args = ["--metrics-listen", metrics.as_str()];
    let mut daemon = Daemon::start(&catalog_db.url(), &dir.join("first.log"), &args);
    let client = daemon.connect().await;
    client
        .batch_execute(&format!(
            "CREATE PEER src FROM POSTGRES WITH (host = '{}', port = {}, user = '{}', password = '{}', database = '{}');
             CREATE PEER dst FROM CLICKHOUSE WITH (host = '127.0.0.1', port = {}, database = '{}', disable_tls = true);
             CREATE MIRROR big FROM src TO dst FOR
               $$SELECT seq, grp, note FROM big WHERE seq BETWEEN {{{{.start}}}} AND {{{{.end}}}}$$
               WITH (destination_table_name = 'big', watermark_column = 'seq', watermark_table_name = 'big',
                     num_rows_per_partition = 8000, parallelism = 2, refresh_interval = 1);",
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

    // Kill the daemon once some, but not all, partitions of the first run are done.
    let catalog = catalog_db.connect().await;
    let deadline = Instant::now() + TIMEOUT;
    let total = loop {
        let r = catalog
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'done'), count(*) FROM ferry.qrep_partition",
                &[],
            )
            .await
            .unwrap();
        let (done, total): (i64, i64) = (r.get(0), r.get(1));
        if done >= 3 {
            break total;
        }
        assert!(Instant::now() < deadline, "the run made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    drop(client);
    let before = done(&catalog).await;
    assert!(total >= 20, "expected many partitions, got {total}");
    assert!(
        before.len() < total as usize,
        "the run finished before the kill"
    );
    let watermark: Option<i64> = catalog
        .query_one("SELECT watermark FROM ferry.qrep_mirror", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        watermark, None,
        "the watermark moved before the run was whole"
    );

    // Restart: the run is finished, and the watermark moves to its end.
    let daemon = Daemon::start(&catalog_db.url(), &dir.join("second.log"), &args);
    let client = daemon.connect().await;
    wait_watermark(&client, &ROWS.to_string()).await;
    let after = done(&catalog).await;
    assert_eq!(after.len(), total as usize);
    for p in &before {
        let again = after.iter().find(|a| a.0 == p.0).unwrap();
        assert_eq!(again, p, "partition {} was copied again", p.0);
    }
    let ch = dest.client();
    let fingerprint = |table: &str| {
        format!("SELECT count(), uniqExact(seq, grp), sum(seq), sum(ifNull(grp, 0)) FROM {table}")
    };
    let (count, distinct, sum_seq, sum_grp): (u64, u64, i64, i64) =
        ch.query(&fingerprint("big")).fetch_one().await.unwrap();
    let r = src
        .query_one(
            "SELECT count(*), count(DISTINCT (seq, grp)), sum(seq)::int8, sum(grp)::int8 FROM big",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (count as i64, distinct as i64, sum_seq, sum_grp),
        (r.get(0), r.get(1), r.get(2), r.get(3))
    );

    // The next run takes the rows added since.
    src.batch_execute(&format!(
        "INSERT INTO big SELECT g, 7, 'more' FROM generate_series({}, {}) g",
        ROWS + 1,
        ROWS + 5000
    ))
    .await
    .unwrap();
    wait_watermark(&client, &(ROWS + 5000).to_string()).await;
    let (count, ..): (u64, u64, i64, i64) =
        ch.query(&fingerprint("big")).fetch_one().await.unwrap();
    assert_eq!(count as i64, ROWS + 100 + 5000);
    let runs = metric(
        metrics_port,
        "ferry_mirror_query_runs_total{mirror=\"big\"}",
    )
    .await
    .unwrap_or_default();
    assert!(runs >= 2.0, "runs_total {runs}");
    let rows = metric(
        metrics_port,
        "ferry_mirror_query_last_run_rows{mirror=\"big\"}",
    )
    .await;
    assert_eq!(rows, Some(5000.0));
    daemon.terminate();
}
