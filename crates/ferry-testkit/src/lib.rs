//! Test support for Ferry's tests against the real servers.
//!
//! `scripts/services start` runs a PostgreSQL and a ClickHouse on this machine and
//! `scripts/services env` prints where; `scripts/test` exports that before `cargo test`.
//! The defaults below match the scripts' defaults, so `cargo test` after
//! `scripts/services start` works too. Every test works in a database of its own with a
//! random name, dropped when the guard goes out of scope.
//!
//! A test that stops or restarts a server must not do it to the shared ones: [`private`]
//! runs a ClickHouse or a PostgreSQL of its own.
#![allow(clippy::print_stdout)]

use std::env;

use rand::Rng;
use tokio_postgres::{Client, NoTls};

pub mod private;
pub mod raw;
pub mod tls;

/// The random number generators, for tests that drive a workload from a fixed seed.
pub use rand;

fn var(name: &str, default: &str) -> String {
    env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Where the test PostgreSQL listens and how to log in as its superuser.
#[derive(Debug, Clone)]
pub struct PgServer {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

impl PgServer {
    /// From `FERRY_TEST_PG_*`, defaulting to `scripts/services`' settings.
    pub fn from_env() -> PgServer {
        PgServer {
            host: var("FERRY_TEST_PG_HOST", "127.0.0.1"),
            port: var("FERRY_TEST_PG_PORT", "54329")
                .parse()
                .expect("FERRY_TEST_PG_PORT is a port"),
            user: var("FERRY_TEST_PG_USER", "postgres"),
            password: var("FERRY_TEST_PG_PASSWORD", "ferry"),
        }
    }

    /// A key/value connection string for `database`.
    pub fn conn_str(&self, database: &str) -> String {
        format!(
            "host={} port={} user={} password={} dbname={}",
            self.host, self.port, self.user, self.password, database
        )
    }

    /// A `postgres://` URL for `database`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{}:{}@{}:{}/{}",
            self.user, self.password, self.host, self.port, database
        )
    }

    /// Connects to `database`; panics with a pointer to the scripts when the server is down.
    pub async fn connect(&self, database: &str) -> Client {
        let (client, conn) = tokio_postgres::connect(&self.conn_str(database), NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot reach the test PostgreSQL at {}:{} ({e}); run scripts/services start",
                    self.host, self.port
                )
            });
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// Creates a database with a random name; it is dropped (with its connections) on drop.
    pub async fn temp_database(&self, prefix: &str) -> TempPgDatabase {
        let name = random_name(prefix);
        let admin = self.connect("postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create test database");
        TempPgDatabase {
            server: self.clone(),
            name,
        }
    }
}

/// A throwaway PostgreSQL database.
#[derive(Debug)]
pub struct TempPgDatabase {
    pub server: PgServer,
    pub name: String,
}

impl TempPgDatabase {
    pub async fn connect(&self) -> Client {
        self.server.connect(&self.name).await
    }

    pub fn url(&self) -> String {
        self.server.url(&self.name)
    }
}

impl Drop for TempPgDatabase {
    fn drop(&mut self) {
        let server = self.server.clone();
        let name = self.name.clone();
        // Drop may run outside a runtime or inside one that is shutting down: use a thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(rt) = rt {
                rt.block_on(async move {
                    if let Ok((client, conn)) = tokio_postgres::connect(&server.conn_str("postgres"), NoTls).await {
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                        // A daemon of the test may still stream from a slot of this database:
                        // end its walsender, then drop the slots once they are free (a slot
                        // keeps a database from being dropped), then the database. Separate
                        // statements: DROP DATABASE cannot run in a query string's transaction.
                        let _ = client
                            .batch_execute(&format!(
                                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                                 WHERE database = '{name}' AND active_pid IS NOT NULL"
                            ))
                            .await;
                        for _ in 0..50 {
                            let left = client
                                .query_one(
                                    &format!(
                                        "SELECT count(pg_drop_replication_slot(slot_name)) FILTER (WHERE NOT active),
                                                count(*) FILTER (WHERE active)
                                         FROM pg_replication_slots WHERE database = '{name}'"
                                    ),
                                    &[],
                                )
                                .await
                                .map(|r| r.get::<_, i64>(1))
                                .unwrap_or(0);
                            if left == 0 {
                                break;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                        let _ = client
                            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .await;
                    }
                })
            }
        })
        .join();
    }
}

/// Where the test ClickHouse listens.
#[derive(Debug, Clone)]
pub struct ChServer {
    pub host: String,
    pub http_port: u16,
}

impl ChServer {
    /// From `FERRY_TEST_CH_HTTP_PORT`, defaulting to `scripts/services`' settings.
    pub fn from_env() -> ChServer {
        ChServer {
            host: "127.0.0.1".into(),
            http_port: var("FERRY_TEST_CH_HTTP_PORT", "18123")
                .parse()
                .expect("FERRY_TEST_CH_HTTP_PORT is a port"),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}:{}", self.host, self.http_port)
    }

    /// A client with no database selected.
    pub fn client(&self) -> clickhouse::Client {
        clickhouse::Client::default().with_url(self.url())
    }

    /// Creates a database with a random name; dropped on drop.
    pub async fn temp_database(&self, prefix: &str) -> TempChDatabase {
        let name = random_name(prefix);
        self.client()
            .query(&format!("CREATE DATABASE `{name}`"))
            .execute()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot reach the test ClickHouse at {} ({e}); run scripts/services start",
                    self.url()
                )
            });
        TempChDatabase {
            server: self.clone(),
            name,
        }
    }
}

/// A throwaway ClickHouse database.
#[derive(Debug)]
pub struct TempChDatabase {
    pub server: ChServer,
    pub name: String,
}

impl TempChDatabase {
    /// A client whose default database is this one.
    pub fn client(&self) -> clickhouse::Client {
        self.server.client().with_database(&self.name)
    }
}

impl Drop for TempChDatabase {
    fn drop(&mut self) {
        let client = self.server.client();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async move {
                    let _ = client
                        .query(&format!("DROP DATABASE IF EXISTS `{name}`"))
                        .execute()
                        .await;
                });
            }
        })
        .join();
    }
}

/// `prefix_` followed by 12 random lowercase letters and digits.
pub fn random_name(prefix: &str) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let tail: String = (0..12)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect();
    format!("{prefix}_{tail}")
}
