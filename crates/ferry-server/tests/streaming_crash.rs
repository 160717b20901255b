//! A daemon killed with SIGKILL, again and again, while a mirror streams a busy table, ends
//! with ClickHouse holding exactly the source's rows; and it never confirmed to the source a
//! change that ClickHouse did not have.
//!
//! A restart resumes at the catalog's position, and the source at the slot's when that is
//! further. A batch is confirmed to the source only after the catalog recorded it; an idle
//! position (a keepalive's, with nothing pending) is confirmed at once and recorded every few
//! seconds. So the slot may be ahead of the catalog, but every change that committed between
//! the two must already be in ClickHouse, or a restart would skip it. After each kill the test
//! lists those changes with a slot of its own (`test_decoding`, an independent decoder) and
//! checks that ClickHouse holds each changed key at that change's version (its LSN) or a
//! later one.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ferry_testkit::private::free_port;
use ferry_testkit::rand::rngs::StdRng;
use ferry_testkit::rand::{Rng, SeedableRng};
use ferry_testkit::{ChServer, PgServer, TempChDatabase};
use tokio_postgres::Client;

use common::connect;

mod common;

/// Keys the workload touches (a key change moves a row to `id + KEYS` and back).
const KEYS: i64 = 3000;
/// The workload stops after this many transactions or this long, whichever comes first.
const MAX_TRANSACTIONS: u32 = 20_000;
const WORKLOAD_FOR: Duration = Duration::from_secs(20);
const KILLS: usize = 3;
const TIMEOUT: Duration = Duration::from_secs(120);

/// A `ferry` process, killed when dropped (so a failing test leaves none behind).
struct Daemon(Child);

impl Daemon {
    fn start(port: u16, catalog_url: &str, log: &Path) -> Daemon {
        Daemon(common::spawn(port, catalog_url, log, &[]))
    }

    /// SIGKILL, and waits for the process to be gone.
    fn kill_9(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }

