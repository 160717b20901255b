//! The front door against hostile and careless clients: PostgreSQL's messages and codes,
//! malformed messages, size limits, parse time, the session limit, throttled logins, cancel,
//! clients that hang up, idle and slow clients, and TLS.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_core::peer::{PostgresConfig, SslMode};
use ferry_e2e::{sqlstate, TestFerry, PASSWORD, USER};
use ferry_server::Settings;
use ferry_testkit::raw::{self, error_code, error_field, frame, RawClient};
use ferry_testkit::tls::TestCertificates;
use tokio_postgres::{Client, NoTls};

const WAIT: Duration = Duration::from_secs(5);

/// Logs in over a socket bound to `local` (another loopback address is another client).
async fn connect_from(
    ferry: &TestFerry,
    local: &str,
    password: &str,
) -> Result<Client, tokio_postgres::Error> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(ferry.addr).await.unwrap();
    let config: tokio_postgres::Config = ferry.conn_str(USER, password).parse().unwrap();
    let (client, conn) = config.connect_raw(stream, NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn login(addr: SocketAddr) -> RawClient {
    RawClient::login(addr, USER, PASSWORD)
        .await
        .unwrap_or_else(|e| panic!("login: {e:?}"))
}

/// The messages a simple query gets, and its error code if it failed.
async fn ask(c: &mut RawClient, sql: &[u8]) -> (Vec<raw::Message>, Option<String>) {
    c.send(&raw::query(sql)).await;
    let answer = c.until_ready(WAIT).await;
    let code = answer.iter().find_map(error_code);
    (answer, code)
}

/// Sends a malformed message and expects FATAL 08P01 and a closed connection.
async fn violation(c: &mut RawClient, bytes: &[u8]) {
    c.send(bytes).await;
    let m = c.read(WAIT).await.expect("an error before closing");
    assert_eq!(error_code(&m).as_deref(), Some("08P01"), "{m:?}");
    assert_eq!(error_field(&m, b'S').as_deref(), Some("FATAL"));
    assert!(c.closed(WAIT).await, "the connection stays open");
}

#[tokio::test]
async fn postgresql_messages_and_codes() {
    let ferry = TestFerry::start().await;

    for user in [USER, "mallory"] {
        let e = ferry.try_connect(user, "wrong").await.err().unwrap();
        let db = e.as_db_error().unwrap();
        assert_eq!(db.code().code(), "28P01");
        assert_eq!(
            db.message(),
            format!("password authentication failed for user \"{user}\"")
        );
    }

    // Text that is not UTF-8 is 22021; nothing is stored and the session goes on.
    let mut c = login(ferry.addr).await;
    let (_, code) = ask(
        &mut c,
        b"CREATE PEER \xe2\x28\xa1 FROM CLICKHOUSE WITH (host = 'h')",
    )
    .await;
    assert_eq!(code.as_deref(), Some("22021"));
    let (answer, code) = ask(&mut c, b"SELECT count(*) FROM peers").await;
    assert_eq!(code, None, "{answer:?}");
    assert!(answer.iter().any(|m| m.0 == b'D' && m.1.ends_with(b"0")));

    // A Bind that supplies fewer parameters than the statement has: 08P01, as PostgreSQL.
    let mut parse = b"\0SELECT $1::int4 + $2::int4\0".to_vec();
    parse.extend(0i16.to_be_bytes());
    let mut bind = b"\0\0".to_vec();
    bind.extend(0i16.to_be_bytes());
    bind.extend(1i16.to_be_bytes());
    bind.extend(1i32.to_be_bytes());
    bind.extend(b"1");
    bind.extend(0i16.to_be_bytes());
    let mut sequence = frame(b'P', &parse);
    sequence.extend(frame(b'B', &bind));
    sequence.extend(frame(b'E', b"\0\0\0\0\0"));
    sequence.extend(frame(b'S', b""));
    c.send(&sequence).await;
    let answer = c.until_ready(WAIT).await;
    let error = answer.iter().find(|m| m.0 == b'E').expect("an error");
    assert_eq!(error_code(error).as_deref(), Some("08P01"));
    assert!(error_field(error, b'M')
        .unwrap()
        .contains("supplies 1 parameters"));
    assert_eq!(answer.last().map(|m| m.0), Some(b'Z'));
    let (_, code) = ask(&mut c, b"SELECT 1").await;
    assert_eq!(code, None);

    // COPY through the pass-through is refused cleanly, not half-started.
    let client = ferry.connect().await;
    let e = client
        .simple_query("COPY ferry.peers TO STDOUT")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    client.simple_query("SELECT 1").await.unwrap();

    // Garbage, an unknown message type, and what used to panic pgwire after login.
    violation(&mut c, &[0xff; 16]).await;
    violation(&mut login(ferry.addr).await, &frame(b'z', b"")).await;
    let mut bad_bind = b"\0\0".to_vec();
    bad_bind.extend(0i16.to_be_bytes());
    bad_bind.extend(1i16.to_be_bytes());
    bad_bind.extend(1000i32.to_be_bytes());
    violation(&mut login(ferry.addr).await, &frame(b'B', &bad_bind)).await;
    for count in [-1i16, 32767] {
        let mut b = b"\0\0".to_vec();
        b.extend(0i16.to_be_bytes());
        b.extend(count.to_be_bytes());
        violation(&mut login(ferry.addr).await, &frame(b'B', &b)).await;
    }
    // The same behind a Parse in one write: the Parse is answered, then the violation.
    let mut c = login(ferry.addr).await;
    let mut both = frame(b'P', &parse);
    both.extend(frame(b'B', &bad_bind));
    c.send(&both).await;
    assert_eq!(c.read(WAIT).await.map(|m| m.0), Some(b'1'));
    let m = c.read(WAIT).await.expect("an error before closing");
    assert_eq!(error_code(&m).as_deref(), Some("08P01"), "{m:?}");
    assert!(c.closed(WAIT).await);

    // Before login: SASL messages that used to panic pgwire.
    let initial = |length: i32, data: &[u8]| {
        let mut b = b"SCRAM-SHA-256\0".to_vec();
        b.extend(length.to_be_bytes());
        b.extend(data);
        frame(b'p', &b)
    };
    for bytes in [
        frame(b'p', b"garbage"),
        frame(b'p', b""),
        initial(-5, b"n,,n=,r=abc"),
        initial(0x7fff_ffff, b"n,,n=,r=abc"),
        initial(3, b"n,,n=,r=abc"),
        frame(b'Q', &[b'x'; 100_000]),
    ] {
        let mut c = RawClient::connect(ferry.addr).await;
        c.send(&raw::startup(&[("user", USER)])).await;
        assert_eq!(c.read(WAIT).await.map(|m| m.0), Some(b'R'));
        violation(&mut c, &bytes).await;
    }

    // Every session has a process id and secret of its own.
    let (a, b) = (login(ferry.addr).await, login(ferry.addr).await);
    assert_ne!(a.pid, b.pid);
    assert_ne!((a.pid, a.secret), (100_000, 0));

    // Without a certificate, an SSLRequest is answered N and the login goes on in plain text.
    let mut c = RawClient::connect(ferry.addr).await;
    let mut ssl = 8i32.to_be_bytes().to_vec();
    ssl.extend(80_877_103i32.to_be_bytes());
    c.send(&ssl).await;
    let mut answer = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut c.stream, &mut answer)
        .await
        .unwrap();
    assert_eq!(&answer, b"N");
    c.send(&raw::startup(&[("user", USER)])).await;
    assert_eq!(c.read(WAIT).await.map(|m| m.0), Some(b'R'));
    ferry.stop().await;
}

