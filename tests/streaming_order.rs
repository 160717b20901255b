//! Order and size in the streaming path: concurrent transactions that update the same rows
//! end in ClickHouse as they end at the source (the newest change of a row wins), and one
//! transaction of a million rows arrives whole.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use ferry_e2e::{setup, wait_for_state};
use ferry_testkit::rand::rngs::StdRng;
use ferry_testkit::rand::{Rng, SeedableRng};
use ferry_testkit::TempChDatabase;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

const TIMEOUT: Duration = Duration::from_secs(120);

/// Fails the test when the mirror has failed.
async fn assert_not_failed(client: &Client, step: &str) {
    let r = client
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
}

/// One client's work: read-modify-write increments of random rows, a few per transaction,
/// retried when the server aborts them. Returns the increments committed.
async fn increment_for(client: Client, seed: u64, rows: i32, run_for: Duration) -> (i64, u32) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut committed = 0i64;
    let mut retries = 0u32;
    let until = Instant::now() + run_for;
    let writer = format!("w{seed}");
    while Instant::now() < until {
        let ids: Vec<i32> = (0..rng.gen_range(1..=3))
            .map(|_| rng.gen_range(1..=rows))
            .collect();
        loop {
            let attempt = async {
                client
                    .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                    .await?;
                for id in &ids {
                    let n: i64 = client
                        .query_one("SELECT n FROM counters WHERE id = $1", &[id])
                        .await?
                        .get(0);
                    client
                        .execute(
                            "UPDATE counters SET n = $2, last_writer = $3, updates = updates + 1 WHERE id = $1",
                            &[id, &(n + 1), &writer],
                        )
                        .await?;
                }
                client.batch_execute("COMMIT").await
            };
            match attempt.await {
                Ok(()) => {
                    committed += ids.len() as i64;
                    break;
                }
                Err(e)
                    if e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
                        || e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) =>
                {
                    client.batch_execute("ROLLBACK").await.unwrap();
                    retries += 1;
                }
                Err(e) => panic!("workload {writer}: {e}"),
            }
        }
    }
    (committed, retries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_end_in_the_source_state() {
    const ROWS: i32 = 50;
    let s = setup().await;
    s.src
        .batch_execute(&format!(
            "CREATE TABLE counters (id int PRIMARY KEY, n int8 NOT NULL, last_writer text, updates int NOT NULL);
             INSERT INTO counters SELECT g, 0, NULL, 0 FROM generate_series(1, {ROWS}) g;"
        ))
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR order_test FROM src TO dst WITH TABLE MAPPING (counters:counters)
             WITH (do_initial_copy = true)",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "order_test", "running", TIMEOUT).await;

    let mut tasks = Vec::new();
    for seed in 1..=4u64 {
        let client = s.source.connect().await;
        tasks.push(tokio::spawn(increment_for(
            client,
            seed,
            ROWS,
            Duration::from_secs(6),
        )));
    }
    let (mut committed, mut retries) = (0i64, 0u32);
    for t in tasks {
        let (c, r) = t.await.unwrap();
        committed += c;
        retries += r;
    }
    // The workload itself: no increment was lost at the source.
    let (sum, updates): (i64, i64) = {
        let r = s
            .src
            .query_one("SELECT sum(n)::int8, sum(updates)::int8 FROM counters", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(sum, committed);
    assert_eq!(updates, committed);
    println!("{committed} increments committed by 4 clients, {retries} retries");
    assert!(
        committed > 200,
        "the workload did too little to test anything ({committed})"
    );
    assert!(
        retries > 0,
        "the clients never conflicted: the test does not exercise concurrency"
    );

    let want: Vec<String> = s
        .src
        .query(
            "SELECT concat_ws('|', id, n, coalesce(last_writer, '~'), updates) FROM counters ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let started = Instant::now();
    let mut got: Vec<String> = Vec::new();
    while started.elapsed() < TIMEOUT {
        got = s
            .dest
            .client()
            .query(
                "SELECT concat(toString(id), '|', toString(n), '|', ifNull(last_writer, '~'), '|', toString(updates))
                 FROM counters FINAL WHERE _ferry_is_deleted = 0 ORDER BY id",
            )
            .fetch_all::<String>()
            .await
            .unwrap();
        if got == want {
            break;
        }
        assert_not_failed(&s.client, "concurrent updates").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first_diff = want.iter().zip(&got).find(|(a, b)| a != b);
    assert!(
        got == want,
        "ClickHouse did not converge: {} rows vs {}; first difference (source, ClickHouse): {first_diff:?}",
        want.len(),
        got.len()
    );
    println!("converged {:?} after the workload", started.elapsed());
    s.ferry.stop().await;
}

/// `(count, sum of id, sum of v)` of the current rows of `big` in ClickHouse; zeros while the
/// table is empty.
async fn clickhouse_totals(dest: &TempChDatabase) -> (u64, i64, i64) {
    dest.client()
        .query("SELECT count(), sum(id), sum(v) FROM big FINAL WHERE _ferry_is_deleted = 0")
        .fetch_one::<(u64, i64, i64)>()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_million_row_transaction() {
    const ROWS: i64 = 1_000_000;
    const BUCKET: i64 = 100_000;
    let s = setup().await;
    s.src
        .batch_execute("CREATE TABLE big (id int8 PRIMARY KEY, v int4 NOT NULL, s text)")
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR million FROM src TO dst WITH TABLE MAPPING (big:big)
             WITH (do_initial_copy = true)",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "million", "running", TIMEOUT).await;

    let started = Instant::now();
    s.src
        .batch_execute(&format!(
            "INSERT INTO big SELECT g, g % 1000, CASE WHEN g % 7 = 0 THEN NULL ELSE md5(g::text) END
             FROM generate_series(1, {ROWS}) g"
        ))
        .await
        .unwrap();
    let committed = started.elapsed();
    let r = s
        .src
        .query_one("SELECT count(*), sum(id)::int8, sum(v)::int8 FROM big", &[])
        .await
        .unwrap();
    let want: (u64, i64, i64) = (r.get::<_, i64>(0) as u64, r.get(1), r.get(2));
    assert_eq!(want.0, ROWS as u64);

    let mut got = (0, 0, 0);
    let mut first_rows = None;
    while got != want {
        assert!(
            started.elapsed() < TIMEOUT,
            "the transaction did not arrive in {TIMEOUT:?}: ClickHouse has {got:?}, the source {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_not_failed(&s.client, "one million rows").await;
        got = clickhouse_totals(&s.dest).await;
        if got.0 > 0 && first_rows.is_none() {
            first_rows = Some(started.elapsed());
        }
    }
    let arrived = started.elapsed();

    // Every row, value for value, bucket by bucket.
    let pg_digest: Vec<(i64, String)> = s
        .src
        .query(
            &format!(
                "SELECT (id - 1) / {BUCKET}, md5(string_agg(id || ',' || v || ',' || coalesce(s, '~'), E'\\n' ORDER BY id))
                 FROM big GROUP BY 1 ORDER BY 1"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let ch_digest: Vec<(i64, String)> = s
        .dest
        .client()
        .query(&format!(
            "SELECT intDiv(id - 1, {BUCKET}) AS b,
                    lower(hex(MD5(arrayStringConcat(arrayMap(x -> x.2, arraySort(x -> x.1,
                      groupArray((id, concat(toString(id), ',', toString(v), ',', ifNull(s, '~')))))), '\\n'))))
             FROM big FINAL WHERE _ferry_is_deleted = 0 GROUP BY b ORDER BY b"
        ))
        .fetch_all::<(i64, String)>()
        .await
        .unwrap();
    assert_eq!(pg_digest.len(), (ROWS / BUCKET) as usize);
    assert_eq!(ch_digest, pg_digest, "buckets whose rows differ");

    // The transaction was written in several batches, and the position moved past it.
    let r = s
        .client
        .query_one(
            "SELECT (SELECT count(*) FROM cdc_batches WHERE mirror = 'million'), rows_inserted
             FROM mirror_status WHERE mirror = 'million'",
            &[],
        )
        .await
        .unwrap();
    let (batches, inserted): (i64, i64) = (r.get(0), r.get(1));
    assert!(batches >= 1, "{batches}");
    assert!(inserted >= ROWS, "{inserted}");
    println!(
        "one transaction of {ROWS} rows: committed at the source in {committed:?}, first rows in ClickHouse after {:?}, all of it after {arrived:?} ({:.0} rows/s from commit), {batches} batches recorded",
        first_rows.unwrap_or(arrived),
        ROWS as f64 / (arrived - committed).as_secs_f64()
    );
    s.ferry.stop().await;
}
