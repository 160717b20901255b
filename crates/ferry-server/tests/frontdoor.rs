//! The daemon as a process against hostile input and a stop while busy: what its log, its
//! metrics and its exit say.
#![allow(clippy::print_stdout)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Daemon, PASSWORD};
use ferry_testkit::rand::rngs::StdRng;
use ferry_testkit::rand::{Rng, RngCore, SeedableRng};
use ferry_testkit::raw::{self, frame, RawClient};
use ferry_testkit::PgServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Messages the fuzz test sends, and the most time it may take.
const MESSAGES: usize = 3000;
const BUDGET: Duration = Duration::from_secs(20);
/// How long to wait for an answer that may not come (a truncated message is not answered).
const QUIET: Duration = Duration::from_millis(10);
/// Clients sending at once.
const WORKERS: u64 = 4;

/// The value of a metric, from `/metrics`.
async fn metric(port: u16, name: &str) -> Option<u64> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let mut b = vec![0u8; rng.gen_range(0..=max)];
    rng.fill_bytes(&mut b);
    b
}

/// A length that is wrong in an interesting way, for a body of `len` bytes.
fn bad_length(rng: &mut StdRng, len: usize) -> i32 {
    match rng.gen_range(0..6) {
        0 => -5,
        1 => -1,
        2 => i32::MAX,
        3 => rng.gen_range(0..4),
        4 => len as i32 + 4 + rng.gen_range(1..100),
        _ => rng.gen(),
    }
}

/// One malformed, truncated or oversized exchange before login; returns messages sent.
async fn before_login(rng: &mut StdRng, daemon: &Daemon) -> usize {
    let mut c = RawClient::connect(daemon.addr()).await;
    let startup = raw::startup(&[("user", "ferry"), ("database", "ferry")]);
    let sent = match rng.gen_range(0..7) {
        0 => {
            c.send(&random_bytes(rng, 40)).await;
            1
        }
        1 => {
            let mut b = bad_length(rng, 8).to_be_bytes().to_vec();
            b.extend(rng.gen::<u32>().to_be_bytes());
            b.extend(random_bytes(rng, 16));
            c.send(&b).await;
            1
        }
        2 => {
            let mut ssl = 8i32.to_be_bytes().to_vec();
            ssl.extend(80_877_103i32.to_be_bytes());
            ssl.extend(random_bytes(rng, 40));
            c.send(&ssl).await;
            2
        }
        3 => {
            c.send(&raw::cancel_request(rng.gen(), rng.gen())).await;
            1
        }
        _ => {
            c.send(&startup).await;
            let _ = c.read(QUIET * 10).await;
            let body = match rng.gen_range(0..4) {
                0 => random_bytes(rng, 64),
                1 => Vec::new(),
                _ => {
                    let data = random_bytes(rng, 24);
                    let mut b = b"SCRAM-SHA-256\0".to_vec();
                    b.extend(bad_length(rng, data.len()).to_be_bytes());
                    b.extend(data);
                    b
                }
            };
            let mut message = vec![b'p'];
            let length = if rng.gen_bool(0.3) {
                bad_length(rng, body.len())
            } else {
                body.len() as i32 + 4
            };
            message.extend(length.to_be_bytes());
            message.extend(&body);
            c.send(&message).await;
            2
        }
    };
    let _ = c.until_ready(QUIET).await;
    sent
}

/// One message after login; whether the session may go on.
async fn after_login(rng: &mut StdRng, c: &mut RawClient) -> bool {
    let kind = *b"QPBDCESHFdcfpz\xff"
        .get(rng.gen_range(0..15))
        .unwrap_or(&b'Q');
    let body = match (kind, rng.gen_range(0..4)) {
        (b'Q', 0) => b"SELECT 1\0".to_vec(),
        (b'Q', 1) => b"SELECT '\xe2\x28\xa1'\0".to_vec(),
        (b'B', 0 | 1) => {
            let mut b = b"\0\0".to_vec();
            b.extend(rng.gen_range(-2i16..3).to_be_bytes());
            b.extend([0u8, 0]);
            b.extend(rng.gen::<i16>().to_be_bytes());
            b.extend(bad_length(rng, 4).to_be_bytes());
            b.extend(random_bytes(rng, 8));
            b
        }
        (b'P', 0) => {
            let mut b = b"\0SELECT $1\0".to_vec();
            b.extend(rng.gen::<i16>().to_be_bytes());
            b.extend(random_bytes(rng, 16));
            b
        }
        _ => random_bytes(rng, 48),
    };
    let mut message = vec![kind];
    match rng.gen_range(0..10) {
        // A length that lies: the rest never comes, or more than is allowed is claimed.
        0 => {
            message.extend(bad_length(rng, body.len()).to_be_bytes());
            message.extend(&body);
            c.send(&message).await;
            let _ = c.until_ready(QUIET).await;
            return false;
        }
        // A statement over the limit, sent in full: refused, and the session goes on.
        1 if kind == b'Q' && rng.gen_bool(0.05) => {
            message = raw::query(&vec![b' '; (1 << 20) + 1]);
        }
        _ => {
            message.extend((body.len() as i32 + 4).to_be_bytes());
            message.extend(&body);
        }
    }
    c.send(&message).await;
    if !matches!(kind, b'Q' | b'F') {
        c.send(&frame(b'S', b"")).await;
    }
    let answer = c.until_ready(QUIET).await;
    answer.last().is_some_and(|m| m.0 == b'Z')
}

