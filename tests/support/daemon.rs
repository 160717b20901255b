//! A Ferry daemon run in-process for a test, on a runtime of its own, with its own catalog
//! database.
//!
//! The daemon's runtime holds everything the daemon runs: its sessions, its mirrors' tasks and
//! every connection they opened. [`TestFerry::kill`] drops that runtime at once, which is what
//! `kill -9` does to the daemon as the servers see it: connections close mid-statement, open
//! transactions roll back, nothing gets to finish. [`TestFerry::restart`] starts a daemon on
//! the same catalog, which resumes every mirror as the `ferry` binary does at start.

use std::net::SocketAddr;

use ferry_catalog::{Catalog, SecretKey};
use ferry_server::{run, Settings, Shared, Shutdown};
use ferry_testkit::{PgServer, TempPgDatabase};
use tokio::sync::oneshot;
use tokio_postgres::{Client, NoTls};

pub const USER: &str = "ferry";
pub const PASSWORD: &str = "test-password";
pub const KEY: &str = "5f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";

/// A running daemon; stopped when dropped.
pub struct TestFerry {
    pub addr: SocketAddr,
    /// The metrics listener (`/metrics`, `/healthz`, `/readyz`), as `--metrics-listen` serves it.
    pub metrics_addr: SocketAddr,
    pub catalog_db: TempPgDatabase,
    shutdown: Shutdown,
    runtime: Option<tokio::runtime::Runtime>,
    stopped: Option<oneshot::Receiver<()>>,
}

impl TestFerry {
    /// Starts a daemon on a free port with a fresh catalog database. With `FERRY_TEST_LOG`
    /// set (a filter such as `info,ferry_flow=debug`), the daemon's log goes to the test's
    /// output.
    pub async fn start() -> TestFerry {
        TestFerry::start_with(Settings::new(USER, PASSWORD)).await
    }

    /// [`TestFerry::start`] with the front door's settings (limits, TLS) chosen.
    pub async fn start_with(settings: Settings) -> TestFerry {
        let catalog_db = PgServer::from_env().temp_database("ferry_catalog").await;
        TestFerry::start_on(catalog_db, false, settings).await
    }

    /// Starts a daemon on an existing catalog; `resume` picks its mirrors up.
    async fn start_on(catalog_db: TempPgDatabase, resume: bool, settings: Settings) -> TestFerry {
        if let Ok(filter) = std::env::var("FERRY_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("test-ferry")
            .build()
            .expect("daemon runtime");
        let url = catalog_db.url();
        let shutdown = Shutdown::default();
        let waiter = shutdown.clone();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stopped_tx, stopped_rx) = oneshot::channel();
        runtime.spawn(async move {
            let key = SecretKey::from_hex(KEY).expect("test key");
            let (catalog, _) = Catalog::open(&url, key).await.expect("open catalog");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let metrics = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind metrics");
            let metrics_addr = metrics.local_addr().expect("metrics addr");
            let shared = Shared::with_settings(catalog, settings);
            tokio::spawn(ferry_server::metrics::serve(
                metrics,
                ferry_server::metrics::Endpoints {
                    metrics: shared.metrics.clone(),
                    catalog: shared.catalog.clone(),
                    engine: shared.engine.clone(),
                },
                waiter.subscribe(),
            ));
            if resume {
                shared.engine.resume_all().await.expect("resume mirrors");
            }
            let engine = shared.engine.clone();
            let _ = ready_tx.send((addr, metrics_addr));
            let served = run(listener, shared, async move { waiter.wait().await }).await;
            engine.shutdown().await;
            served.expect("server result");
            let _ = stopped_tx.send(());
        });
        let (addr, metrics_addr) = ready_rx.await.expect("the daemon did not start");
        TestFerry {
            addr,
            metrics_addr,
            catalog_db,
            shutdown,
            runtime: Some(runtime),
            stopped: Some(stopped_rx),
        }
    }

    /// Connection settings for a client.
    pub fn conn_str(&self, user: &str, password: &str) -> String {
        format!(
            "host={} port={} user={user} password={password} dbname=ferry",
            self.addr.ip(),
            self.addr.port()
        )
    }

    /// Connects as the configured user.
    pub async fn connect(&self) -> Client {
        self.try_connect(USER, PASSWORD)
            .await
            .expect("connect to ferry")
    }

    pub async fn try_connect(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::connect(&self.conn_str(user, password), NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// The body of `GET /metrics`, as Prometheus scrapes it.
    pub async fn metrics(&self) -> String {
        metrics_text(self.metrics_addr).await
    }

    /// A direct connection to the catalog database, to check what Ferry stored.
    pub async fn catalog(&self) -> Client {
        self.catalog_db.connect().await
    }

    /// Stops the daemon gracefully and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.await;
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    /// Ends the daemon as `kill -9` would: everything it runs stops where it is. Returns its
    /// catalog, for [`TestFerry::restart`].
    pub fn kill(mut self) -> TempPgDatabase {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        let catalog = std::mem::replace(
            &mut self.catalog_db,
            TempPgDatabase {
                server: PgServer::from_env(),
                name: String::new(),
            },
        );
        // Nothing is left to stop, and the placeholder must not be dropped as a database.
        std::mem::forget(self);
        catalog
    }

    /// A daemon on the catalog of one that was killed, resuming its mirrors.
    pub async fn restart(catalog_db: TempPgDatabase) -> TestFerry {
        TestFerry::start_on(catalog_db, true, Settings::new(USER, PASSWORD)).await
    }
}

impl Drop for TestFerry {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The body of `GET /metrics` from the listener at `addr`; the response must be a 200.
pub async fn metrics_text(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics listener");
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: ferry\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}
