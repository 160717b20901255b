//! The pgwire front end against the real PostgreSQL and ClickHouse: authentication, peers,
//! errors with real SQLSTATEs, and read-only SQL on the catalog.

use ferry_e2e::{ch_peer_sql, pg_peer_sql, sqlstate, TestFerry, PASSWORD, USER};
use ferry_testkit::{ChServer, PgServer};
use tokio_postgres::error::ErrorPosition;
use tokio_postgres::SimpleQueryMessage;

/// Names of the peers the catalog holds, read straight from the catalog database.
async fn stored_peers(ferry: &TestFerry) -> Vec<String> {
    ferry
        .catalog()
        .await
        .query("SELECT name FROM ferry.peers ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn rows(messages: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn scram_login_accepts_the_password_and_refuses_others() {
    let ferry = TestFerry::start().await;
    let client = ferry.connect().await;
    let r = client.simple_query("SELECT 41 + 1").await.unwrap();
    assert_eq!(rows(&r), vec![vec![Some("42".to_owned())]]);

    let e = ferry
        .try_connect(USER, "wrong")
        .await
        .expect_err("wrong password must fail");
    assert_eq!(sqlstate(&e), "28P01");
    let e = ferry
        .try_connect("mallory", PASSWORD)
        .await
        .expect_err("unknown user must fail");
    assert_eq!(sqlstate(&e), "28P01");
    ferry.stop().await;
}

#[tokio::test]
async fn peers_are_checked_stored_masked_and_dropped() {
    let ferry = TestFerry::start().await;
    let source = PgServer::from_env().temp_database("ferry_src").await;
    let dest = ChServer::from_env().temp_database("ferry_dst").await;
    let pg_password = PgServer::from_env().password;
    let client = ferry.connect().await;

    client
        .batch_execute(&pg_peer_sql("src", &source.name, &pg_password))
        .await
        .unwrap();
    client
        .batch_execute(&ch_peer_sql("dst", &dest.name))
        .await
        .unwrap();

    // Every failure names its cause with a real SQLSTATE and stores nothing.
    let pg = PgServer::from_env();
    let ch = ChServer::from_env();
    let failures: Vec<(String, &str, &str)> = vec![
        (pg_peer_sql("bad", &source.name, "not-the-password"), "28P01", "password authentication failed"),
        (pg_peer_sql("bad", "no_such_database", &pg_password), "3D000", "no_such_database"),
        (
            "CREATE PEER bad FROM POSTGRES WITH (host = '127.0.0.1', port = 1, user = 'u', database = 'd')".to_string(),
            "08001",
            "could not connect",
        ),
        (
            format!(
                "CREATE PEER bad FROM CLICKHOUSE WITH (host = '127.0.0.1', port = {}, user = 'nobody', password = 'x', disable_tls = true)",
                ch.http_port
            ),
            "28P01",
            "Authentication failed",
        ),
        (ch_peer_sql("bad", "no_such_database"), "3D000", "no_such_database"),
        (
            "CREATE PEER bad FROM CLICKHOUSE WITH (host = '127.0.0.1', port = 1, disable_tls = true)".into(),
            "08001",
            "could not connect",
        ),
        (
            format!("CREATE PEER bad FROM POSTGRES WITH (host = '{}', user = 'u', database = 'd', sslcompression = 1)", pg.host),
            "42601",
            "unknown option \"sslcompression\"",
        ),
        (
            format!("CREATE PEER bad FROM POSTGRES WITH (host = '{}', user = 'u', database = 'd', sslmode = 'x')", pg.host),
            "22023",
            "\"sslmode\" must be one of",
        ),
        ("CREATE PEER bad FROM POSTGRES WITH (host = 'h', user = 'u')".into(), "42601", "missing required option \"database\""),
        (
            "CREATE PEER bad FROM POSTGRES WITH (host = 'h', port = 'abc', user = 'u', database = 'd')".into(),
            "22023",
            "\"port\"",
        ),
        (ch_peer_sql("src", &dest.name), "42710", "already exists"),
        ("CREATE PEER bad FROM MYSQL WITH (host = 'h')".into(), "42601", "MYSQL"),
    ];
    for (sql, code, text) in &failures {
        let e = client
            .batch_execute(sql)
            .await
            .err()
            .unwrap_or_else(|| panic!("should fail: {sql}"));
        assert_eq!(sqlstate(&e), *code, "{sql}: {e:?}");
        let message = e
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_default();
        assert!(
            message.contains(text),
            "{sql}: message {message:?} lacks {text:?}"
        );
    }
    assert_eq!(stored_peers(&ferry).await, ["dst", "src"]);

    // IF NOT EXISTS on an existing peer succeeds without a new check.
    client
        .batch_execute(&ch_peer_sql("IF NOT EXISTS src", &dest.name))
        .await
        .unwrap();

    // The peers view, through both protocols, never shows a password.
    let simple = client
        .simple_query("SELECT * FROM peers ORDER BY name")
        .await
        .unwrap();
    let shown = format!("{:?}", rows(&simple));
    assert!(
        !shown.contains(&format!("\"password\": \"{pg_password}\"")),
        "{shown}"
    );
    assert!(shown.contains("********"), "{shown}");
    let extended = client
        .query(
            "SELECT name, type, options::text FROM peers ORDER BY name",
            &[],
        )
        .await
        .unwrap();
    let listed: Vec<(String, String)> = extended.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        listed,
        [
            ("dst".into(), "clickhouse".into()),
            ("src".into(), "postgres".into())
        ]
    );
    let src_options: String = extended[1].get(2);
    assert!(
        src_options.contains("\"password\": \"********\""),
        "{src_options}"
    );
    let raw = ferry
        .catalog()
        .await
        .query_one("SELECT secret FROM ferry.peers WHERE name = 'src'", &[])
        .await
        .unwrap();
    let sealed: Vec<u8> = raw.get(0);
    assert!(!sealed
        .windows(pg_password.len())
        .any(|w| w == pg_password.as_bytes()));

    // A peer a mirror uses cannot be dropped.
    ferry
        .catalog()
        .await
        .batch_execute(
            "INSERT INTO ferry.mirrors (name, source_peer, destination_peer, spec, state)
             SELECT 'm1', s.id, d.id, '{}', 'running' FROM ferry.peers s, ferry.peers d
             WHERE s.name = 'src' AND d.name = 'dst'",
        )
        .await
        .unwrap();
    let e = client.batch_execute("DROP PEER src").await.unwrap_err();
    assert_eq!(sqlstate(&e), "2BP01", "{e:?}");
    assert!(e.as_db_error().unwrap().message().contains("m1"));
    ferry
        .catalog()
        .await
        .batch_execute("DELETE FROM ferry.mirrors")
        .await
        .unwrap();

    client.batch_execute("DROP PEER src").await.unwrap();
    let e = client.batch_execute("DROP PEER src").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42704");
    client
        .batch_execute("DROP PEER IF EXISTS src")
        .await
        .unwrap();
    assert_eq!(stored_peers(&ferry).await, ["dst"]);
    ferry.stop().await;
}

