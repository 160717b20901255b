//! A Ferry daemon run in-process for a test, with its own catalog database.

use std::net::SocketAddr;

use ferry_catalog::{Catalog, SecretKey};
use ferry_core::ident::{ch_ident, ch_qualified, pg_ident};
use ferry_core::{ColumnSchema, Value};
use ferry_postgres::connect::connect;
use ferry_postgres::source::describe_table;
use ferry_postgres::types::decode_text;
use ferry_server::{run, Shared, Shutdown};
use ferry_testkit::{ChServer as Ch, PgServer, TempChDatabase, TempPgDatabase};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

pub use ferry_testkit::{ChServer, PgServer as Pg};

pub const USER: &str = "ferry";
pub const PASSWORD: &str = "test-password";
pub const KEY: &str = "5f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";

/// A running daemon; stopped when dropped.
pub struct TestFerry {
    pub addr: SocketAddr,
    pub catalog_db: TempPgDatabase,
    shutdown: Shutdown,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestFerry {
    /// Starts a daemon on a free port with a fresh catalog database.
    pub async fn start() -> TestFerry {
        let catalog_db = PgServer::from_env().temp_database("ferry_catalog").await;
        let key = SecretKey::from_hex(KEY).expect("test key");
        let (catalog, _) = Catalog::open(&catalog_db.url(), key)
            .await
            .expect("open catalog");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Shared::new(catalog, USER, PASSWORD);
        let shutdown = Shutdown::default();
        let waiter = shutdown.clone();
        let task = tokio::spawn(run(listener, shared, async move { waiter.wait().await }));
        TestFerry {
            addr,
            catalog_db,
            shutdown,
            task: Some(task),
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

    /// A direct connection to the catalog database, to check what Ferry stored.
    pub async fn catalog(&self) -> Client {
        self.catalog_db.connect().await
    }

    /// Stops the daemon and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.task.take() {
            t.await.expect("server task").expect("server result");
        }
    }
}

impl Drop for TestFerry {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// The SQLSTATE of an error from a client call.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// `CREATE PEER … FROM POSTGRES` for the test PostgreSQL, with extra/overriding options.
pub fn pg_peer_sql(name: &str, database: &str, password: &str) -> String {
    let pg = PgServer::from_env();
    format!(
        "CREATE PEER {name} FROM POSTGRES WITH (host = '{}', port = {}, user = '{}', password = '{password}', database = '{database}')",
        pg.host, pg.port, pg.user
    )
}

/// `CREATE PEER … FROM CLICKHOUSE` for the test ClickHouse.
pub fn ch_peer_sql(name: &str, database: &str) -> String {
    let ch = ChServer::from_env();
    format!(
        "CREATE PEER {name} FROM CLICKHOUSE WITH (host = '{}', port = {}, user = 'default', password = '', database = '{database}', disable_tls = true)",
        ch.host, ch.http_port
    )
}

/// Polls `mirror_status` through Ferry until the mirror reaches `state` (or `failed`, which
/// ends the wait early unless it is the state awaited). Panics after `timeout`.
pub async fn wait_for_state(
    client: &Client,
    mirror: &str,
    state: &str,
    timeout: std::time::Duration,
) -> String {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let rows = client
            .query(
                "SELECT state, coalesce(last_error, '') FROM mirror_status WHERE mirror = $1",
                &[&mirror],
            )
            .await
            .expect("read mirror_status");
        if let Some(r) = rows.first() {
            let s: String = r.get(0);
            let err: String = r.get(1);
            if s == state {
                return s;
            }
            if s == "failed" {
                panic!("mirror {mirror} failed while waiting for {state}: {err}");
            }
            last = s;
        }
        if std::time::Instant::now() > deadline {
            panic!("mirror {mirror} did not reach {state} in {timeout:?} (last state {last:?})");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A daemon, a source and a destination database, and peers `src` and `dst` for them.
pub struct Setup {
    pub ferry: TestFerry,
    /// A client of the daemon.
    pub client: Client,
    pub source: TempPgDatabase,
    pub dest: TempChDatabase,
    /// A client of the source database.
    pub src: Client,
}

/// Starts a daemon with a fresh source and destination, and declares their peers.
pub async fn setup() -> Setup {
    let ferry = TestFerry::start().await;
    let pg = PgServer::from_env();
    let source = pg.temp_database("ferry_src").await;
    let dest = Ch::from_env().temp_database("ferry_dst").await;
    let client = ferry.connect().await;
    client
        .batch_execute(&pg_peer_sql("src", &source.name, &pg.password))
        .await
        .expect("source peer");
    client
        .batch_execute(&ch_peer_sql("dst", &dest.name))
        .await
        .expect("destination peer");
    let src = source.connect().await;
    Setup {
        ferry,
        client,
        source,
        dest,
        src,
    }
}

/// The source's rows of a table, read as text in key order, decoded and encoded as ClickHouse
/// must hold them: per column, the RowBinary of that column's values in key order.
pub struct Expected {
    pub columns: Vec<ColumnSchema>,
    pub rows: usize,
    /// Per column, the RowBinary of that column's values in key order.
    pub per_column: Vec<Vec<u8>>,
    /// Whole rows, one after the other: what `SELECT <every column> … FORMAT RowBinary` gives.
    pub rows_bytes: Vec<u8>,
}

pub async fn expected_rows(source: &TempPgDatabase, table: &str, key: &str) -> Expected {
    let pg = PgServer::from_env();
    let cfg = ferry_core::peer::PostgresConfig {
        host: pg.host.clone(),
        port: pg.port,
        user: pg.user.clone(),
        password: pg.password.clone(),
        database: source.name.clone(),
    };
    let client = connect(&cfg, "test").await.unwrap();
    client
        .batch_execute("SET DateStyle = 'ISO'; SET IntervalStyle = 'postgres'; SET TimeZone = 'UTC'; SET extra_float_digits = 3")
        .await
        .unwrap();
    let scale = ferry_postgres::source::money_scale(&client, &cfg)
        .await
        .unwrap();
    let t = describe_table(
        &client,
        &cfg,
        &ferry_core::TableName::new("public", table),
        &[],
        scale,
    )
    .await
    .unwrap()
    .unwrap();
    // Each value in its type's output format, as pgoutput sends it. A row value whose fields
    // are all NULL is not NULL itself.
    let list: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            let q = pg_ident(&c.name);
            format!("CASE WHEN num_nulls({q}) = 0 THEN format('%s', {q}) END")
        })
        .collect();
    let rows = client
        .query(
            &format!(
                "SELECT {} FROM {} ORDER BY {}",
                list.join(", "),
                pg_ident(table),
                pg_ident(key)
            ),
            &[],
        )
        .await
        .unwrap();
    let mut per_column = vec![Vec::new(); t.columns.len()];
    let mut rows_bytes = Vec::new();
    for r in &rows {
        for (i, c) in t.columns.iter().enumerate() {
            let text: Option<String> = r.get(i);
            let v = match text {
                None => Value::Null,
                Some(s) => {
                    decode_text(&c.kind, &s).unwrap_or_else(|e| panic!("column {}: {e}", c.name))
                }
            };
            let mut one = Vec::new();
            ferry_clickhouse::rowbinary::encode(&c.kind, c.nullable, &v, &mut one)
                .unwrap_or_else(|e| panic!("column {}: {e}", c.name));
            rows_bytes.extend_from_slice(&one);
            per_column[i].extend_from_slice(&one);
        }
    }
    Expected {
        columns: t.columns,
        rows: rows.len(),
        per_column,
        rows_bytes,
    }
}

/// ClickHouse's current state of `columns` (in key order) as RowBinary.
pub async fn clickhouse_row_bytes(
    dest: &TempChDatabase,
    table: &str,
    columns: &[&str],
    key: &str,
) -> Vec<u8> {
    let list: Vec<String> = columns.iter().map(|c| ch_ident(c)).collect();
    let sql = format!(
        "SELECT {} FROM {} FINAL WHERE _ferry_is_deleted = 0 ORDER BY {} FORMAT RowBinary",
        list.join(", "),
        ch_qualified(&dest.name, table),
        ch_ident(key)
    );
    let mut cursor = dest.client().query(&sql).fetch_bytes("RowBinary").unwrap();
    match cursor.collect().await {
        Ok(b) => b.to_vec(),
        Err(e) => panic!("reading {table} from ClickHouse: {e}"),
    }
}