#[tokio::test]
async fn parsing_is_quick_and_statements_are_bounded() {
    let ferry = TestFerry::start().await;
    let limit = ferry_server::Limits::default().max_statement;
    let mut c = login(ferry.addr).await;

    // Just under the limit, many small statements and a syntax error at the end: the whole
    // string is parsed (and refused, as PostgreSQL would) in well under a second.
    let n = (limit - 100) / 9;
    let sql = format!("{} selec x", "select 1;".repeat(n));
    assert!(sql.len() < limit);
    let started = Instant::now();
    let (_, code) = ask(&mut c, sql.as_bytes()).await;
    let took = started.elapsed();
    assert_eq!(code.as_deref(), Some("42601"));
    assert!(
        took < Duration::from_millis(900),
        "parsing {} bytes took {took:?}",
        sql.len()
    );

    // Over the limit: 54000 without being read into memory, and the session goes on.
    for size in [limit + 1, 20 << 20] {
        let started = Instant::now();
        let (answer, code) = ask(&mut c, &vec![b' '; size]).await;
        assert_eq!(code.as_deref(), Some("54000"), "{answer:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
        let (_, code) = ask(&mut c, b"SELECT 1").await;
        assert_eq!(code, None);
    }

    // A statement of thousands of names still fits.
    let tables: Vec<String> = (0..5000)
        .map(|i| format!("public.table_{i}:table_{i}"))
        .collect();
    let mirror = format!(
        "CREATE MIRROR m FROM nope TO nope WITH TABLE MAPPING ({}) WITH (do_initial_copy = true)",
        tables.join(", ")
    );
    assert!(mirror.len() < limit);
    let (_, code) = ask(&mut c, mirror.as_bytes()).await;
    assert_eq!(
        code.as_deref(),
        Some("42704"),
        "the peer is checked, not the size"
    );
    ferry.stop().await;
}

#[tokio::test]
async fn sessions_are_limited() {
    let mut settings = Settings::new(USER, PASSWORD);
    settings.limits.max_sessions = 3;
    let ferry = TestFerry::start_with(settings).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(ferry.connect().await);
    }
    let e = ferry.try_connect(USER, PASSWORD).await.err().unwrap();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "53300");
    assert_eq!(db.message(), "sorry, too many clients already");
    // The sessions open are not disturbed, and a place that frees is taken again.
    open[0].simple_query("SELECT 1").await.unwrap();
    drop(open.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        match ferry.try_connect(USER, PASSWORD).await {
            Ok(_) => break,
            Err(e) if sqlstate(&e) == "53300" && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    drop(open);

    // Connections that never log in are bounded too: past twice the sessions (and some
    // room), one is closed as soon as it is accepted.
    let max = ferry_server::Limits {
        max_sessions: 3,
        ..Default::default()
    }
    .max_connections();
    let mut waiting = Vec::new();
    for _ in 0..max + 5 {
        waiting.push(RawClient::connect(ferry.addr).await);
    }
    let mut closed = 0;
    for c in &mut waiting {
        if c.closed(Duration::from_millis(50)).await {
            closed += 1;
        }
    }
    assert!(
        (5..=10).contains(&closed),
        "{closed} of {} closed at once",
        max + 5
    );
    drop(waiting);
    let deadline = Instant::now() + WAIT;
    while ferry.try_connect(USER, PASSWORD).await.is_err() {
        assert!(Instant::now() < deadline, "no place freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ferry.stop().await;
}

#[tokio::test]
async fn failed_logins_are_throttled_per_address() {
    let mut settings = Settings::new(USER, PASSWORD);
    settings.limits.auth_failures = 4;
    settings.limits.auth_lockout = Duration::from_secs(2);
    let ferry = TestFerry::start_with(settings).await;

    let mut took = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        let e = connect_from(&ferry, "127.0.0.1", "wrong")
            .await
            .err()
            .unwrap();
        assert_eq!(sqlstate(&e), "28P01");
        took.push(started.elapsed());
    }
    // Each failure makes the next attempt wait longer: 0, 100, 200, 400 ms.
    assert!(took[3] >= Duration::from_millis(400), "{took:?}");
    assert!(took[3] > took[1] + Duration::from_millis(200), "{took:?}");

    // The address is refused now, even with the right password…
    let started = Instant::now();
    let e = connect_from(&ferry, "127.0.0.1", PASSWORD)
        .await
        .err()
        .unwrap();
    assert_eq!(sqlstate(&e), "53300", "{e}");
    assert!(e
        .as_db_error()
        .unwrap()
        .message()
        .contains("too many failed logins from 127.0.0.1"));
    assert!(started.elapsed() < Duration::from_millis(300));
    // …while another address logs in at once.
    let started = Instant::now();
    connect_from(&ferry, "127.0.0.2", PASSWORD).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(300));

    // After the lockout the address may try again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    connect_from(&ferry, "127.0.0.1", PASSWORD).await.unwrap();
    ferry.stop().await;
}

/// Whether the catalog database runs a query with this text.
async fn catalog_runs(ferry: &TestFerry, query: &str) -> bool {
    ferry
        .catalog()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
            &[&query],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        > 0
}

async fn until_catalog_stops(ferry: &TestFerry, query: &str) {
    let deadline = Instant::now() + WAIT;
    while catalog_runs(ferry, query).await {
        assert!(Instant::now() < deadline, "{query} still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn cancel_stops_catalog_queries_and_ferry_statements() {
    let ferry = TestFerry::start().await;
    let client = ferry.connect().await;
    let token = client.cancel_token();

    for extended in [false, true] {
        let started = Instant::now();
        let canceller = {
            let token = token.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                token.cancel_query(NoTls).await.unwrap();
            })
        };
        let e = if extended {
            client
                .query("SELECT pg_sleep(5)", &[])
                .await
                .map(|_| ())
                .unwrap_err()
        } else {
            client
                .simple_query("SELECT pg_sleep(5)")
                .await
                .map(|_| ())
                .unwrap_err()
        };
        canceller.await.unwrap();
        assert_eq!(sqlstate(&e), "57014");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        until_catalog_stops(&ferry, "SELECT pg_sleep(5)").await;
        client.simple_query("SELECT 1").await.unwrap();
    }

    // A Ferry statement: CREATE PEER waits on a server that never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(NoTls).await.unwrap();
    });
    let started = Instant::now();
    let e = client
        .batch_execute(&format!(
            "CREATE PEER silent FROM POSTGRES WITH (host = '127.0.0.1', port = {port}, user = 'u', database = 'd')"
        ))
        .await
        .unwrap_err();
    canceller.await.unwrap();
    assert_eq!(sqlstate(&e), "57014");
    assert!(started.elapsed() < Duration::from_secs(1));
    let stored: i64 = ferry
        .catalog()
        .await
        .query_one("SELECT count(*) FROM ferry.peers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0);

    // A cancel with the wrong secret does nothing.
    let mut c = login(ferry.addr).await;
    c.send(&raw::query(b"SELECT pg_sleep(1)")).await;
    let mut other = RawClient::connect(ferry.addr).await;
    other
        .send(&raw::cancel_request(c.pid, c.secret.wrapping_add(1)))
        .await;
    let answer = c.until_ready(WAIT).await;
    assert!(answer.iter().all(|m| m.0 != b'E'), "{answer:?}");
    ferry.stop().await;
}

