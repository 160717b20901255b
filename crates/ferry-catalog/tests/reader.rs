//! The reader role and pool against the real PostgreSQL: what clients' SQL can and cannot do
//! once it runs as the reader, whatever the parser before it let through.

use std::time::{Duration, Instant};

use ferry_catalog::{Catalog, CatalogOptions, ReaderError, ReaderSettings, SecretKey};
use ferry_testkit::private::{PrivatePostgres, TLS_ONLY_USER};
use ferry_testkit::{random_name, PgServer, TempPgDatabase};

const KEY: &str = "8f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";

fn key() -> SecretKey {
    SecretKey::from_hex(KEY).unwrap()
}

fn settings(connections: usize, timeout_ms: u64) -> ReaderSettings {
    ReaderSettings {
        connections,
        statement_timeout: Duration::from_millis(timeout_ms),
    }
}

async fn open(db: &TempPgDatabase) -> Catalog {
    Catalog::open(&db.url(), key()).await.unwrap().0
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| e.to_string())
}

#[tokio::test]
async fn the_reader_reads_views_and_nothing_else() {
    let db = PgServer::from_env().temp_database("ferry_reader").await;
    let catalog = open(&db).await;
    let pool = catalog.reader_pool(settings(2, 5_000));
    let admin = db.connect().await;
    let ferry_pid: i32 = {
        let c = catalog.client().await.unwrap();
        c.query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0)
    };

    let tx = pool.begin().await.unwrap();
    for view in ["peers", "mirror_status", "mirror_tables", "cdc_batches"] {
        tx.simple_query(&format!("SELECT * FROM {view}"))
            .await
            .unwrap_or_else(|e| panic!("{view}: {e}"));
    }
    // What psql's \d needs from the system catalogs.
    tx.simple_query(
        "SELECT c.relname FROM pg_catalog.pg_class c WHERE pg_catalog.pg_table_is_visible(c.oid)",
    )
    .await
    .unwrap();
    tx.finish().await;

    let refused = [
        "SELECT * FROM ferry.peers".to_owned(),
        "SELECT value FROM ferry.settings".to_owned(),
        "SELECT rolpassword FROM pg_authid".to_owned(),
        "SELECT pg_read_file('/etc/hostname')".to_owned(),
        "SELECT pg_ls_dir('.')".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
        "SELECT pg_switch_wal()".to_owned(),
        "SELECT pg_stat_reset()".to_owned(),
        "SELECT pg_create_logical_replication_slot('ferry_reader_test', 'pgoutput')".to_owned(),
        format!("SELECT pg_terminate_backend({ferry_pid})"),
        "COPY (SELECT 1) TO PROGRAM 'id'".to_owned(),
        "COPY (SELECT 1) TO '/tmp/ferry_reader_test'".to_owned(),
    ];
    for sql in &refused {
        let tx = pool.begin().await.unwrap();
        let e = tx
            .simple_query(sql)
            .await
            .err()
            .unwrap_or_else(|| panic!("{sql} ran"));
        assert!(
            matches!(code(&e).as_str(), "42501" | "25006"),
            "{sql}: {e:?}"
        );
        tx.finish().await;
    }
    // Writes, even to the views, fail in the read-only transaction.
    let tx = pool.begin().await.unwrap();
    let e = tx.simple_query("DELETE FROM peers").await.unwrap_err();
    assert!(matches!(code(&e).as_str(), "25006" | "42501"), "{e:?}");
    tx.finish().await;

    // Nothing happened: the daemon's connection lives, no slot was made.
    let alive: bool = admin
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
            &[&ferry_pid],
        )
        .await
        .unwrap()
        .get(0);
    assert!(alive);
    let slots: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ferry_reader_test'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0);
}

