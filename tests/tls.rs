//! Peers reached over TLS, with certificates from a test authority.
//!
//! The source: a private PostgreSQL; what each `sslmode` accepts and refuses when a peer is
//! created, and a mirror whose every connection (peer check, snapshot workers, the
//! replication stream, TOAST look-ups) must use TLS because the server refuses that role in
//! plain text. The destinations: the test ClickHouse behind a TLS front, reached over HTTPS,
//! and a private PostgreSQL whose role may only use TLS.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use ferry_e2e::{ch_peer_sql, converge, pg_peer_sql, wait_for_state, Col, Dest, TestFerry, View};
use ferry_testkit::private::{PrivatePostgres, TLS_ONLY_USER};
use ferry_testkit::tls::{TestCertificates, TlsProxy};
use ferry_testkit::{ChServer, PgServer};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a statement that must fail, and returns the server's error.
async fn refused(client: &tokio_postgres::Client, sql: String) -> tokio_postgres::error::DbError {
    let e = client.batch_execute(&sql).await.unwrap_err();
    let db = e.as_db_error().unwrap_or_else(|| panic!("{e}")).clone();
    println!("{}: {} ({:?})", db.code().code(), db.message(), db.hint());
    db
}

/// Table `t` and mirror `m` from peer `src` to `dst`, loaded, then changes to stream: updates
/// that leave the TOASTed column alone, deletes, inserts.
async fn mirror_and_change(client: &tokio_postgres::Client, src: &tokio_postgres::Client) {
    src.batch_execute(
        "CREATE TABLE t (id int8 PRIMARY KEY, n int8 NOT NULL, doc text);
         ALTER TABLE t ALTER COLUMN doc SET STORAGE EXTERNAL;
         INSERT INTO t SELECT g, g, repeat(md5(g::text), 300) FROM generate_series(1, 2000) g;",
    )
    .await
    .unwrap();
    client
        .batch_execute(
            "CREATE MIRROR m FROM src TO dst WITH TABLE MAPPING (t:t)
             WITH (do_initial_copy = true, sync_interval = 1)",
        )
        .await
        .unwrap();
    wait_for_state(client, "m", "running", TIMEOUT).await;
    src.batch_execute(
        "UPDATE t SET n = n * 10 WHERE id % 3 = 0;
         DELETE FROM t WHERE id % 7 = 0;
         INSERT INTO t SELECT g, g, repeat(md5(g::text), 300) FROM generate_series(2001, 2500) g;",
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn sslmodes_and_a_mirror_over_tls() {
    let postgres = PrivatePostgres::start_with_tls().await;
    let admin = postgres.server();
    let source = admin.temp_database("ferry_src").await;
    let dest = ChServer::from_env().temp_database("ferry_dst").await;
    let ferry = TestFerry::start().await;
    let client = ferry.connect().await;
    let certs = postgres.certificates();
    let root = certs.root().display().to_string();
    let other = certs.unrelated_root().display().to_string();
    let peer = |name: &str, host: &str, tls: &str| {
        format!(
            "CREATE PEER {name} FROM POSTGRES WITH (host = '{host}', port = {}, user = '{TLS_ONLY_USER}', \
             password = '{}', database = '{}'{tls})",
            admin.port, admin.password, source.name
        )
    };

    // The server refuses this role in plain text, and Ferry passes its answer on.
    let e = refused(&client, peer("plain", "localhost", ", sslmode = 'disable'")).await;
    assert_eq!(e.code().code(), "28000");
    // verify-full: the certificate names localhost, not 127.0.0.1.
    let e = refused(
        &client,
        peer(
            "by_address",
            "127.0.0.1",
            &format!(", sslmode = 'verify-full', sslrootcert = '{root}'"),
        ),
    )
    .await;
    assert_eq!(e.code().code(), "08001");
    assert!(e.hint().unwrap_or("").contains("does not name"), "{e:?}");
    // An authority that did not issue the server's certificate.
    let e = refused(
        &client,
        peer(
            "other_root",
            "localhost",
            &format!(", sslmode = 'verify-ca', sslrootcert = '{other}'"),
        ),
    )
    .await;
    assert_eq!(e.code().code(), "08001");
    assert!(
        e.hint().unwrap_or("").contains("could not be verified"),
        "{e:?}"
    );
    // A root file that is not there.
    let e = refused(
        &client,
        peer(
            "no_file",
            "localhost",
            ", sslmode = 'verify-ca', sslrootcert = '/nonexistent/root.crt'",
        ),
    )
    .await;
    assert_eq!(e.code().code(), "22023");
    // Verification without saying what to trust.
    let e = refused(
        &client,
        peer("no_root", "localhost", ", sslmode = 'verify-full'"),
    )
    .await;
    assert_eq!(e.code().code(), "42601");
    assert!(e.hint().unwrap_or("").contains("sslrootcert"), "{e:?}");
    let e = refused(
        &client,
        peer("bad_mode", "localhost", ", sslmode = 'sometimes'"),
    )
    .await;
    assert_eq!(e.code().code(), "22023");

    // A root file that cannot be read is refused even where the mode would not use it.
    let e = refused(
        &client,
        peer(
            "unread_root",
            "127.0.0.1",
            ", sslmode = 'require', sslrootcert = '/nonexistent/root.crt'",
        ),
    )
    .await;
    assert_eq!(e.code().code(), "22023");

    // What is accepted: verify-ca checks only the issuer; require and prefer check nothing;
    // allow tries plain first, and TLS when the server refuses plain (as it does this role).
    for (name, host, tls) in [
        ("allowed", "127.0.0.1", ", sslmode = 'allow'".to_owned()),
        (
            "by_address_ca",
            "127.0.0.1",
            format!(", sslmode = 'verify-ca', sslrootcert = '{root}'"),
        ),
        ("required", "127.0.0.1", ", sslmode = 'require'".to_owned()),
        ("preferred", "127.0.0.1", String::new()),
        (
            "src",
            "localhost",
            format!(", sslmode = 'verify-full', sslrootcert = '{root}'"),
        ),
    ] {
        client
            .batch_execute(&peer(name, host, &tls))
            .await
            .unwrap_or_else(|e| panic!("peer {name}: {e}"));
    }
    let names: Vec<String> = client
        .query("SELECT name FROM peers ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        names,
        ["allowed", "by_address_ca", "preferred", "required", "src"]
    );

    // A mirror from the verify-full peer: snapshot, then streaming, all through TLS.
    client
        .batch_execute(&ch_peer_sql("dst", &dest.name))
        .await
        .unwrap();
    let src = source.connect().await;
    mirror_and_change(&client, &src).await;

    let want: (i64, i64, String) = {
        let r = src
            .query_one(
                "SELECT count(*), sum(n)::int8, md5(string_agg(md5(doc), ',' ORDER BY id)) FROM t",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    let started = Instant::now();
    loop {
        let got = dest
            .client()
            .query(
                "SELECT count(), toInt64(sum(n)), lower(hex(MD5(arrayStringConcat(arrayMap(
                        x -> x.2, arraySort(groupArray((id, lower(hex(MD5(doc))))))), ','))))
                 FROM t FINAL WHERE _ferry_is_deleted = 0",
            )
            .fetch_one::<(u64, i64, String)>()
            .await;
        if let Ok((count, sum, ref md5)) = got {
            if (count as i64, sum, md5.as_str()) == (want.0, want.1, want.2.as_str()) {
                break;
            }
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "ClickHouse did not converge to {want:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("converged in {:?}", started.elapsed());

    // Every connection of the TLS-only role is encrypted, the walsender among them (the
    // server would have refused a plain one, so this also shows Ferry connected at all).
    let sessions = admin.connect("postgres").await;
    let rows = sessions
        .query(
            "SELECT a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.usename = $1",
            &[&TLS_ONLY_USER],
        )
        .await
        .unwrap();
    let kinds: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(kinds.iter().all(|(_, ssl)| *ssl), "{kinds:?}");
    assert!(kinds.iter().any(|(t, _)| t == "walsender"), "{kinds:?}");

    client.batch_execute("DROP MIRROR m").await.unwrap();
    ferry.stop().await;
}

#[tokio::test]
async fn clickhouse_over_https() {
    let certs = TestCertificates::issue(
        &std::env::temp_dir().join(ferry_testkit::random_name("ferry-certs")),
    );
    let ch = ChServer::from_env();
    let proxy = TlsProxy::start(&certs, (ch.host.clone(), ch.http_port)).await;
    let dest = ch.temp_database("ferry_dst").await;
    let pg = PgServer::from_env();
    let source = pg.temp_database("ferry_src").await;
    let ferry = TestFerry::start().await;
    let client = ferry.connect().await;
    let root = certs.root().display().to_string();
    let peer = |name: &str, host: &str, tls: &str| {
        format!(
            "CREATE PEER {name} FROM CLICKHOUSE WITH (host = '{host}', port = {}, database = '{}'{tls})",
            proxy.port, dest.name
        )
    };

    let e = refused(
        &client,
        peer(
            "by_address",
            "127.0.0.1",
            &format!(", sslrootcert = '{root}'"),
        ),
    )
    .await;
    assert_eq!(e.code().code(), "08001");
    assert!(e.hint().unwrap_or("").contains("does not name"), "{e:?}");
    let other = certs.unrelated_root().display().to_string();
    let e = refused(
        &client,
        peer(
            "other_root",
            "localhost",
            &format!(", sslrootcert = '{other}'"),
        ),
    )
    .await;
    assert_eq!(e.code().code(), "08001");
    assert!(
        e.hint().unwrap_or("").contains("could not be verified"),
        "{e:?}"
    );
    // The system's authorities did not issue the test certificate either.
    let e = refused(&client, peer("system_roots", "localhost", "")).await;
    assert!(["08001", "22023"].contains(&e.code().code()), "{e:?}");
    // Plain HTTP to the TLS port gets no answer Ferry can use.
    let e = refused(&client, peer("plain", "localhost", ", disable_tls = true")).await;
    assert_eq!(e.code().code(), "08001");

    client
        .batch_execute(&peer(
            "dst",
            "localhost",
            &format!(", sslrootcert = '{root}'"),
        ))
        .await
        .unwrap();
    client
        .batch_execute(&ferry_e2e::pg_peer_sql("src", &source.name, &pg.password))
        .await
        .unwrap();
    let src = source.connect().await;
    src.batch_execute(
        "CREATE TABLE t (id int8 PRIMARY KEY, n int8 NOT NULL);
         INSERT INTO t SELECT g, g FROM generate_series(1, 5000) g;",
    )
    .await
    .unwrap();
    client
        .batch_execute(
            "CREATE MIRROR m FROM src TO dst WITH TABLE MAPPING (t:t)
             WITH (do_initial_copy = true, sync_interval = 1)",
        )
        .await
        .unwrap();
    wait_for_state(&client, "m", "running", TIMEOUT).await;
    src.batch_execute("UPDATE t SET n = -n WHERE id % 2 = 0; DELETE FROM t WHERE id > 4000")
        .await
        .unwrap();
    let want: (i64, i64) = {
        let r = src
            .query_one("SELECT count(*), sum(n)::int8 FROM t", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    let started = Instant::now();
    loop {
        let got = dest
            .client()
            .query(
                "SELECT toInt64(count()), toInt64(sum(n)) FROM t FINAL WHERE _ferry_is_deleted = 0",
            )
            .fetch_one::<(i64, i64)>()
            .await;
        if got.as_ref().ok() == Some(&want) {
            break;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "ClickHouse did not converge to {want:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("converged over HTTPS in {:?}", started.elapsed());
    client.batch_execute("DROP MIRROR m").await.unwrap();
    ferry.stop().await;
}

/// A PostgreSQL destination reached over TLS only: the check at CREATE MIRROR, the load's
/// ranges and the apply connection all verify the server's certificate and are encrypted.
#[tokio::test]
async fn a_postgres_destination_over_tls() {
    let postgres = PrivatePostgres::start_with_tls().await;
    let admin = postgres.server();
    let dest = admin.temp_database("ferry_dst").await;
    let pg = PgServer::from_env();
    let source = pg.temp_database("ferry_src").await;
    let ferry = TestFerry::start().await;
    let client = ferry.connect().await;
    let root = postgres.certificates().root().display().to_string();
    client
        .batch_execute(&pg_peer_sql("src", &source.name, &pg.password))
        .await
        .unwrap();
    let dst = |name: &str, tls: &str| {
        format!(
            "CREATE PEER {name} FROM POSTGRES WITH (host = 'localhost', port = {}, user = '{TLS_ONLY_USER}', \
             password = '{}', database = '{}'{tls})",
            admin.port, admin.password, dest.name
        )
    };
    let e = refused(&client, dst("plain", ", sslmode = 'disable'")).await;
    assert_eq!(e.code().code(), "28000");
    client
        .batch_execute(&dst(
            "dst",
            &format!(", sslmode = 'verify-full', sslrootcert = '{root}'"),
        ))
        .await
        .unwrap();
    let src = source.connect().await;
    mirror_and_change(&client, &src).await;
    let dest = Dest::Postgres(dest);
    let cols = [Col::Val("id"), Col::Val("n"), Col::Md5("doc")];
    converge(
        &client,
        &src,
        &dest,
        &View::new("t", &cols, "id"),
        "over TLS",
    )
    .await;

    // Every connection of the TLS-only role is encrypted (the server refuses plain ones).
    let rows = admin
        .connect("postgres")
        .await
        .query(
            "SELECT a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.usename = $1",
            &[&TLS_ONLY_USER],
        )
        .await
        .unwrap();
    let apps: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(apps.iter().all(|(_, ssl)| *ssl), "{apps:?}");
    assert!(apps.iter().any(|(a, _)| a == "ferry apply"), "{apps:?}");
    client.batch_execute("DROP MIRROR m").await.unwrap();
    ferry.stop().await;
}
