//! The figures an operator alerts on, checked against the source's own view of the slot
//! (`pg_current_wal_lsn()`, `pg_replication_slots`) in every state, against every destination:
//! under pgbench, with the destination (a private one) stopped for 30 s while Prometheus'
//! endpoint is scraped, paused and failed; live progress during a 1 M-row load; states for a
//! mirror without an initial copy and a completed one; batches of whole transactions.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_e2e::{metrics_text, on_every_destination, setup, wait_for_state, Kind, TestFerry};
use ferry_testkit::private::{PrivateClickHouse, PrivatePostgres, StopMode};
use ferry_testkit::TempPgDatabase;
use tokio_postgres::Client;

on_every_destination!(figures_track_the_slot_under_load_outage_pause_and_failure(
    flavor = "multi_thread",
    worker_threads = 2
));
on_every_destination!(load_progress_is_live_and_states_stay_truthful(
    flavor = "multi_thread",
    worker_threads = 2
));
on_every_destination!(batches_hold_whole_transactions(
    flavor = "multi_thread",
    worker_threads = 2
));

const TIMEOUT: Duration = Duration::from_secs(120);
/// Longer than two turns of the monitor (every 5 s).
const TWO_SAMPLES: Duration = Duration::from_secs(30);

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text
        .split_once('/')
        .unwrap_or_else(|| panic!("LSN {text:?}"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// The source's own view of a slot.
#[derive(Debug, Clone, Copy)]
struct SourceView {
    current: u64,
    restart: u64,
    confirmed: u64,
    active: bool,
}

async fn source_view(src: &Client, slot: &str) -> SourceView {
    let r = src
        .query_one(
            "SELECT pg_current_wal_lsn()::text, restart_lsn::text, confirmed_flush_lsn::text, active
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    SourceView {
        current: lsn(r.get(0)),
        restart: lsn(r.get(1)),
        confirmed: lsn(r.get(2)),
        active: r.get(3),
    }
}

/// What `mirror_status` shows, read as a new user would (through Ferry, as text).
#[derive(Debug, Clone)]
struct Figures {
    state: String,
    sampled_at: String,
    source_lsn: u64,
    restart: u64,
    confirmed_slot: u64,
    confirmed_lsn: u64,
    lag_bytes: i64,
    wal_held_bytes: i64,
    slot_lag_bytes: i64,
    lag_seconds: Option<f64>,
    streaming: bool,
    slot_active: bool,
    warnings: i64,
}

/// The figures, once the monitor has sampled the mirror (`None` before).
async fn sampled(client: &Client, mirror: &str) -> Option<Figures> {
    let rows = client
        .simple_query(&format!(
            "SELECT state, sampled_at, source_lsn, slot_restart_lsn, slot_confirmed_lsn,
                    coalesce(confirmed_lsn, snapshot_lsn), lag_bytes, wal_held_bytes,
                    slot_lag_bytes, lag_seconds, streaming, slot_active, warnings
             FROM mirror_status WHERE mirror = '{mirror}'"
        ))
        .await
        .unwrap();
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("the mirror is in mirror_status");
    row.get(1)?;
    let text = |i: usize| row.get(i).unwrap_or_else(|| panic!("column {i} is NULL"));
    Some(Figures {
        state: text(0).to_owned(),
        sampled_at: text(1).to_owned(),
        source_lsn: lsn(text(2)),
        restart: lsn(text(3)),
        confirmed_slot: lsn(text(4)),
        confirmed_lsn: lsn(text(5)),
        lag_bytes: text(6).parse().unwrap(),
        wal_held_bytes: text(7).parse().unwrap(),
        slot_lag_bytes: text(8).parse().unwrap(),
        lag_seconds: row.get(9).map(|s| s.parse().unwrap()),
        streaming: text(10) == "t",
        slot_active: text(11) == "t",
        warnings: text(12).parse().unwrap(),
    })
}

async fn figures(client: &Client, mirror: &str) -> Figures {
    sampled(client, mirror)
        .await
        .expect("the monitor has sampled the mirror")
}

/// Waits for the monitor to record `n` new samples; returns the last figures.
async fn next_samples(client: &Client, mirror: &str, n: usize) -> Figures {
    let deadline = Instant::now() + TWO_SAMPLES;
    let mut last = sampled(client, mirror).await;
    let mut seen = 0;
    loop {
        if seen >= n {
            if let Some(f) = last {
                return f;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the monitor stopped sampling {mirror}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let f = sampled(client, mirror).await;
        if f.as_ref().map(|f| &f.sampled_at) != last.as_ref().map(|f| &f.sampled_at) {
            seen += 1;
        }
        last = f;
    }
}

/// The monitor's figures lie between the source's own view before and after they were taken,
/// and the derived figures follow from them exactly.
async fn assert_tracks_source(
    client: &Client,
    src: &Client,
    mirror: &str,
    slot: &str,
    step: &str,
) -> Figures {
    let before = source_view(src, slot).await;
    // Two new samples: the second began after `before` was read.
    let f = next_samples(client, mirror, 2).await;
    let after = source_view(src, slot).await;
    println!("{step}: source {before:?} .. {after:?}; Ferry {f:?}");
    for (what, b, m, a) in [
        ("source_lsn", before.current, f.source_lsn, after.current),
        ("slot_restart_lsn", before.restart, f.restart, after.restart),
        (
            "slot_confirmed_lsn",
            before.confirmed,
            f.confirmed_slot,
            after.confirmed,
        ),
    ] {
        assert!(
            b <= m && m <= a,
            "{step}: {what} {m:X} not within the source's {b:X} .. {a:X}"
        );
    }
    assert_eq!(
        f.wal_held_bytes as u64,
        f.source_lsn - f.restart,
        "{step}: wal_held_bytes"
    );
    assert_eq!(
        f.slot_lag_bytes as u64,
        f.source_lsn - f.confirmed_slot,
        "{step}: slot_lag_bytes"
    );
    assert!(f.lag_bytes >= 0, "{step}: lag_bytes {}", f.lag_bytes);
    assert!(f.lag_seconds.is_some(), "{step}: lag_seconds is NULL");
    f
}

/// pgbench running a workload of small transactions at a steady rate until dropped.
struct Pgbench {
    child: Child,
    _script: PathBuf,
}

impl Pgbench {
    fn start(db: &TempPgDatabase, tps: u32) -> Pgbench {
        let script = std::env::temp_dir().join(format!("ferry_obs_{}.sql", db.name));
        std::fs::write(
            &script,
            "\\set id random(1, 1000)\n\
             BEGIN;\n\
             UPDATE acc SET n = n + 1 WHERE id = :id;\n\
             INSERT INTO hist (acc, at) VALUES (:id, now());\n\
             COMMIT;\n",
        )
        .unwrap();
        let s = &db.server;
        let child = Command::new(PrivatePostgres::bindir().join("pgbench"))
            .args(["-n", "-c", "2", "-R", &tps.to_string(), "-T", "3600", "-f"])
            .arg(&script)
            .args([
                "-h",
                &s.host,
                "-p",
                &s.port.to_string(),
                "-U",
                &s.user,
                &db.name,
            ])
            .env("PGPASSWORD", &s.password)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbench");
        Pgbench {
            child,
            _script: script,
        }
    }
}

impl Drop for Pgbench {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self._script);
    }
}

/// A destination server of the test's own, to be stopped and started again.
enum PrivateDest {
    ClickHouse(PrivateClickHouse),
    Postgres(PrivatePostgres),
}

impl PrivateDest {
    async fn start(kind: Kind) -> PrivateDest {
        match kind {
            Kind::ClickHouse => PrivateDest::ClickHouse(PrivateClickHouse::start().await),
            Kind::Postgres => PrivateDest::Postgres(PrivatePostgres::start().await),
        }
    }

    /// Creates a database and returns `CREATE PEER name …` for it.
    async fn peer_sql(&self, name: &str) -> String {
        match self {
            PrivateDest::ClickHouse(c) => {
                let ch = c.server();
                let db = ch.temp_database("ferry_dst").await;
                let sql = format!(
                    "CREATE PEER {name} FROM CLICKHOUSE WITH (host = '{}', port = {}, database = '{}', disable_tls = true)",
                    ch.host, ch.http_port, db.name
                );
                // The server and its data go with the test.
                std::mem::forget(db);
                sql
            }
            PrivateDest::Postgres(p) => {
                let pg = p.server();
                let db = pg.temp_database("ferry_dst").await;
                let sql = format!(
                    "CREATE PEER {name} FROM POSTGRES WITH (host = '{}', port = {}, user = '{}', password = '{}', database = '{}')",
                    pg.host, pg.port, pg.user, pg.password, db.name
                );
                std::mem::forget(db);
                sql
            }
        }
    }

    async fn stop(&mut self) {
        match self {
            PrivateDest::ClickHouse(c) => c.stop().await,
            PrivateDest::Postgres(p) => p.stop(StopMode::Fast).await,
        }
    }

    async fn start_again(&mut self) {
        match self {
            PrivateDest::ClickHouse(c) => c.start_again().await,
            PrivateDest::Postgres(p) => p.start_again().await,
        }
    }
}

/// `GET /metrics` from the daemon, as Prometheus scrapes it: each sample of `mirror`, by its
/// series' name (and `kind` label, where there is one).
async fn scrape(addr: SocketAddr, mirror: &str) -> Vec<(String, f64)> {
    let body = metrics_text(addr).await;
    let label = format!("mirror=\"{mirror}\"");
    body.lines()
        .filter(|l| !l.starts_with('#') && l.contains(&label))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample");
            let name = series.split('{').next().unwrap().to_owned();
            (name, value.parse().expect("a number"))
        })
        .collect()
}

/// The one sample of `name` among `samples`.
fn sample(samples: &[(String, f64)], name: &str) -> f64 {
    let found: Vec<f64> = samples
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(found.len(), 1, "{name} in {samples:?}");
    found[0]
}

async fn warnings(client: &Client, mirror: &str) -> Vec<(String, bool)> {
    client
        .query(
            "SELECT kind, active FROM mirror_warnings WHERE mirror = $1 ORDER BY started_at",
            &[&mirror],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn figures_track_the_slot_under_load_outage_pause_and_failure(kind: Kind) {
    // Servers of the test's own: the destination is stopped, and the source's WAL is the
    // workload's alone (the shared server's other tests write plenty).
    let mut destination = PrivateDest::start(kind).await;
    let postgres = PrivatePostgres::start().await;
    let private = postgres.server();
    let ferry = TestFerry::start().await;
    let source = private.temp_database("ferry_src").await;
    let client = ferry.connect().await;
    client
        .batch_execute(&format!(
            "CREATE PEER src FROM POSTGRES WITH (host = '{}', port = {}, user = '{}', password = '{}', database = '{}')",
            private.host, private.port, private.user, private.password, source.name
        ))
        .await
        .unwrap();
    client
        .batch_execute(&destination.peer_sql("dst").await)
        .await
        .unwrap();
    let src = source.connect().await;
    src.batch_execute(
        "CREATE TABLE acc (id int8 PRIMARY KEY, n int8 NOT NULL);
         CREATE TABLE hist (id bigserial PRIMARY KEY, acc int8, at timestamptz);
         INSERT INTO acc SELECT g, 0 FROM generate_series(1, 1000) g;",
    )
    .await
    .unwrap();
    client
        .batch_execute(
            "CREATE MIRROR obs FROM src TO dst WITH TABLE MAPPING (acc:acc, hist:hist)
             WITH (do_initial_copy = true, max_slot_lag_bytes = 100000)",
        )
        .await
        .unwrap();
    wait_for_state(&client, "obs", "running", TIMEOUT).await;
    let slot: String = client
        .query_one(
            "SELECT slot_name FROM mirror_status WHERE mirror = 'obs'",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    // Under pgbench: every figure within the source's own view, the lag small.
    let bench = Pgbench::start(&source, 100);
    let f = assert_tracks_source(&client, &src, "obs", &slot, "under pgbench").await;
    assert!(f.streaming && f.slot_active, "{f:?}");
    assert!(f.lag_seconds.unwrap() < 30.0, "{f:?}");
    let rate: Option<String> = client
        .query_one(
            "SELECT stream_rows_per_second::text FROM mirror_tables WHERE source_table = 'public.hist'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let rate: f64 = rate.expect("a streaming rate").parse().unwrap();
    assert!(rate > 0.0, "no streaming throughput shown under pgbench");

    // The destination away for 30 s, with Prometheus watching: the lag rises at every sample
    // in the view and at every scrape, the slot-lag warning appears.
    destination.stop().await;
    let down = Instant::now();
    let mut lags: Vec<(f64, i64)> = Vec::new();
    let mut scraped: Vec<(f64, f64, f64)> = Vec::new();
    let mut f = next_samples(&client, "obs", 1).await;
    while down.elapsed() < Duration::from_secs(30) {
        f = next_samples(&client, "obs", 1).await;
        assert_eq!(f.state, "running", "{f:?}");
        lags.push((
            f.lag_seconds.expect("lag while the destination is down"),
            f.lag_bytes,
        ));
        let m = scrape(ferry.metrics_addr, "obs").await;
        scraped.push((
            sample(&m, "ferry_mirror_lag_seconds"),
            sample(&m, "ferry_mirror_lag_bytes"),
            sample(&m, "ferry_mirror_wal_held_bytes"),
        ));
    }
    println!("while the destination was down (lag_seconds, lag_bytes): {lags:?}");
    println!("scraped meanwhile (lag_seconds, lag_bytes, wal_held_bytes): {scraped:?}");
    // The first sample may still show the last moments before the outage.
    for w in lags[1..].windows(2) {
        assert!(
            w[1].0 >= w[0].0,
            "lag_seconds fell while the destination was down: {lags:?}"
        );
        assert!(
            w[1].1 >= w[0].1,
            "lag_bytes fell while the destination was down: {lags:?}"
        );
    }
    for w in scraped[1..].windows(2) {
        assert!(
            w[1].0 >= w[0].0 && w[1].1 >= w[0].1 && w[1].2 >= w[0].2,
            "a scraped figure fell while the destination was down: {scraped:?}"
        );
    }
    assert!(lags.last().unwrap().0 >= 20.0, "{lags:?}");
    assert!(scraped.last().unwrap().0 >= 20.0, "{scraped:?}");
    assert!(scraped.last().unwrap().2 > 100_000.0, "{scraped:?}");
    let open = warnings(&client, "obs").await;
    assert!(open.contains(&("slot_lag".into(), true)), "{open:?}");
    assert!(open.contains(&("retrying".into(), true)), "{open:?}");
    assert!(f.warnings >= 2, "{f:?}");
    let m = scrape(ferry.metrics_addr, "obs").await;
    assert!(sample(&m, "ferry_mirror_warnings") >= 2.0, "{m:?}");
    assert_eq!(sample(&m, "ferry_mirror_streaming"), 0.0, "{m:?}");
    let during = assert_tracks_source(&client, &src, "obs", &slot, "destination down").await;
    assert!(during.lag_bytes > 0);

    // Back: the lag goes back down and the warnings end, each kept with its end; so do the
    // scraped figures.
    destination.start_again().await;
    let back = Instant::now();
    loop {
        let f = next_samples(&client, "obs", 1).await;
        if f.lag_seconds.unwrap() < 10.0 && f.warnings == 0 {
            break;
        }
        assert!(
            back.elapsed() < TIMEOUT,
            "the mirror did not catch up: {f:?}"
        );
    }
    let m = scrape(ferry.metrics_addr, "obs").await;
    assert!(sample(&m, "ferry_mirror_lag_seconds") < 10.0, "{m:?}");
    assert_eq!(sample(&m, "ferry_mirror_warnings"), 0.0, "{m:?}");
    // The slot confirms again (its restart_lsn, hence the WAL held, moves on only once the
    // source has a newer point to restart decoding from).
    assert!(
        sample(&m, "ferry_mirror_slot_lag_bytes") < 100_000.0,
        "{m:?}"
    );
    let all = warnings(&client, "obs").await;
    assert!(all.contains(&("slot_lag".into(), false)), "{all:?}");
    assert!(all.contains(&("retrying".into(), false)), "{all:?}");

    // Paused: the slot holds on, the figures say so, and the lag grows.
    client.batch_execute("PAUSE MIRROR obs").await.unwrap();
    let a = assert_tracks_source(&client, &src, "obs", &slot, "paused").await;
    let b = assert_tracks_source(&client, &src, "obs", &slot, "paused, later").await;
    for f in [&a, &b] {
        assert_eq!(f.state, "paused");
        assert!(!f.streaming && !f.slot_active, "{f:?}");
        assert_eq!(f.lag_bytes as u64, f.source_lsn - f.confirmed_lsn, "{f:?}");
    }
    assert!(b.lag_seconds > a.lag_seconds, "{a:?} then {b:?}");
    assert!(b.slot_lag_bytes > 100_000, "{b:?}");
    assert!(warnings(&client, "obs")
        .await
        .contains(&("slot_lag".into(), true)));

    // Failed (its publication dropped under it): the same, and the state says why.
    src.batch_execute(&format!(
        "DROP PUBLICATION {}",
        client
            .query_one(
                "SELECT publication_name FROM mirror_status WHERE mirror = 'obs'",
                &[]
            )
            .await
            .unwrap()
            .get::<_, String>(0)
    ))
    .await
    .unwrap();
    client.batch_execute("RESUME MIRROR obs").await.unwrap();
    let started = Instant::now();
    while figures(&client, "obs").await.state != "failed" {
        assert!(started.elapsed() < TIMEOUT, "the mirror did not fail");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let a = assert_tracks_source(&client, &src, "obs", &slot, "failed").await;
    let b = assert_tracks_source(&client, &src, "obs", &slot, "failed, later").await;
    assert!(!b.slot_active && !source_view(&src, &slot).await.active);
    assert_eq!(b.lag_bytes as u64, b.source_lsn - b.confirmed_lsn, "{b:?}");
    assert!(b.lag_seconds > a.lag_seconds, "{a:?} then {b:?}");
    assert!(b.lag_bytes > a.lag_bytes, "{a:?} then {b:?}");

    drop(bench);
    client.batch_execute("DROP MIRROR obs").await.unwrap();
    ferry.stop().await;
    drop(source);
    destination.stop().await;
    drop(postgres);
}

async fn load_progress_is_live_and_states_stay_truthful(kind: Kind) {
    let s = setup(kind).await;
    s.src
        .batch_execute(
            "CREATE TABLE big (id int8 PRIMARY KEY, pad text NOT NULL);
             INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 1000000) g;
             ANALYZE big;
             CREATE TABLE small (id int8 PRIMARY KEY, v int8);
             INSERT INTO small SELECT g, g FROM generate_series(1, 10) g;",
        )
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR live FROM src TO dst WITH TABLE MAPPING (big:big)
             WITH (do_initial_copy = true, snapshot_num_rows_per_partition = 50000,
                   snapshot_max_parallel_workers = 1)",
        )
        .await
        .unwrap();
    // Rows copied while the load runs, per mirror and per table, with rate and ETA.
    let mut seen: Vec<(i64, i64, bool, bool)> = Vec::new();
    let started = Instant::now();
    loop {
        let r = s
            .client
            .query_one(
                "SELECT m.state, m.rows_copied::int8, t.rows_copied, t.partitions_done,
                        m.rows_per_second IS NOT NULL AND t.rows_per_second IS NOT NULL,
                        t.eta IS NOT NULL AND m.load_eta IS NOT NULL
                 FROM mirror_status m JOIN mirror_tables t USING (mirror) WHERE mirror = 'live'",
                &[],
            )
            .await
            .unwrap();
        let state: String = r.get(0);
        if state == "running" {
            break;
        }
        let (mirror_rows, table_rows, partitions): (i64, i64, i64) = (r.get(1), r.get(2), r.get(3));
        assert_eq!(mirror_rows, table_rows);
        // Never behind the ranges recorded done.
        assert!(
            table_rows >= partitions * 40_000,
            "{table_rows} rows for {partitions} ranges"
        );
        if table_rows > 0 && table_rows < 1_000_000 {
            seen.push((table_rows, partitions, r.get(4), r.get(5)));
        }
        assert!(started.elapsed() < TIMEOUT, "the load did not end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("rows copied seen during the load (rows, ranges done, rate, eta): {seen:?}");
    let mut distinct: Vec<i64> = seen.iter().map(|x| x.0).collect();
    distinct.dedup();
    assert!(distinct.len() >= 3, "progress was not live: {seen:?}");
    assert!(distinct.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!(
        seen.iter().any(|x| x.2 && x.3),
        "no rate and ETA during the load: {seen:?}"
    );
    let done: (i64, String) = {
        let r = s
            .client
            .query_one(
                "SELECT rows_copied, percent::text FROM mirror_tables WHERE mirror = 'live'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(done, (1_000_000, "100.0".to_owned()));

    // Without an initial copy: the table streams at once, shown done, no percentage.
    s.client
        .batch_execute(
            "CREATE MIRROR nocopy FROM src TO dst WITH TABLE MAPPING (small:small_nocopy)
             WITH (do_initial_copy = false)",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "nocopy", "running", TIMEOUT).await;
    let r = s
        .client
        .query_one(
            "SELECT t.state, t.percent IS NULL, m.percent IS NULL, m.rows_per_second IS NULL
             FROM mirror_tables t JOIN mirror_status m USING (mirror) WHERE mirror = 'nocopy'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (r.get::<_, String>(0), r.get(1), r.get(2), r.get(3)),
        ("done".to_owned(), true, true, true)
    );

    // Completed: the slot and publication Ferry made are gone, and so are they from the view.
    s.client
        .batch_execute(
            "CREATE MIRROR once FROM src TO dst WITH TABLE MAPPING (small:small_once)
             WITH (do_initial_copy = true, initial_copy_only = true)",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "once", "completed", TIMEOUT).await;
    let r = s
        .client
        .query_one(
            "SELECT slot_name IS NULL, publication_name IS NULL, lag_seconds IS NULL, lag_bytes IS NULL
             FROM mirror_status WHERE mirror = 'once'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            r.get::<_, bool>(0),
            r.get::<_, bool>(1),
            r.get::<_, bool>(2),
            r.get::<_, bool>(3)
        ),
        (true, true, true, true)
    );
    for m in ["live", "nocopy", "once"] {
        s.client
            .batch_execute(&format!("DROP MIRROR {m}"))
            .await
            .unwrap();
    }
    s.ferry.stop().await;
}

async fn batches_hold_whole_transactions(kind: Kind) {
    let s = setup(kind).await;
    s.src
        .batch_execute("CREATE TABLE t (id int8 PRIMARY KEY, n int8 NOT NULL)")
        .await
        .unwrap();
    s.client
        .batch_execute(
            "CREATE MIRROR b FROM src TO dst WITH TABLE MAPPING (t:t)
             WITH (do_initial_copy = true, max_batch_size = 10)",
        )
        .await
        .unwrap();
    wait_for_state(&s.client, "b", "running", TIMEOUT).await;
    // Written while paused, so that the stream finds them all at once when it resumes.
    s.client.batch_execute("PAUSE MIRROR b").await.unwrap();
    for i in 0..100i64 {
        s.src
            .batch_execute(&format!(
                "BEGIN; INSERT INTO t VALUES ({a}, 0), ({b}, 0), ({c}, 0); COMMIT;",
                a = 3 * i,
                b = 3 * i + 1,
                c = 3 * i + 2
            ))
            .await
            .unwrap();
    }
    // One transaction larger than a batch on its own.
    s.src
        .batch_execute("INSERT INTO t SELECT g, 1 FROM generate_series(1000, 1024) g")
        .await
        .unwrap();
    s.client.batch_execute("RESUME MIRROR b").await.unwrap();
    let started = Instant::now();
    let batches: Vec<i64> = loop {
        let rows: Vec<i64> = s
            .ferry
            .catalog()
            .await
            .query(
                "SELECT rows FROM public.cdc_batches WHERE mirror = 'b' ORDER BY batch_id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if rows.iter().sum::<i64>() >= 325 {
            break rows;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "changes did not arrive: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("batches: {batches:?}");
    assert_eq!(batches.iter().sum::<i64>(), 325);
    // The 3-row transactions: each batch closed at a transaction boundary once it held 10
    // rows, so at 12; the large one alone in a batch of its 25 rows (written in several
    // inserts, confirmed at its commit) — or after some of the small ones.
    let (small, large): (Vec<i64>, Vec<i64>) = batches.iter().partition(|&&r| r % 3 == 0);
    assert!(small.iter().all(|&r| r <= 12), "{batches:?}");
    assert!(
        small.iter().filter(|&&r| r == 12).count() >= 20,
        "{batches:?}"
    );
    assert_eq!(large.len(), 1, "{batches:?}");
    assert!(large[0] >= 25 && (large[0] - 25) % 3 == 0, "{batches:?}");
    assert_eq!(s.dest.count("t").await, 325);
    s.client.batch_execute("DROP MIRROR b").await.unwrap();
    s.ferry.stop().await;
}