#[tokio::test]
async fn a_client_that_hangs_up_stops_its_work() {
    let ferry = TestFerry::start().await;
    let mut c = login(ferry.addr).await;
    c.send(&raw::query(b"SELECT pg_sleep(30)")).await;
    let deadline = Instant::now() + WAIT;
    while !catalog_runs(&ferry, "SELECT pg_sleep(30)").await {
        assert!(Instant::now() < deadline, "the query never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(c);
    until_catalog_stops(&ferry, "SELECT pg_sleep(30)").await;
    // Its catalog connection is not lost to the others.
    ferry
        .connect()
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
    ferry.stop().await;
}

#[tokio::test]
async fn slow_and_idle_clients_are_closed() {
    let mut settings = Settings::new(USER, PASSWORD);
    settings.limits.auth_timeout = Duration::from_millis(300);
    settings.limits.idle_timeout = Some(Duration::from_millis(500));
    let ferry = TestFerry::start_with(settings).await;

    // Connected, but no startup packet.
    let mut c = RawClient::connect(ferry.addr).await;
    assert!(c.closed(Duration::from_secs(2)).await);
    // A startup packet, then nothing.
    let mut c = RawClient::connect(ferry.addr).await;
    c.send(&raw::startup(&[("user", USER)])).await;
    assert_eq!(c.read(WAIT).await.map(|m| m.0), Some(b'R'));
    let m = c.read(Duration::from_secs(2)).await.expect("an error");
    assert_eq!(error_code(&m).as_deref(), Some("57014"));
    // Logged in, then idle.
    let mut c = login(ferry.addr).await;
    let m = c.read(Duration::from_secs(2)).await.expect("an error");
    assert_eq!(error_code(&m).as_deref(), Some("57P05"));
    assert!(c.closed(WAIT).await);
    ferry.stop().await;
}

#[tokio::test]
async fn logins_over_tls() {
    let dir = std::env::temp_dir().join(ferry_testkit::random_name("ferry-frontdoor-tls"));
    let certs = TestCertificates::issue(&dir);
    let mut settings = Settings::new(USER, PASSWORD);
    settings.tls = Some(
        ferry_server::frontdoor::tls::acceptor(&certs.server_cert(), &certs.server_key()).unwrap(),
    );
    let ferry = TestFerry::start_with(settings).await;

    // Ferry's own client code for sources checks the certificate, as libpq's verify-full.
    let cfg = PostgresConfig {
        host: "localhost".into(),
        port: ferry.addr.port(),
        user: USER.into(),
        password: PASSWORD.into(),
        database: "ferry".into(),
        ssl_mode: SslMode::VerifyFull,
        ssl_root_cert: Some(certs.root().display().to_string()),
    };
    let stream = ferry_postgres::tls::open(&cfg).await.unwrap();
    assert!(stream.is_tls());
    let mut config: tokio_postgres::Config = ferry.conn_str(USER, PASSWORD).parse().unwrap();
    config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    let (client, conn) = config.connect_raw(stream, NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .simple_query("SELECT count(*) FROM peers")
        .await
        .unwrap();
    // A wrong password over TLS is refused as in plain text.
    let stream = ferry_postgres::tls::open(&cfg).await.unwrap();
    let config: tokio_postgres::Config = ferry.conn_str(USER, "wrong").parse().unwrap();
    let e = config.connect_raw(stream, NoTls).await.err().unwrap();
    assert_eq!(sqlstate(&e), "28P01");
    // Plain text still works for clients that do not ask for TLS.
    ferry
        .connect()
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
    ferry.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