    /// SIGTERM: a graceful stop, which must succeed.
    fn stop(mut self) {
        let pid = self.0.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.0.wait().unwrap();
        assert!(status.success(), "the daemon stopped with {status}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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

/// The batches the mirror has recorded.
async fn batches(catalog: &Client) -> i64 {
    catalog
        .query_one("SELECT count(*) FROM ferry.cdc_batch", &[])
        .await
        .unwrap()
        .get(0)
}

/// `X/Y`, as PostgreSQL prints an LSN.
fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// One change of `w`: its LSN (the version Ferry writes it with) and the keys it touches
/// (two for a key change).
#[derive(Debug)]
struct Change {
    lsn: u64,
    keys: Vec<i64>,
}

/// The test's own view of the changes, from a `test_decoding` slot made before the workload.
struct Observer {
    slot: String,
    /// Where the slot has been advanced to.
    at: u64,
}

impl Observer {
    async fn create(src: &Client) -> Observer {
        let slot = ferry_testkit::random_name("observer");
        let at: String = src
            .query_one(
                "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'test_decoding')",
                &[&slot],
            )
            .await
            .unwrap()
            .get(0);
        Observer { slot, at: lsn(&at) }
    }

    /// The changes of transactions that committed in `(after, upto]`.
    async fn committed_between(&mut self, src: &Client, after: u64, upto: u64) -> Vec<Change> {
        // Decoding starts at the slot's position and leaves out transactions that committed
        // before it; `after` only grows from one call to the next.
        if after > self.at {
            src.execute(
                "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
                &[&self.slot, &lsn_text(after)],
            )
            .await
            .unwrap();
            self.at = after;
        }
        let rows = src
            .query(
                "SELECT lsn::text, data FROM pg_logical_slot_peek_changes($1, $2::text::pg_lsn, NULL)",
                &[&self.slot, &lsn_text(upto)],
            )
            .await
            .unwrap();
        let mut changes = Vec::new();
        let mut transaction = Vec::new();
        for r in &rows {
            let at = lsn(&r.get::<_, String>(0));
            let data: String = r.get(1);
            if data.starts_with("BEGIN") {
                transaction.clear();
            } else if data.starts_with("COMMIT") {
                // The row of a COMMIT carries the end of the commit record, like the catalog.
                if at > after && at <= upto {
                    changes.append(&mut transaction);
                }
            } else if data.starts_with("table public.w:") {
                let keys = data
                    .match_indices(" id[bigint]:")
                    .map(|(i, m)| {
                        let rest = &data[i + m.len()..];
                        let end = rest.find(' ').unwrap_or(rest.len());
                        rest[..end].parse().unwrap()
                    })
                    .collect();
                transaction.push(Change { lsn: at, keys });
            }
        }
        changes
    }
}

/// Of `changes`, those ClickHouse has neither at their version nor at a later one (rows of
/// one batch collapse to the latest of each key as they are inserted).
async fn missing_in_clickhouse<'a>(
    dest: &TempChDatabase,
    changes: &'a [Change],
) -> Vec<&'a Change> {
    let mut keys: Vec<i64> = changes
        .iter()
        .flat_map(|c| c.keys.iter().copied())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.is_empty() {
        return Vec::new();
    }
    let list: Vec<String> = keys.iter().map(i64::to_string).collect();
    let newest: std::collections::HashMap<i64, u64> = dest
        .client()
        .query(&format!(
            "SELECT id, max(_ferry_version) FROM w WHERE id IN ({}) GROUP BY id",
            list.join(", ")
        ))
        .fetch_all::<(i64, u64)>()
        .await
        .unwrap()
        .into_iter()
        .collect();
    changes
        .iter()
        .filter(|c| {
            c.keys
                .iter()
                .any(|k| newest.get(k).is_none_or(|&v| v < c.lsn))
        })
        .collect()
}

/// Checks that ClickHouse has every change that committed between the catalog's position and
/// the slot's, when the slot is ahead.
async fn assert_skipped_changes_applied(
    src: &Client,
    dest: &TempChDatabase,
    observer: &mut Observer,
    recorded: u64,
    slot: u64,
    context: &str,
) {
    if slot <= recorded {
        return;
    }
    let changes = observer.committed_between(src, recorded, slot).await;
    let missing = missing_in_clickhouse(dest, &changes).await;
    println!(
        "{context}: the slot is {} bytes ahead of the catalog, past {} changes, {} of them not in ClickHouse",
        slot - recorded,
        changes.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{context}: the slot confirmed {}, beyond the catalog's {}, past changes ClickHouse does not have: {missing:?}",
        lsn_text(slot),
        lsn_text(recorded)
    );
}

/// The slot's `confirmed_flush_lsn`, once no walsender holds it any more (so that every
/// status update the killed daemon sent has been taken in).
async fn released_slot_lsn(src: &Client) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = src
            .query_one(
                "SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots
                 WHERE database = current_database() AND plugin = 'pgoutput'",
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
    let mut daemon = Daemon::start(port, &catalog_db.url(), &dir.join("run0.log"));
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
    // Every row written stays (but for those an insert collapses itself), so that each
    // change's version can be looked up.
    dest.client()
        .query("SYSTEM STOP MERGES w")
        .execute()
        .await
        .unwrap();

    let catalog = catalog_db.connect().await;
    let mut observer = Observer::create(&src).await;
    let work = tokio::spawn(workload(source.connect().await, 42));
    let mut rng = StdRng::seed_from_u64(7);
    let mut last = catalog_lsn(&catalog).await;
    let started = Instant::now();
    for kill in 1..=KILLS {
        // Kill only a daemon that is streaming (it has applied something since the last
        // kill), at a moment of the seed's choosing.
        let deadline = Instant::now() + TIMEOUT;
        while catalog_lsn(&catalog).await <= last || batches(&catalog).await == 0 {
            assert!(
                Instant::now() < deadline,
                "kill {kill}: the mirror made no progress; {}",
                logs_hint(&dir)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Spread over the workload: kill k about k × 5 s into it.
        let at = started
            + Duration::from_secs(5 * kill as u64)
            + Duration::from_millis(rng.gen_range(0..2000));
        tokio::time::sleep_until(at.max(Instant::now() + Duration::from_millis(300)).into()).await;
        assert!(
            !work.is_finished(),
            "kill {kill}: the workload ended before the daemon was killed"
        );
        daemon.kill_9();

        // Whatever the source will no longer send, ClickHouse has.
        let recorded = catalog_lsn(&catalog).await;
        let slot = released_slot_lsn(&src).await;
        println!(
            "kill {kill} at {:?}: catalog {}, slot {}",
            started.elapsed(),
            lsn_text(recorded),
            lsn_text(slot)
        );
        if kill == 1 {
            // The check sees changes where there are some, and those the catalog recorded are
            // in ClickHouse.
            let recorded_changes = observer.committed_between(&src, last, recorded).await;
            let missing = missing_in_clickhouse(&dest, &recorded_changes).await;
            println!(
                "kill 1: {} changes recorded since the workload began",
                recorded_changes.len()
            );
            assert!(!recorded_changes.is_empty());
            assert!(
                missing.is_empty(),
                "changes the catalog recorded are not in ClickHouse: {missing:?}"
            );
        }
        assert_skipped_changes_applied(
            &src,
            &dest,
            &mut observer,
            recorded,
            slot,
            &format!("kill {kill}"),
        )
        .await;
        assert!(
            recorded >= last,
            "kill {kill}: the catalog's position went back"
        );
        last = recorded;
        daemon = Daemon::start(port, &catalog_db.url(), &dir.join(format!("run{kill}.log")));
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
    // The same with the daemon running: the slot first, as it never moves ahead of ClickHouse.
    let slot: String = src
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE database = current_database() AND plugin = 'pgoutput'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let recorded = catalog_lsn(&catalog).await;
    assert_skipped_changes_applied(
        &src,
        &dest,
        &mut observer,
        recorded,
        lsn(&slot),
        "at the end",
    )
    .await;

    daemon.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