#[tokio::test]
async fn catalog_sql_is_read_only() {
    let ferry = TestFerry::start().await;
    let client = ferry.connect().await;
    for (sql, code) in [
        (
            "INSERT INTO ferry.peers (name, type, options) VALUES ('x', 'postgres', '{}')",
            "25006",
        ),
        ("CREATE TABLE public.t (a int)", "25006"),
        ("DELETE FROM ferry.schema_migrations", "25006"),
        // Nor can the transaction be made writable, by any spelling.
        (
            "SELECT set_config('transaction_read_only', 'off', false)",
            "42501",
        ),
        ("SET TRANSACTION READ WRITE", "25006"),
        ("SET default_transaction_read_only = off", "25006"),
    ] {
        let e = client
            .simple_query(sql)
            .await
            .err()
            .unwrap_or_else(|| panic!("should fail: {sql}"));
        assert_eq!(sqlstate(&e), code, "{sql}: {e:?}");
    }
    // A transaction-control statement does not open a writable transaction either.
    client.batch_execute("BEGIN").await.unwrap();
    let e = client
        .simple_query("UPDATE ferry.settings SET value = 'x'")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "25006");
    client.batch_execute("COMMIT").await.unwrap();
    let n: i64 = ferry
        .catalog()
        .await
        .query_one("SELECT count(*) FROM ferry.peers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    ferry.stop().await;
}

#[tokio::test]
async fn errors_carry_sqlstate_and_position() {
    let ferry = TestFerry::start().await;
    let client = ferry.connect().await;

    let sql = "SELECT 1; CREATE PEER p FROM POSTGRES WITH (host = 'h' port = 1)";
    let e = client.simple_query(sql).await.unwrap_err();
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "42601");
    assert_eq!(
        db.position(),
        Some(&ErrorPosition::Original(
            (sql.find("port").unwrap() + 1) as u32
        ))
    );

    // An error PostgreSQL finds keeps PostgreSQL's code, its position moved to the whole text.
    let sql = "SELECT 1;  SELECT no_such_column FROM peers";
    let e = client.simple_query(sql).await.unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "42703");
    assert_eq!(
        db.position(),
        Some(&ErrorPosition::Original(
            (sql.find("no_such").unwrap() + 1) as u32
        ))
    );

    let e = client.simple_query("DROP PEER nope").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42704");
    let e = client.simple_query("RESUME MIRROR m").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42704");
    let e = client.simple_query("RESYNC MIRROR m").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42704");

    // The session survives errors and multi-statement strings run in order.
    let r = client
        .simple_query("SELECT 1 AS a; SELECT 'two' AS b")
        .await
        .unwrap();
    assert_eq!(
        rows(&r),
        vec![vec![Some("1".to_owned())], vec![Some("two".to_owned())]]
    );
    let e = client.prepare("SELECT 1; SELECT 2").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42601");
    ferry.stop().await;
}