#[tokio::test]
async fn nothing_outlives_a_statement_on_a_pooled_connection() {
    let db = PgServer::from_env().temp_database("ferry_reader").await;
    let catalog = open(&db).await;
    let pool = catalog.reader_pool(settings(1, 5_000));
    let admin = db.connect().await;
    let lock_key = 0x4645_5252_595f_4d47_i64;

    // An advisory lock taken in a statement is gone once the statement is finished, on the
    // one connection the pool has.
    let tx = pool.begin().await.unwrap();
    let pid: i32 = tx
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    tx.simple_query(&format!("SELECT pg_advisory_lock({lock_key})"))
        .await
        .unwrap();
    tx.simple_query("SELECT set_config('search_path', 'ferry', false)")
        .await
        .unwrap();
    tx.finish().await;
    let free: bool = admin
        .query_one("SELECT pg_try_advisory_lock($1)", &[&lock_key])
        .await
        .unwrap()
        .get(0);
    assert!(free, "the advisory lock outlived its statement");
    admin
        .query_one("SELECT pg_advisory_unlock($1)", &[&lock_key])
        .await
        .unwrap();

    // The next transaction is on the same connection, with the reader's settings again.
    let tx = pool.begin().await.unwrap();
    let row = tx
        .query_one(
            "SELECT pg_backend_pid(), current_user::text, current_setting('search_path'),
                    current_setting('transaction_read_only')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), pid);
    assert_eq!(row.get::<_, String>(1), "ferry_reader");
    assert_eq!(row.get::<_, String>(2), "public");
    assert_eq!(row.get::<_, String>(3), "on");
    tx.finish().await;

    // A transaction dropped mid-statement has its query cancelled and its connection closed.
    let tx = pool.begin().await.unwrap();
    let running = tokio::time::timeout(
        Duration::from_millis(300),
        tx.simple_query("SELECT pg_sleep(30)"),
    );
    assert!(running.await.is_err());
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sleeping: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if sleeping == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the query kept running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the pool still serves.
    pool.begin().await.unwrap().finish().await;
}

#[tokio::test]
async fn statements_and_waits_are_bounded() {
    let db = PgServer::from_env().temp_database("ferry_reader").await;
    let catalog = open(&db).await;
    let pool = catalog.reader_pool(settings(1, 300));
    let tx = pool.begin().await.unwrap();
    let started = Instant::now();
    let e = tx.simple_query("SELECT pg_sleep(5)").await.unwrap_err();
    assert_eq!(code(&e), "57014");
    assert!(started.elapsed() < Duration::from_secs(2));

    // The one connection is taken: the next wait ends after the statement timeout.
    let started = Instant::now();
    let e = pool.begin().await.err().expect("the pool is busy");
    assert!(matches!(e, ReaderError::Busy { connections: 1, .. }), "{e}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    tx.finish().await;
    pool.begin().await.unwrap().finish().await;
}

#[tokio::test]
async fn views_added_or_recreated_later_are_readable() {
    let db = PgServer::from_env().temp_database("ferry_reader").await;
    open(&db).await;
    // What a later migration does: recreate a view, add another.
    let admin = db.connect().await;
    admin
        .batch_execute(
            "DROP VIEW public.cdc_batches;
             CREATE VIEW public.cdc_batches AS SELECT 1 AS batch;
             CREATE VIEW public.added_later AS SELECT 2 AS x;
             CREATE TABLE ferry.added_later (secret text);",
        )
        .await
        .unwrap();
    let catalog = open(&db).await;
    let pool = catalog.reader_pool(settings(1, 5_000));
    for (sql, ok) in [
        ("SELECT * FROM cdc_batches", true),
        ("SELECT * FROM added_later", true),
        ("SELECT * FROM ferry.added_later", false),
    ] {
        let tx = pool.begin().await.unwrap();
        let r = tx.simple_query(sql).await;
        assert_eq!(r.is_ok(), ok, "{sql}: {r:?}");
        tx.finish().await;
    }
}

/// A login role owning a database of its own, for a catalog user that is not a superuser.
struct Owner {
    admin: tokio_postgres::Client,
    user: String,
    db: TempPgDatabase,
}

impl Owner {
    async fn new(createrole: bool) -> Owner {
        let server = PgServer::from_env();
        let admin = server.connect("postgres").await;
        let user = random_name("ferry_owner");
        let attr = if createrole { "CREATEROLE" } else { "" };
        admin
            .batch_execute(&format!("CREATE ROLE {user} LOGIN PASSWORD 'pw' {attr}"))
            .await
            .unwrap();
        let db = server.temp_database("ferry_reader").await;
        admin
            .batch_execute(&format!("ALTER DATABASE \"{}\" OWNER TO {user}", db.name))
            .await
            .unwrap();
        Owner { admin, user, db }
    }

    fn url(&self) -> String {
        let s = &self.db.server;
        format!(
            "postgres://{}:pw@{}:{}/{}",
            self.user, s.host, s.port, self.db.name
        )
    }

    async fn drop_roles(self, roles: &[&str]) {
        let Owner { admin, user, db } = self;
        drop(db);
        for role in roles.iter().copied().chain([user.as_str()]) {
            let _ = admin
                .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
                .await;
        }
    }
}

#[tokio::test]
async fn a_missing_privilege_stops_the_start_with_what_to_do() {
    let reader = random_name("ferry_reader");
    let options = || CatalogOptions {
        reader_role: reader.clone(),
    };

    // Neither superuser nor CREATEROLE, and the role is not there: refused, saying how.
    let owner = Owner::new(false).await;
    let e = Catalog::open_with(&owner.url(), key(), options())
        .await
        .err()
        .expect("cannot create the role");
    let text = e.to_string();
    assert!(
        text.contains("CREATEROLE") && text.contains(&format!("CREATE ROLE \"{reader}\" NOLOGIN")),
        "{text}"
    );
    owner.drop_roles(&[]).await;

    // With CREATEROLE the role is made once, and is a plain NOLOGIN role.
    let owner = Owner::new(true).await;
    let (catalog, _) = Catalog::open_with(&owner.url(), key(), options())
        .await
        .unwrap();
    let tx = catalog
        .reader_pool(settings(1, 5_000))
        .begin()
        .await
        .unwrap();
    let row = tx
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), reader);
    tx.finish().await;
    drop(catalog);

    // A reader role that may do more than read is refused.
    owner
        .admin
        .batch_execute(&format!("ALTER ROLE {reader} LOGIN"))
        .await
        .unwrap();
    let e = Catalog::open_with(&owner.url(), key(), options())
        .await
        .err()
        .expect("a reader that may log in");
    assert!(e.to_string().contains("may log in"), "{e}");
    owner
        .admin
        .batch_execute(&format!("DROP OWNED BY {reader}"))
        .await
        .ok();
    owner.drop_roles(&[&reader]).await;
}

