//! A daemon killed with SIGKILL, again and again, while a mirror streams a busy table, ends
//! with ClickHouse holding exactly the source's rows; and it never confirmed to the source a
//! position its catalog had not recorded (which would let the server discard changes that a
//! restart still needs).
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_testkit::rand::rngs::StdRng;
use ferry_testkit::rand::{Rng, SeedableRng};
use ferry_testkit::{ChServer, PgServer, TempChDatabase};
use tokio_postgres::{Client, NoTls};

const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
/// Keys the workload touches (a key change moves a row to `id + KEYS` and back).
const KEYS: i64 = 3000;
/// The workload stops after this many transactions or this long, whichever comes first.
const MAX_TRANSACTIONS: u32 = 20_000;
const WORKLOAD_FOR: Duration = Duration::from_secs(20);
const KILLS: usize = 3;
const TIMEOUT: Duration = Duration::from_secs(120);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_daemon(port: u16, catalog_url: &str, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--catalog-url",
            catalog_url,
        ])
        .env("FERRY_PASSWORD", "pw")
        .env("FERRY_SECRET_KEY", KEY)
        .env("FERRY_LOG", "info,ferry_flow=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

async fn connect(port: u16) -> Client {
    let conn = format!("host=127.0.0.1 port={port} user=ferry password=pw dbname=ferry");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio_postgres::connect(&conn, NoTls).await {
            Ok((client, c)) => {
                tokio::spawn(c);
                return client;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("daemon did not come up: {e}"),
        }
    }
}

/// `X/Y` as a number.
fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// The position the catalog recorded for the mirror: confirmed, else the snapshot's.
async fn catalog_lsn(catalog: &Client) -> u64 {
    let text: String = catalog
        .query_one(
            "SELECT coalesce(confirmed_lsn, snapshot_lsn)::text FROM ferry.mirrors WHERE name = 'busy'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    lsn(&text)
}

/// The slot's `confirmed_flush_lsn`, once no walsender holds it any more (so that every
/// status update the killed daemon sent has been taken in).
async fn released_slot_lsn(src: &Client) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = src
            .query_one(
                "SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots
                 WHERE database = current_database()",
                &[],
            )
            .await
            .unwrap();
        if !r.get::<_, bool>(0) {
            return lsn(&r.get::<_, String>(1));
        }
        assert!(
            Instant::now() < deadline,
            "the killed daemon's walsender still holds the slot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A large value, unique to `seed`: more than 8 kB, stored out of line.
const BIG: &str = "repeat(md5(($1::int8)::text), 300)";

/// Many small transactions of mixed changes, from a fixed seed. Returns how many committed.
async fn workload(src: Client, seed: u64) -> u32 {
    let mut rng = StdRng::seed_from_u64(seed);
    let until = Instant::now() + WORKLOAD_FOR;
    let mut done = 0;
    while done < MAX_TRANSACTIONS && Instant::now() < until {
        src.batch_execute("BEGIN").await.unwrap();
        // Now and then a transaction larger than a batch.
        if rng.gen_ratio(1, 500) {
            let k: i64 = rng.gen_range(0..7);
            src.execute("UPDATE w SET n = n + 1 WHERE id % 7 = $1", &[&k])
                .await
                .unwrap();
        }
        for _ in 0..rng.gen_range(1..=5) {
            let id: i64 = rng.gen_range(1..=KEYS);
            let value: i64 = rng.gen_range(-1_000_000_000_000..1_000_000_000_000);
            let sql = match rng.gen_range(0..100) {
                // Insert, or replace every column.
                0..=24 => {
                    let doc = if rng.gen_bool(0.4) {
                        BIG.to_owned()
                    } else {
                        "md5(($1::int8)::text)".to_owned()
                    };
                    format!(
                        "INSERT INTO w VALUES ($2::int8, $1::int8, 'note ' || ($1::int8)::text, {doc})
                         ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n, note = EXCLUDED.note, doc = EXCLUDED.doc"
                    )
                }
                // Leaves the large column alone: its value is not in the change.
                25..=54 => "UPDATE w SET n = n + $1::int8 % 1000, note = CASE WHEN $1::int8 % 5 = 0 THEN NULL ELSE 'u ' || ($1::int8)::text END WHERE id = $2::int8".to_owned(),
                55..=69 => format!("UPDATE w SET doc = {BIG}, n = n + 1 WHERE id = $2::int8"),
                70..=74 => "UPDATE w SET doc = NULL WHERE id = $2::int8 AND $1::int8 IS NOT NULL".to_owned(),
                75..=89 => "DELETE FROM w WHERE id = $2::int8 AND $1::int8 IS NOT NULL".to_owned(),
                // A key change, the large column unchanged.
                _ => format!(
                    "UPDATE w SET id = CASE WHEN id > {KEYS} THEN id - {KEYS} ELSE id + {KEYS} END, n = n + $1::int8 % 10
                     WHERE id IN ($2::int8, $2::int8 + {KEYS})
                       AND NOT EXISTS (SELECT FROM w o WHERE o.id IN ($2::int8, $2::int8 + {KEYS}) AND o.id <> w.id)"
                ),
            };
            src.execute(&sql, &[&value, &id]).await.unwrap();
        }
        src.batch_execute("COMMIT").await.unwrap();
        done += 1;
    }
    done
}

/// The source's rows in key order, large values by digest.
async fn source_rows(src: &Client) -> Vec<String> {
    src.query(
        "SELECT concat_ws('|', id, n, coalesce(note, '~'), coalesce(md5(doc), '~')) FROM w ORDER BY id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// ClickHouse's current rows, formatted like [`source_rows`].
async fn clickhouse_rows(dest: &TempChDatabase) -> Vec<String> {
    dest.client()
        .query(
            "SELECT concat(toString(id), '|', toString(n), '|', ifNull(note, '~'), '|', ifNull(lower(hex(MD5(doc))), '~'))
             FROM w FINAL WHERE _ferry_is_deleted = 0 ORDER BY id",
        )
        .fetch_all::<String>()
        .await
        .unwrap()
}

async fn mirror_state(client: &Client) -> (String, String) {
    let r = client
        .query_one(
            "SELECT state, coalesce(last_error, '') FROM mirror_status WHERE mirror = 'busy'",
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

fn logs_hint(dir: &Path) -> String {
    format!("daemon logs in {}", dir.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_workload_converges() {
    let pg = PgServer::from_env();
    let catalog_db = pg.temp_database("ferry_crash_cat").await;
    let source = pg.temp_database("ferry_crash_src").await;
    let ch = ChServer::from_env();
    let dest = ch.temp_database("ferry_crash_dst").await;
    let src = source.connect().await;
    src.batch_execute(&format!(
        "CREATE TABLE w (id int8 PRIMARY KEY, n int8 NOT NULL, note text, doc text);
         ALTER TABLE w ALTER COLUMN doc SET STORAGE EXTERNAL;
         INSERT INTO w SELECT g, g, 'note ' || g,
                CASE WHEN g % 3 = 0 THEN repeat(md5(g::text), 300) ELSE md5(g::text) END
           FROM generate_series(1, {KEYS} / 2) g;"
    ))
    .await
    .unwrap();

    let port = free_port();
    let dir: PathBuf = std::env::temp_dir().join(ferry_testkit::random_name("ferry-crash"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut daemon = start_daemon(port, &catalog_db.url(), &dir.join("run0.log"));
    let client = connect(port).await;
    client
        .batch_execute(&format!(
            "CREATE PEER src FROM POSTGRES WITH (host = '{}', port = {}, user = '{}', password = '{}', database = '{}');
             CREATE PEER dst FROM CLICKHOUSE WITH (host = '127.0.0.1', port = {}, database = '{}', disable_tls = true);
             CREATE MIRROR busy FROM src TO dst WITH TABLE MAPPING (public.w:w)
               WITH (do_initial_copy = true, sync_interval = 1, max_batch_size = 250);",
            pg.host, pg.port, pg.user, pg.password, source.name, ch.http_port, dest.name
        ))
        .await
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while mirror_state(&client).await.0 != "running" {
        let (state, error) = mirror_state(&client).await;
        assert_ne!(state, "failed", "{error}");
        assert!(Instant::now() < deadline, "the load did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(client);

    let catalog = catalog_db.connect().await;
    let work = tokio::spawn(workload(source.connect().await, 42));
    let mut rng = StdRng::seed_from_u64(7);
    let mut last = catalog_lsn(&catalog).await;
    let started = Instant::now();
    for kill in 1..=KILLS {
        // Kill only a daemon that is streaming: once it has applied something since the
        // last kill, at a moment of the seed's choosing.
        let deadline = Instant::now() + TIMEOUT;
        while catalog_lsn(&catalog).await <= last {
            assert!(
                Instant::now() < deadline,
                "kill {kill}: the mirror made no progress; {}",
                logs_hint(&dir)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..3000))).await;
        assert!(
            !work.is_finished(),
            "kill {kill}: the workload ended before the daemon was killed"
        );
        daemon.kill().unwrap();
        daemon.wait().unwrap();

        // The daemon confirmed to the source only what its catalog had recorded.
        let recorded = catalog_lsn(&catalog).await;
        let slot = released_slot_lsn(&src).await;
        println!(
            "kill {kill} at {:?}: catalog {recorded:X}, slot {slot:X}",
            started.elapsed()
        );
        assert!(
            slot <= recorded,
            "kill {kill}: the slot confirmed {slot:X}, beyond the catalog's {recorded:X}; {}",
            logs_hint(&dir)
        );
        assert!(
            recorded >= last,
            "kill {kill}: the catalog's position went back"
        );
        last = recorded;
        daemon = start_daemon(port, &catalog_db.url(), &dir.join(format!("run{kill}.log")));
    }
    let transactions = work.await.unwrap();
    let workload_took = started.elapsed();
    println!("workload: {transactions} transactions in {workload_took:?}");

    // Once the workload stops, ClickHouse reaches the source's state exactly.
    let client = connect(port).await;
    let want = source_rows(&src).await;
    let converging = Instant::now();
    let mut got = Vec::new();
    while converging.elapsed() < TIMEOUT {
        got = clickhouse_rows(&dest).await;
        if got == want {
            break;
        }
        let (state, error) = mirror_state(&client).await;
        assert_ne!(state, "failed", "{error}; {}", logs_hint(&dir));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if got != want {
        let missing: Vec<&String> = want.iter().filter(|r| !got.contains(r)).take(5).collect();
        let extra: Vec<&String> = got.iter().filter(|r| !want.contains(r)).take(5).collect();
        panic!(
            "ClickHouse did not converge: source {} rows, ClickHouse {}; \
             rows only at the source: {missing:?}; only in ClickHouse: {extra:?}; {}",
            want.len(),
            got.len(),
            logs_hint(&dir)
        );
    }
    println!(
        "converged {:?} after the workload ({} rows)",
        converging.elapsed(),
        want.len()
    );
    assert_eq!(mirror_state(&client).await.0, "running");
    let recorded = catalog_lsn(&catalog).await;
    let slot: String = src
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        lsn(&slot) <= recorded,
        "slot {slot} beyond the catalog's {recorded:X}"
    );

    let pid = daemon.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    daemon.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
