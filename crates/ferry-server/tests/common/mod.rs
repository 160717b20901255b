//! The `ferry` binary as a process, for the tests that need a real one. Each test binary
//! uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

pub const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
pub const PASSWORD: &str = "pw";

pub use ferry_testkit::private::free_port;

/// Starts `ferry server` on `port`, logging to `log` (the engine at debug level), with
/// `args` added to the required ones.
pub fn spawn(port: u16, catalog_url: &str, log: &Path, args: &[&str]) -> Child {
    let file = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--catalog-url",
            catalog_url,
        ])
        .args(args)
        .env("FERRY_PASSWORD", PASSWORD)
        .env("FERRY_SECRET_KEY", KEY)
        .env("FERRY_LOG", "info,ferry_flow=debug")
        .env_remove("FERRY_SECRET_KEY_FILE")
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap()
}

/// Logs in to the daemon on `port` as `ferry`, waiting up to 30 s for it to come up.
pub async fn connect(port: u16) -> Client {
    let conn = format!("host=127.0.0.1 port={port} user=ferry password={PASSWORD} dbname=ferry");
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

/// A `ferry server` process logging to a file; killed when dropped, so a failing test
/// leaves none behind.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts the daemon on a free port with `args` added to the required ones.
    pub fn start(catalog_url: &str, log: &Path, args: &[&str]) -> Daemon {
        let port = free_port();
        Daemon {
            child: spawn(port, catalog_url, log, args),
            port,
            log: log.to_owned(),
        }
    }

    /// Logs in, waiting for the daemon to come up.
    pub async fn connect(&self) -> Client {
        connect(self.port).await
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
