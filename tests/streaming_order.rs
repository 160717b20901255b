//! Order and size in the streaming path: concurrent transactions that update the same rows
//! end in every destination as they end at the source (the newest change of a row wins), and
//! one transaction of a million rows arrives whole.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use ferry_e2e::{
    assert_not_failed, converge, on_every_destination, setup, source_digests, vals, wait_for_state,
    Kind, View,
};
use ferry_testkit::rand::rngs::StdRng;
use ferry_testkit::rand::{Rng, SeedableRng};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

const TIMEOUT: Duration = Duration::from_secs(120);

on_every_destination!(concurrent_transactions_end_in_the_source_state(
    flavor = "multi_thread",
    worker_threads = 2
));
on_every_destination!(one_million_row_transaction(
    flavor = "multi_thread",
    worker_threads = 2
));

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

async fn concurrent_transactions_end_in_the_source_state(kind: Kind) {
    const ROWS: i32 = 50;
    let s = setup(kind).await;
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

    let started = Instant::now();
    let cols = vals(&["id", "n", "last_writer", "updates"]);
    let view = View::new("counters", &cols, "id");
    converge(&s.client, &s.src, &s.dest, &view, "concurrent updates").await;
    println!("converged {:?} after the workload", started.elapsed());
    s.ferry.stop().await;
}

async fn one_million_row_transaction(kind: Kind) {
    const ROWS: i64 = 1_000_000;
    const BUCKET: i64 = 100_000;
    let s = setup(kind).await;
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
    // Every row, value for value, bucket by bucket.
    let cols = vals(&["id", "v", "s"]);
    let want = source_digests(&s.src, "big", &cols, "id", BUCKET).await;
    assert_eq!(want.iter().map(|b| b.1).sum::<i64>(), ROWS);
    let mut first_rows = None;
    loop {
        assert_not_failed(&s.client, "one million rows").await;
        let got = s.dest.digests("big", &cols, "id", BUCKET).await;
        if got == want {
            break;
        }
        if !got.is_empty() && first_rows.is_none() {
            first_rows = Some(started.elapsed());
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "the transaction did not arrive in {TIMEOUT:?}: {} of {} buckets equal",
            got.iter().filter(|b| want.contains(b)).count(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let arrived = started.elapsed();

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
        "one transaction of {ROWS} rows: committed at the source in {committed:?}, first rows at the destination after {:?}, all of it after {arrived:?} ({:.0} rows/s from commit), {batches} batches recorded",
        first_rows.unwrap_or(arrived),
        ROWS as f64 / (arrived - committed).as_secs_f64()
    );
    s.ferry.stop().await;
}