#[tokio::test]
async fn the_catalog_is_reached_over_tls_as_its_url_says() {
    let postgres = PrivatePostgres::start_with_tls().await;
    let server = postgres.server();
    let db = server.temp_database("ferry_cat_tls").await;
    let root = postgres.certificates().root().display().to_string();
    let url = |options: &str| {
        format!(
            "postgres://{TLS_ONLY_USER}:{}@localhost:{}/{}?{options}",
            server.password, server.port, db.name
        )
    };
    // The server refuses this user in plain text.
    let e = Catalog::open(&url("sslmode=disable"), key())
        .await
        .err()
        .unwrap();
    assert_eq!(e.sqlstate(), Some("28000"), "{e}");
    // The certificate names localhost, and chains to the test root.
    let (catalog, _) = Catalog::open(
        &url(&format!("sslmode=verify-full&sslrootcert={root}")),
        key(),
    )
    .await
    .unwrap();
    let e = Catalog::open(
        &url(&format!(
            "sslmode=verify-ca&sslrootcert={}",
            postgres.certificates().unrelated_root().display()
        )),
        key(),
    )
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("could not be verified"), "{e}");

    // Pooled connections, readers and cancels go over TLS too.
    let ssl: bool = catalog
        .client()
        .await
        .unwrap()
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
    let pool = catalog.reader_pool(settings(1, 10_000));
    let tx = pool.begin().await.unwrap();
    assert!(tokio::time::timeout(
        Duration::from_millis(300),
        tx.simple_query("SELECT pg_sleep(30)")
    )
    .await
    .is_err());
    drop(tx);
    let admin = server.connect(&db.name).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        > 0
    {
        assert!(Instant::now() < deadline, "the cancel did not reach the server");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
