//! The servers and the daemon go away under a streaming mirror: the destination (a private
//! ClickHouse or PostgreSQL of the test's own, see `ferry_testkit::private`) or the source is
//! stopped for a few seconds and started again, and the daemon is killed as `kill -9` would
//! and restarted; the mirror rides it out and ends with the source's exact state, in every
//! destination.
#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_e2e::{
    assert_not_failed, converge, on_every_destination, pg_peer_sql, scalar, setup, wait_for_state,
    Col, Dest, Kind, Setup, TestFerry, View,
};
use ferry_testkit::private::{PrivateClickHouse, PrivatePostgres, StopMode};
use ferry_testkit::rand::rngs::StdRng;
use ferry_testkit::rand::{Rng, SeedableRng};
use ferry_testkit::{ChServer, PgServer};
use tokio_postgres::Client;

const TIMEOUT: Duration = Duration::from_secs(120);
/// How long a server stays down.
const DOWN_FOR: Duration = Duration::from_secs(5);
const KEYS: i64 = 1000;

const SCHEMA: &str = "
    CREATE TABLE t (id int8 PRIMARY KEY, n int8 NOT NULL, note text, doc text);
    ALTER TABLE t ALTER COLUMN doc SET STORAGE EXTERNAL;
    INSERT INTO t SELECT g, g, 'note ' || g, CASE WHEN g % 4 = 0 THEN repeat(md5(g::text), 300) END
      FROM generate_series(1, 500) g;";

/// How `t` is compared.
const COLS: [Col<'static>; 4] = [
    Col::Val("id"),
    Col::Val("n"),
    Col::Val("note"),
    Col::Md5("doc"),
];

on_every_destination!(destination_restart_during_streaming_loses_nothing(
    flavor = "multi_thread",
    worker_threads = 2
));
on_every_destination!(source_restart_during_streaming_loses_nothing(
    flavor = "multi_thread",
    worker_threads = 2
));
on_every_destination!(daemon_killed_during_streaming_resumes_exactly(
    flavor = "multi_thread",
    worker_threads = 2
));

/// One small transaction of mixed changes, chosen by `rng`.
async fn one_transaction(src: &Client, rng: &mut StdRng) -> Result<(), tokio_postgres::Error> {
    let id: i64 = rng.gen_range(1..=KEYS);
    let value: i64 = rng.gen_range(0..1_000_000);
    let sql = match rng.gen_range(0..10) {
        0..=3 => {
            "INSERT INTO t VALUES ($1::int8, $2::int8, 'n ' || $2::int8, CASE WHEN $2::int8 % 2 = 0 THEN repeat(md5($2::int8::text), 300) END)
             ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n, note = EXCLUDED.note, doc = EXCLUDED.doc"
        }
        // Leaves the large column alone.
        4..=7 => "UPDATE t SET n = n + $2::int8, note = 'u ' || $2::int8 WHERE id = $1::int8",
        _ => "DELETE FROM t WHERE id = $1::int8 AND $2::int8 IS NOT NULL",
    };
    src.batch_execute("BEGIN").await?;
    src.execute(sql, &[&id, &value]).await?;
    src.execute("UPDATE t SET n = n + 1 WHERE id = $1::int8 + 1", &[&id])
        .await?;
    src.batch_execute("COMMIT").await
}

/// Waits until the destination holds exactly the source's rows, and the mirror runs.
async fn converged(ferry: &Client, src: &Client, dest: &Dest, step: &str) {
    converge(ferry, src, dest, &View::new("t", &COLS, "id"), step).await;
    let state: String = ferry
        .query_one("SELECT state FROM mirror_status", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "running", "{step}");
}

/// A destination server of the test's own, which it can stop and start.
enum PrivateDestination {
    ClickHouse(PrivateClickHouse),
    Postgres(PrivatePostgres),
}

impl PrivateDestination {
    async fn start(kind: Kind) -> PrivateDestination {
        match kind {
            Kind::ClickHouse => PrivateDestination::ClickHouse(PrivateClickHouse::start().await),
            Kind::Postgres => PrivateDestination::Postgres(PrivatePostgres::start().await),
        }
    }

    async fn database(&self) -> Dest {
        match self {
            PrivateDestination::ClickHouse(c) => {
                Dest::ClickHouse(c.server().temp_database("ferry_dst").await)
            }
            PrivateDestination::Postgres(p) => {
                Dest::Postgres(p.server().temp_database("ferry_dst").await)
            }
        }
    }