#[tokio::test]
async fn hostile_bytes_do_not_hurt_the_daemon() {
    let db = PgServer::from_env().temp_database("ferry_fuzz").await;
    let dir = std::env::temp_dir().join(ferry_testkit::random_name("ferry-fuzz"));
    std::fs::create_dir_all(&dir).unwrap();
    let metrics_port = common::free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let daemon = Daemon::start(
        &db.url(),
        &dir.join("ferry.log"),
        &[
            "--metrics-listen",
            &metrics,
            "--auth-failure-limit",
            "1000000",
        ],
    );
    daemon
        .connect()
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();

    let seed: u64 = std::env::var("FERRY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| ferry_testkit::rand::thread_rng().gen());
    println!("FERRY_FUZZ_SEED={seed}");
    let daemon = std::sync::Arc::new(daemon);
    let sent = std::sync::Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let (daemon, sent) = (daemon.clone(), sent.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed.wrapping_add(worker));
                let mut session: Option<RawClient> = None;
                while sent.load(Ordering::Relaxed) < MESSAGES && started.elapsed() < BUDGET {
                    if rng.gen_bool(0.3) {
                        let n = before_login(&mut rng, &daemon).await;
                        sent.fetch_add(n, Ordering::Relaxed);
                        continue;
                    }
                    let mut c = match session.take() {
                        Some(c) => c,
                        None => RawClient::login(daemon.addr(), "ferry", PASSWORD)
                            .await
                            .unwrap_or_else(|e| panic!("login: {e:?}\n{}", daemon.log_text())),
                    };
                    sent.fetch_add(1, Ordering::Relaxed);
                    if after_login(&mut rng, &mut c).await {
                        session = Some(c);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let sent = sent.load(Ordering::Relaxed);
    println!("sent {sent} messages in {:?}", started.elapsed());
    assert!(sent >= MESSAGES, "only {sent} messages in {BUDGET:?}");
    let Ok(daemon) = std::sync::Arc::try_unwrap(daemon) else {
        panic!("a worker kept the daemon")
    };

    // Every connection closed is counted out, and the daemon serves as before.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = metric(metrics_port, "ferry_connections_active").await;
        if open == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open:?} connections still counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let violations = metric(metrics_port, "ferry_protocol_violations_total").await;
    assert!(violations.is_some_and(|n| n > 0), "{violations:?}");
    let client = daemon.connect().await;
    client
        .simple_query("SELECT count(*) FROM peers")
        .await
        .unwrap();
    drop(client);

    let log = daemon.log_text();
    assert!(
        !log.contains("panick") && !log.contains("backtrace"),
        "the daemon panicked (seed {seed}):\n{log}"
    );
    daemon.terminate();
    let mut daemon = daemon;
    assert!(daemon.child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn sigterm_stops_a_busy_daemon_within_its_grace_period() {
    let db = PgServer::from_env().temp_database("ferry_stop").await;
    let dir = std::env::temp_dir().join(ferry_testkit::random_name("ferry-stop"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut daemon = Daemon::start(
        &db.url(),
        &dir.join("ferry.log"),
        &["--shutdown-grace", "2s", "--log-format", "json"],
    );
    let busy = daemon.connect().await;
    let idle = daemon.connect().await;
    let query = tokio::spawn(async move { busy.simple_query("SELECT pg_sleep(60)").await });
    let catalog = db.connect().await;
    let sleeping = || async {
        catalog
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while sleeping().await == 0 {
        assert!(Instant::now() < deadline, "the query did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let started = Instant::now();
    daemon.terminate();
    let status = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "still running after the grace period:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    let e = query.await.unwrap().unwrap_err();
    assert!(e.code().is_none_or(|c| c.code() == "57P01"), "{e:?}");
    assert!(idle.simple_query("SELECT 1").await.is_err());
    // Its query does not outlive it on the catalog.
    let deadline = Instant::now() + Duration::from_secs(3);
    while sleeping().await > 0 {
        assert!(
            Instant::now() < deadline,
            "the client's query outlived the daemon"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = daemon.log_text();
    assert!(
        log.lines()
            .last()
            .unwrap_or_default()
            .contains("\"stopped\""),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
