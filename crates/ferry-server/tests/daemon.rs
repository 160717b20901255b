//! The `ferry` binary: start-up checks, serving, and a graceful stop on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_testkit::PgServer;

const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn ferry() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.env_remove("FERRY_SECRET_KEY")
        .env_remove("FERRY_SECRET_KEY_FILE");
    c
}

#[tokio::test]
async fn refuses_to_start_without_a_secret_key() {
    let db = PgServer::from_env().temp_database("ferry_daemon").await;
    let out = ferry()
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--password",
            "pw",
            "--catalog-url",
            &db.url(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("FERRY_SECRET_KEY"), "{err}");
    // Nothing was written: the catalog was not even opened.
    let client = db.connect().await;
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'ferry'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn serves_then_stops_on_sigterm() {
    let db = PgServer::from_env().temp_database("ferry_daemon").await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = ferry()
        .args([
            "server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--catalog-url",
            &db.url(),
        ])
        .args(["--user", "u", "--log-format", "json"])
        .env("FERRY_PASSWORD", "pw")
        .env("FERRY_SECRET_KEY", KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let conn = format!("host=127.0.0.1 port={port} user=u password=pw dbname=ferry");
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        match tokio_postgres::connect(&conn, tokio_postgres::NoTls).await {
            Ok((client, c)) => {
                tokio::spawn(c);
                break client;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("daemon did not come up: {e}"),
        }
    };
    let rows = client
        .simple_query("SELECT count(*) FROM peers")
        .await
        .unwrap();
    assert!(!rows.is_empty());
    drop(client);

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit status {:?}", out.status);
    let log = String::from_utf8_lossy(&out.stderr);
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with('{') && last.contains("\"stopped\""),
        "{log}"
    );
}