    async fn stop(&mut self) {
        match self {
            PrivateDestination::ClickHouse(c) => c.stop().await,
            PrivateDestination::Postgres(p) => p.stop(StopMode::Fast).await,
        }
    }

    async fn start_again(&mut self) {
        match self {
            PrivateDestination::ClickHouse(c) => c.start_again().await,
            PrivateDestination::Postgres(p) => p.start_again().await,
        }
    }
}

/// `mirror_status.lag_seconds` (0 when not shown).
async fn lag(ferry: &Client) -> f64 {
    ferry
        .query_one(
            "SELECT coalesce(lag_seconds, 0)::float8 FROM mirror_status",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Batches of changes the mirror recorded as written.
async fn batches(ferry: &TestFerry) -> i64 {
    ferry
        .catalog()
        .await
        .query_one("SELECT count(*) FROM cdc_batches", &[])
        .await
        .unwrap()
        .get(0)
}

/// Waits until the mirror has written more than `than` batches.
async fn wait_batches_past(ferry: &TestFerry, than: i64) {
    let deadline = Instant::now() + TIMEOUT;
    while batches(ferry).await <= than {
        assert!(Instant::now() < deadline, "the mirror wrote no batch");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The catalog server's clock, as text (the in-process daemon's clock is the same machine's).
async fn catalog_now(ferry: &TestFerry) -> String {
    ferry
        .catalog()
        .await
        .query_one("SELECT now()::text", &[])
        .await
        .unwrap()
        .get(0)
}

async fn destination_restart_during_streaming_loses_nothing(kind: Kind) {
    let mut server = PrivateDestination::start(kind).await;
    let ferry = TestFerry::start().await;
    let pg = PgServer::from_env();
    let source = pg.temp_database("ferry_src").await;
    let dest = server.database().await;
    let client = ferry.connect().await;
    client
        .batch_execute(&pg_peer_sql("src", &source.name, &pg.password))
        .await
        .unwrap();
    client.batch_execute(&dest.peer_sql("dst")).await.unwrap();
    let src = source.connect().await;
    src.batch_execute(SCHEMA).await.unwrap();
    client
        .batch_execute(
            "CREATE MIRROR live FROM src TO dst WITH TABLE MAPPING (t:t)
             WITH (do_initial_copy = true, sync_interval = 1)",
        )
        .await
        .unwrap();
    wait_for_state(&client, "live", "running", TIMEOUT).await;
    converged(&client, &src, &dest, "initial load").await;

    // Writes go on at the source the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU32::new(0));
    let writer = {
        let src = source.connect().await;
        let (stop, written) = (stop.clone(), written.clone());
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(11);
            while !stop.load(Ordering::Relaxed) {
                one_transaction(&src, &mut rng).await.unwrap();
                written.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Some of them are written before the destination goes.
    wait_batches_past(&ferry, 0).await;

    // The destination goes away for a while; the mirror retries and does not fail.
    server.stop().await;
    let stopped_at = catalog_now(&ferry).await;
    let written_before = written.load(Ordering::Relaxed);
    let down = Instant::now();
    let mut lag_seen = 0.0;
    // More than streaming ever lags here (sync_interval = 1): it grows while nothing is written.
    let grown = DOWN_FOR.as_secs_f64() / 2.0;
    while down.elapsed() < DOWN_FOR || lag_seen < grown {
        assert_not_failed(&client, "destination down").await;
        // The mirror says it is behind, by more and more.
        lag_seen = lag(&client).await.max(lag_seen);
        assert!(
            down.elapsed() < TIMEOUT,
            "mirror_status shows no growing lag while the destination is down (at most {lag_seen} s)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("lag while the destination was down: {lag_seen} s");
    let written_while_down = batches(&ferry).await;
    let starting_at = catalog_now(&ferry).await;
    let written_down = written.load(Ordering::Relaxed) - written_before;
    server.start_again().await;
    let back = Instant::now();
    println!(
        "the destination was down {:?}; {written_down} transactions meanwhile",
        down.elapsed()
    );
    assert!(
        written_down > 10,
        "the source saw no writes while the destination was down"
    );
    // No batch counted as written while there was nowhere to write it.
    let impossible: Vec<String> = ferry
        .catalog()
        .await
        .query(
            "SELECT concat_ws(' ', batch_id, rows, first_lsn, last_lsn, finished_at) FROM cdc_batches
             WHERE finished_at > $1::text::timestamptz AND finished_at < $2::text::timestamptz",
            &[&stopped_at, &starting_at],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        impossible.is_empty(),
        "batches recorded while the destination was down: {impossible:?}"
    );
    // The changes written meanwhile reach it, and so do the ones after.
    wait_batches_past(&ferry, written_while_down).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    println!("{} transactions written", written.load(Ordering::Relaxed));
    converged(&client, &src, &dest, "after the restart").await;
    println!(
        "converged {:?} after the destination came back",
        back.elapsed()
    );
    // Idle and caught up again: no lag.
    let started = Instant::now();
    while lag(&client).await > 0.0 {
        assert!(
            started.elapsed() < TIMEOUT,
            "the lag did not return to 0 once caught up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ferry.stop().await;
    drop(dest);
    server.stop().await;
}

async fn source_restart_during_streaming_loses_nothing(kind: Kind) {
    let mut postgres = PrivatePostgres::start().await;
    let private = postgres.server();
    // The catalog is on the shared server: only the source restarts.
    let ferry = TestFerry::start().await;
    let source = private.temp_database("ferry_src").await;
    let dest = Dest::create(kind).await;
    let client = ferry.connect().await;
    client
        .batch_execute(&format!(
            "CREATE PEER src FROM POSTGRES WITH (host = '{}', port = {}, user = '{}', password = '{}', database = '{}')",
            private.host, private.port, private.user, private.password, source.name
        ))
        .await
        .unwrap();
    client.batch_execute(&dest.peer_sql("dst")).await.unwrap();
    let src = source.connect().await;
    src.batch_execute(SCHEMA).await.unwrap();
    client
        .batch_execute(
            "CREATE MIRROR live FROM src TO dst WITH TABLE MAPPING (t:t)
             WITH (do_initial_copy = true, sync_interval = 1)",
        )
        .await
        .unwrap();
    wait_for_state(&client, "live", "running", TIMEOUT).await;
    converged(&client, &src, &dest, "initial load").await;

    // Changes right up to the stop: some are still in the daemon's batch when the source
    // goes away. First a clean shutdown, then a crash (the slot's position on disk may then
    // be older than the one the daemon confirmed).
    let mut rng = StdRng::seed_from_u64(23);
    let mut src = src;
    for mode in [StopMode::Fast, StopMode::Immediate] {
        for _ in 0..300 {
            one_transaction(&src, &mut rng).await.unwrap();
        }
        let before_stop = ferry_e2e::source_rows(&src, "t", &COLS, "id").await;
        let pending = dest.rows("t", &COLS, "id").await != before_stop;
        println!("{mode:?} stop with changes not yet at the destination: {pending}");
        drop(src);
        postgres.stop(mode).await;
        let down = Instant::now();
        while down.elapsed() < DOWN_FOR {
            assert_not_failed(&client, "PostgreSQL down").await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        postgres.start_again().await;
        println!("PostgreSQL ({mode:?} stop) was down {:?}", down.elapsed());
        src = source.connect().await;
        assert_eq!(
            ferry_e2e::source_rows(&src, "t", &COLS, "id").await,
            before_stop,
            "the source kept its rows"
        );
        converged(
            &client,
            &src,
            &dest,
            &format!("changes before the {mode:?} stop"),
        )
        .await;
    }

    // And the stream goes on after it.
    for _ in 0..300 {
        one_transaction(&src, &mut rng).await.unwrap();
    }
    converged(&client, &src, &dest, "changes after the restart").await;
    let active: bool = src
        .query_one(
            "SELECT active FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(active, "the daemon streams from the slot again");
    ferry.stop().await;
    drop(src);
    drop(source);
    postgres.stop(StopMode::Fast).await;
}

/// The daemon killed as `kill -9` would, twice, while changes stream (once mid-batch, with
/// a large transaction on its way): the restarted daemon resumes from the position the
/// destination and the catalog hold, and nothing is lost or applied twice. A table without a
/// key (`REPLICA IDENTITY FULL`) gets a row per transaction: in PostgreSQL, a change applied
/// twice would be a row twice.
async fn daemon_killed_during_streaming_resumes_exactly(kind: Kind) {
    let Setup {
        ferry,
        client,
        source,
        dest,
        src,
    } = setup(kind).await;
    src.batch_execute(
        "CREATE TABLE c (id int PRIMARY KEY, n int8 NOT NULL);
         INSERT INTO c SELECT g, 0 FROM generate_series(0, 200) g;
         CREATE TABLE log (seq int NOT NULL, note text);
         ALTER TABLE log REPLICA IDENTITY FULL;",
    )
    .await
    .unwrap();
    client
        .batch_execute(
            "CREATE MIRROR killed FROM src TO dst WITH TABLE MAPPING (c:c, log:log)
             WITH (do_initial_copy = true, sync_interval = 1, max_batch_size = 5000)",
        )
        .await
        .unwrap();
    wait_for_state(&client, "killed", "running", TIMEOUT).await;
    let view = View::new("c", &[Col::Val("id"), Col::Val("n")], "id");
    converge(&client, &src, &dest, &view, "initial load").await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let src = source.connect().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(5);
            let mut written = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let id: i32 = rng.gen_range(1..=200);
                src.batch_execute(&format!(
                    "BEGIN; UPDATE c SET n = n + 1 WHERE id = {id}; UPDATE c SET n = n + 1 WHERE id = 0;
                     INSERT INTO log VALUES ({written}, 'one'); COMMIT"
                ))
                .await
                .unwrap();
                written += 1;
                if written % 500 == 0 {
                    // A transaction larger than a batch: written in chunks, committed whole.
                    src.batch_execute(&format!(
                        "BEGIN; UPDATE c SET n = n + 1 WHERE id > 0; UPDATE c SET n = n + 200 WHERE id = 0;
                         UPDATE c SET n = n + 1 WHERE id > 0; UPDATE c SET n = n + 200 WHERE id = 0;
                         INSERT INTO log SELECT -({written} * 10000 + g), 'big' FROM generate_series(1, 6000) g;
                         COMMIT",
                    ))
                    .await
                    .unwrap();
                }
            }
            written
        })
    };
    let mut ferry = ferry;
    let mut client = client;
    for round in 0..2 {
        let catalog = ferry.catalog().await;
        let before: i64 = scalar(&catalog, "SELECT count(*) FROM ferry.cdc_batch").await;
        // Batches are being written when the daemon dies.
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let now: i64 = scalar(&catalog, "SELECT count(*) FROM ferry.cdc_batch").await;
            if now >= before + 3 {
                break;
            }
            assert!(Instant::now() < deadline, "no batches were written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(client);
        drop(catalog);
        let catalog_db = ferry.kill();
        println!("round {round}: the daemon was killed");
        tokio::time::sleep(Duration::from_millis(500)).await;
        ferry = TestFerry::restart(catalog_db).await;
        client = ferry.connect().await;
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    println!("{written} transactions written");
    converge(&client, &src, &dest, &view, "after the kills").await;
    let log = View::new("log", &[Col::Val("seq"), Col::Val("note")], "seq, note");
    converge(&client, &src, &dest, &log, "the log after the kills").await;
    // The counters add up: row 0 counts every increment of the others.
    let rows = dest.rows("c", &[Col::Val("n")], "id").await;
    let n: Vec<i64> = rows.iter().map(|r| r.parse().unwrap()).collect();
    assert_eq!(
        n[0],
        n[1..].iter().sum::<i64>(),
        "an increment was lost or applied twice"
    );
    ferry.stop().await;
}

/// The private servers themselves: ports of their own, data kept across a kill and a crash.
#[tokio::test]
async fn private_servers_keep_their_data_across_restarts() {
    let mut clickhouse = PrivateClickHouse::start().await;
    let ch = clickhouse.server();
    assert_ne!(ch.http_port, ChServer::from_env().http_port);
    let db = ch.temp_database("ferry_private").await;
    db.client()
        .query("CREATE TABLE x (a UInt32) ENGINE = MergeTree ORDER BY a")
        .execute()
        .await
        .unwrap();
    db.client()
        .query("INSERT INTO x SELECT number FROM numbers(10)")
        .execute()
        .await
        .unwrap();
    clickhouse.kill().await;
    assert!(ch.client().query("SELECT 1").execute().await.is_err());
    clickhouse.start_again().await;
    let n: u64 = db
        .client()
        .query("SELECT count() FROM x")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(n, 10);

    let mut postgres = PrivatePostgres::start().await;
    let pg = postgres.server();
    assert_ne!(pg.port, PgServer::from_env().port);
    let client = pg.connect("postgres").await;
    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(wal_level, "logical");
    client
        .batch_execute("CREATE TABLE kept (a int); INSERT INTO kept VALUES (1), (2)")
        .await
        .unwrap();
    drop(client);
    postgres.stop(StopMode::Immediate).await;
    assert!(
        tokio_postgres::connect(&pg.conn_str("postgres"), tokio_postgres::NoTls)
            .await
            .is_err()
    );
    postgres.start_again().await;
    let client = pg.connect("postgres").await;
    let n: i64 = scalar(&client, "SELECT count(*) FROM kept").await;
    assert_eq!(n, 2);
}