#[tokio::test]
async fn extended_protocol_passes_typed_values_and_parameters() {
    let ferry = TestFerry::start().await;
    let client = ferry.connect().await;
    let row = client
        .query_one("SELECT $1::int8 * 2 AS doubled, $2::text AS t, NULL::int4 AS n, now() IS NOT NULL AS ok", &[&21i64, &"x"])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 42);
    assert_eq!(row.get::<_, String>(1), "x");
    assert_eq!(row.get::<_, Option<i32>>(2), None);
    assert!(row.get::<_, bool>(3));
    let n = client
        .execute(&*ch_peer_sql("c", "no_such_database"), &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&n), "3D000");
    ferry.stop().await;
}

#[tokio::test]
async fn option_values_are_strict_and_shown_under_create_peer_names() {
    let ferry = TestFerry::start().await;
    let source = PgServer::from_env().temp_database("ferry_src").await;
    let dest = ChServer::from_env().temp_database("ferry_dst").await;
    let pg = PgServer::from_env();
    let ch = ChServer::from_env();
    let client = ferry.connect().await;
    let pg_peer = |name: &str, extra: &str| {
        format!(
            "CREATE PEER {name} FROM POSTGRES WITH (host = '{}', port = {}, user = '{}', password = '{}', database = '{}'{extra})",
            pg.host, pg.port, pg.user, pg.password, source.name
        )
    };
    let ch_peer = |name: &str, extra: &str| {
        format!(
            "CREATE PEER {name} FROM CLICKHOUSE WITH (host = '{}', port = {}, database = '{}'{extra})",
            ch.host, ch.http_port, dest.name
        )
    };
    let missing_root = "sslrootcert = '/nonexistent/root.crt'";
    let failures: Vec<(String, &str, &str)> = vec![
        (
            ch_peer("bad", ", disable_tls = 'yes'"),
            "22023",
            "must be true or false (unquoted), got the string 'yes'",
        ),
        (
            ch_peer("bad", ", disable_tls = 'true'"),
            "22023",
            "true or false",
        ),
        (
            ch_peer("bad", ", disable_tls = on"),
            "22023",
            "true or false",
        ),
        (
            ch_peer("bad", ", disable_tls = 1"),
            "22023",
            "true or false",
        ),
        // A root file that cannot be read is refused whatever the mode.
        (
            ch_peer("bad", &format!(", disable_tls = true, {missing_root}")),
            "22023",
            "could not read sslrootcert",
        ),
        (
            pg_peer("bad", &format!(", sslmode = 'disable', {missing_root}")),
            "22023",
            "could not read sslrootcert",
        ),
        (
            pg_peer("bad", &format!(", sslmode = 'prefer', {missing_root}")),
            "22023",
            "could not read sslrootcert",
        ),
        (
            pg_peer("bad", &format!(", sslmode = 'require', {missing_root}")),
            "22023",
            "could not read sslrootcert",
        ),
    ];
    for (sql, code, text) in &failures {
        let e = client
            .batch_execute(sql)
            .await
            .err()
            .unwrap_or_else(|| panic!("should fail: {sql}"));
        let message = e
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_default();
        assert_eq!(sqlstate(&e), *code, "{sql}: {message}");
        assert!(message.contains(text), "{sql}: {message:?} lacks {text:?}");
    }
    assert!(stored_peers(&ferry).await.is_empty());

    // sslmode = 'allow' connects as libpq does (plain first, which this server takes).
    client
        .batch_execute(&pg_peer("src", ", sslmode = 'allow'"))
        .await
        .unwrap();
    client
        .batch_execute(&ch_peer(
            "dst",
            ", disable_tls = true, compression = 'none'",
        ))
        .await
        .unwrap();
    // The view shows each option under the name CREATE PEER takes.
    let shown: Vec<(String, String)> = client
        .query("SELECT name, options::text FROM peers ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let (dst, src) = (&shown[0].1, &shown[1].1);
    assert!(
        src.contains("\"sslmode\": \"allow\"") && !src.contains("ssl_mode"),
        "{src}"
    );
    assert!(
        dst.contains("\"compression\": \"none\"") && dst.contains("\"disable_tls\": true"),
        "{dst}"
    );
    ferry.stop().await;
}
