//! One daemon per catalog, health checks, and what `--help` says: the `ferry` binary as a
//! process.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, KEY, PASSWORD};
use ferry_testkit::private::free_port;
use ferry_testkit::PgServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` on the metrics listener: the status code and the body.
async fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("metrics listener");
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_owned())
}

/// Waits until the metrics listener answers.
async fn wait_metrics(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the metrics listener did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_second_daemon_on_the_same_catalog_refuses_to_start() {
    let db = PgServer::from_env().temp_database("ferry_lease").await;
    let dir = std::env::temp_dir();
    let first = Daemon::start(&db.url(), &dir.join(format!("{}_a.log", db.name)), &[]);
    let client = first.connect().await;

    // A second one waits --lease-wait for the lease, then gives up naming the holder.
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["server", "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--catalog-url", &db.url(), "--lease-wait", "2s"])
        .env("FERRY_PASSWORD", PASSWORD)
        .env("FERRY_SECRET_KEY", KEY)
        .env_remove("FERRY_SECRET_KEY_FILE")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() >= Duration::from_secs(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another Ferry daemon is running on this catalog")
            && err.contains(&format!("pid {}", first.child.id()))
            && err.contains("Only one daemon may run per catalog"),
        "{err}"
    );
    // The first one goes on serving.
    client.simple_query("SELECT 1").await.unwrap();

    // Killed, it lets the lease go with its session: the next one starts.
    let mut first = first;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let second = Daemon::start(&db.url(), &dir.join(format!("{}_b.log", db.name)), &[]);
    second
        .connect()
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
    assert!(
        second.log_text().contains("holding the catalog's lease"),
        "{}",
        second.log_text()
    );
}

#[tokio::test]
async fn health_and_readiness_on_the_metrics_listener() {
    let db = PgServer::from_env().temp_database("ferry_health").await;
    let metrics = free_port();
    let log = std::env::temp_dir().join(format!("{}.log", db.name));
    let daemon = Daemon::start(
        &db.url(),
        &log,
        &["--metrics-listen", &format!("127.0.0.1:{metrics}")],
    );
    daemon.connect().await;
    wait_metrics(metrics).await;
    assert_eq!(get(metrics, "/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(get(metrics, "/readyz").await, (200, "ready\n".to_owned()));
    assert_eq!(get(metrics, "/nope").await.0, 404);

    // A mirror the catalog says runs, with no task in this daemon: not ready, and why.
    let catalog = db.connect().await;
    catalog
        .batch_execute(
            "INSERT INTO ferry.peers (name, type, options) VALUES
                 ('s', 'postgres', '{}'), ('d', 'clickhouse', '{}');
             INSERT INTO ferry.mirrors (name, source_peer, destination_peer, spec, state)
             SELECT 'ghost', s.id, d.id, '{}', 'running'
             FROM ferry.peers s, ferry.peers d WHERE s.name = 's' AND d.name = 'd';",
        )
        .await
        .unwrap();
    let (code, body) = get(metrics, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("mirror \"ghost\" should run but has no task"),
        "{body}"
    );
    assert_eq!(get(metrics, "/healthz").await.0, 200);
    // Its figures are in /metrics too, labelled with its state.
    let (code, body) = get(metrics, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("ferry_mirror_up{mirror=\"ghost\",state=\"running\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE ferry_mirror_lag_seconds gauge"),
        "{body}"
    );
}

#[tokio::test]
async fn help_names_the_environment_and_the_password_can_come_from_a_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["server", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for name in [
        "FERRY_SECRET_KEY",
        "FERRY_LOG",
        "FERRY_PASSWORD_FILE",
        "--lease-wait",
        "/readyz",
    ] {
        assert!(help.contains(name), "--help does not name {name}:\n{help}");
    }

    let db = PgServer::from_env().temp_database("ferry_pwfile").await;
    let file = std::env::temp_dir().join(format!("{}.pw", db.name));
    std::fs::write(&file, "from-a-file\n").unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["server", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--catalog-url", &db.url(), "--password-file"])
        .arg(&file)
        .env("FERRY_SECRET_KEY", KEY)
        .env_remove("FERRY_PASSWORD")
        .env_remove("FERRY_SECRET_KEY_FILE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let conn = format!("host=127.0.0.1 port={port} user=ferry password=from-a-file dbname=ferry");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio_postgres::connect(&conn, tokio_postgres::NoTls).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no login with the file's password: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&file);
}
