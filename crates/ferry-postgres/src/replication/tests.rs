//! Unit tests: the command texts, the CopyData formats, and a scripted fake server for the
//! handshake variants and the stream's cancel safety. The real server is exercised by
//! `tests/replication.rs`.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::stream::{parse_copy_data, standby_status_update};
use super::*;
use crate::connect::kind_of_sqlstate;
use crate::fake_server::*;
use ferry_core::peer::SslMode;
use ferry_core::ErrorKind;

#[test]
fn server_versions() {
    for (text, num) in [
        ("15.4 (Debian 15.4-1.pgdg120+1)", Some(150_004)),
        ("15.18", Some(150_018)),
        ("16beta1", Some(160_000)),
        ("10.23", Some(100_023)),
        ("9.6.24", Some(90_624)),
        ("17", Some(170_000)),
        ("", None),
        ("devel", None),
    ] {
        assert_eq!(parse_server_version(text), num, "{text}");
    }
}

#[test]
fn slot_names() {
    for ok in ["a", "ferry_mirror_1", &"x".repeat(63)] {
        assert!(validate_slot_name(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "Upper",
        "with-dash",
        "sp ace",
        "quote\"",
        "é",
        &"x".repeat(64),
    ] {
        let e = validate_slot_name(bad).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput, "{bad}");
        assert_eq!(e.sqlstate, "22023");
    }
}

#[test]
fn create_slot_syntax_follows_the_server_version() {
    assert_eq!(
        create_slot_command("s1", true, 150_004),
        "CREATE_REPLICATION_SLOT \"s1\" TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')"
    );
    assert_eq!(
        create_slot_command("s1", false, 140_010),
        "CREATE_REPLICATION_SLOT \"s1\" LOGICAL pgoutput EXPORT_SNAPSHOT"
    );
}

#[test]
fn start_replication_quotes_publications() {
    let options = PgOutputOptions {
        publication_names: vec!["pub1".into(), "we\"ird".into(), "it's, ok".into()],
        proto_version: 2,
        streaming: true,
        messages: true,
        binary: true,
    };
    assert_eq!(
        start_replication_command("s1", Lsn(0x16_B374_D848), &options).unwrap(),
        "START_REPLICATION SLOT \"s1\" LOGICAL 16/B374D848 (proto_version '2', \
         publication_names '\"pub1\",\"we\"\"ird\",\"it''s, ok\"', messages 'true', \
         streaming 'on', binary 'true')"
    );
    let v1 = PgOutputOptions {
        publication_names: vec!["p".into()],
        ..PgOutputOptions::default()
    };
    assert_eq!(
        start_replication_command("s1", Lsn::ZERO, &v1).unwrap(),
        "START_REPLICATION SLOT \"s1\" LOGICAL 0/0 (proto_version '1', publication_names '\"p\"')"
    );
    let streaming_v1 = PgOutputOptions {
        streaming: true,
        ..v1
    };
    assert!(start_replication_command("s1", Lsn::ZERO, &streaming_v1).is_err());
    assert!(start_replication_command("s1", Lsn::ZERO, &PgOutputOptions::default()).is_err());
}

#[test]
fn copy_data_messages() {
    let mut w = vec![b'w'];
    w.extend_from_slice(&0x10u64.to_be_bytes());
    w.extend_from_slice(&0x20u64.to_be_bytes());
    w.extend_from_slice(&(-5i64).to_be_bytes());
    w.extend_from_slice(b"BEGIN");
    assert_eq!(
        parse_copy_data(Bytes::from(w)),
        Ok(ReplicationMessage::XLogData {
            wal_start: Lsn(0x10),
            wal_end: Lsn(0x20),
            server_time_micros: -5,
            data: Bytes::from_static(b"BEGIN"),
        })
    );
    let mut k = vec![b'k'];
    k.extend_from_slice(&0x30u64.to_be_bytes());
    k.extend_from_slice(&7i64.to_be_bytes());
    k.push(1);
    assert_eq!(
        parse_copy_data(Bytes::from(k.clone())),
        Ok(ReplicationMessage::PrimaryKeepalive {
            wal_end: Lsn(0x30),
            server_time_micros: 7,
            reply_requested: true,
        })
    );
    k.pop();
    assert!(parse_copy_data(Bytes::from(k)).is_err());
    assert!(parse_copy_data(Bytes::from_static(b"w123")).is_err());
    assert!(parse_copy_data(Bytes::from_static(b"q")).is_err());
    assert!(parse_copy_data(Bytes::new()).is_err());
}

#[test]
fn standby_status_update_layout() {
    let b = standby_status_update(Lsn(1), Lsn(2), Lsn(3), 4, true);
    assert_eq!(b[0], b'r');
    assert_eq!(&b[1..9], &1u64.to_be_bytes());
    assert_eq!(&b[9..17], &2u64.to_be_bytes());
    assert_eq!(&b[17..25], &3u64.to_be_bytes());
    assert_eq!(&b[25..33], &4i64.to_be_bytes());
    assert_eq!(b[33], 1);
}

#[test]
fn sqlstates_decide_the_kind() {
    for (code, kind) in [
        ("28P01", ErrorKind::Permission),
        ("42501", ErrorKind::Permission),
        ("3D000", ErrorKind::NotFound),
        ("42704", ErrorKind::NotFound),
        ("42710", ErrorKind::AlreadyExists),
        ("55006", ErrorKind::Transient),
        ("55000", ErrorKind::Misconfigured),
        ("53400", ErrorKind::Misconfigured),
        ("57P01", ErrorKind::Transient),
        ("08006", ErrorKind::Transient),
        ("42601", ErrorKind::Internal),
    ] {
        assert_eq!(kind_of_sqlstate(code), kind, "{code}");
    }
}

// ---- a scripted fake server (crate::fake_server) ----

#[tokio::test]
async fn cleartext_password_and_startup_parameters() {
    let (listener, cfg) = listen().await;
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let params = read_startup(&mut s).await;
        s.write_all(&auth(3, &[])).await.unwrap();
        let (tag, body) = read_frontend(&mut s).await;
        assert_eq!((tag, &body[..]), (b'p', &b"secret\0"[..]));
        s.write_all(&welcome()).await.unwrap();
        params
    });
    let conn = ReplicationConnection::connect(&cfg).await.unwrap();
    assert_eq!(conn.server_version_num(), 150_004);
    assert_eq!(conn.backend_pid(), Some(4242));
    assert_eq!(
        conn.parameter("server_version").map(|v| &v[..4]),
        Some("15.4")
    );
    let params = server.await.unwrap();
    assert_eq!(params["user"], "alice");
    assert_eq!(params["database"], "db");
    assert_eq!(params["replication"], "database");
    assert_eq!(params["application_name"], "ferry");
    assert_eq!(params["options"], STARTUP_OPTIONS);
}

/// Reads an SSLRequest (length 8, code 80877103) and answers `answer`.
async fn refuse_tls(s: &mut TcpStream, answer: u8) {
    let mut request = [0u8; 8];
    s.read_exact(&mut request).await.unwrap();
    assert_eq!(request, [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
    s.write_all(&[answer]).await.unwrap();
}

#[tokio::test]
async fn prefer_continues_in_plain_text_when_the_server_has_no_tls() {
    let (listener, mut cfg) = listen().await;
    cfg.ssl_mode = SslMode::Prefer;
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        refuse_tls(&mut s, b'N').await;
        let params = read_startup(&mut s).await;
        s.write_all(&auth(3, &[])).await.unwrap();
        read_frontend(&mut s).await;
        s.write_all(&welcome()).await.unwrap();
        params
    });
    ReplicationConnection::connect(&cfg).await.unwrap();
    assert_eq!(server.await.unwrap()["user"], "alice");
}

#[tokio::test]
async fn require_refuses_a_server_without_tls() {
    for mode in [SslMode::Require, SslMode::VerifyFull] {
        let (listener, mut cfg) = listen().await;
        cfg.ssl_mode = mode;
        // The root file is read before connecting; any PEM certificate will do here.
        cfg.ssl_root_cert = (mode == SslMode::VerifyFull).then(test_root_cert);
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            refuse_tls(&mut s, b'N').await;
            // Nothing else may come: no startup message in the clear.
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
            rest
        });
        let e = ReplicationConnection::connect(&cfg).await.unwrap_err();
        assert_eq!(
            (e.kind, e.sqlstate.as_str()),
            (ErrorKind::Misconfigured, "08001"),
            "{e}"
        );
        assert!(e.to_string().contains("does not support TLS"), "{e}");
        assert!(e.hint.unwrap().contains("sslmode"));
        assert!(server.await.unwrap().is_empty(), "sent after N");
    }
}

#[tokio::test]
async fn a_missing_root_file_is_reported_before_connecting() {
    let (_listener, mut cfg) = listen().await;
    cfg.ssl_mode = SslMode::VerifyCa;
    cfg.ssl_root_cert = Some("/nonexistent/root.crt".into());
    let e = ReplicationConnection::connect(&cfg).await.unwrap_err();
    assert_eq!(
        (e.kind, e.sqlstate.as_str()),
        (ErrorKind::InvalidInput, "22023"),
        "{e}"
    );
    assert!(e.to_string().contains("/nonexistent/root.crt"), "{e}");
}

/// A self-signed root in a file of its own, for tests that only need a readable root.
fn test_root_cert() -> String {
    const PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBijCCATGgAwIBAgIUMuSmp927OOeFRE7Qp3vyHHeWEZ4wCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPZmVycnkgdGVzdCByb290MCAXDTI2MTEyMjA1NDkzNVoYDzIx
MjYxMDI5MDU0OTM1WjAaMRgwFgYDVQQDDA9mZXJyeSB0ZXN0IHJvb3QwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAASjJgVSQttbR51ekaDbt01LuHUzg1Ink38snzAr
9Rkawgpj6OShiSCZZEDYyYPom1Wf1OI9KCV14ku7/iM5hIewo1MwUTAdBgNVHQ4E
FgQUHmikUpbgUExPajqzDuF27jq4iKMwHwYDVR0jBBgwFoAUHmikUpbgUExPajqz
DuF27jq4iKMwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNHADBEAiA8O5uZ
MsxDTBsteKktPJcpl4Tw+DlTGC1SK/tp3k0t2AIgXK9wt4j67gZACECGlfv1Kfoe
OsiiZSPk7+39MYiB4h8=
-----END CERTIFICATE-----
";
    let path = std::env::temp_dir().join(format!("ferry-test-root-{}.crt", std::process::id()));
    std::fs::write(&path, PEM).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn md5_password() {
    let (listener, cfg) = listen().await;
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_startup(&mut s).await;
        s.write_all(&auth(5, &[1, 2, 3, 4])).await.unwrap();
        let (tag, body) = read_frontend(&mut s).await;
        assert_eq!(tag, b'p');
        let expected =
            postgres_protocol::authentication::md5_hash(b"alice", b"secret", [1, 2, 3, 4]);
        assert_eq!(&body[..body.len() - 1], expected.as_bytes());
        s.write_all(&welcome()).await.unwrap();
    });
    ReplicationConnection::connect(&cfg).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn refused_password_keeps_the_sqlstate() {
    let (listener, cfg) = listen().await;
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_startup(&mut s).await;
        s.write_all(&auth(3, &[])).await.unwrap();
        read_frontend(&mut s).await;
        s.write_all(&error_response(
            "FATAL",
            "28P01",
            "password authentication failed",
        ))
        .await
        .unwrap();
    });
    let e = ReplicationConnection::connect(&cfg).await.unwrap_err();
    assert_eq!(
        (e.kind, e.sqlstate.as_str()),
        (ErrorKind::Permission, "28P01")
    );
    assert!(e.message.contains("password authentication failed"), "{e}");
}

#[tokio::test]
async fn unsupported_authentication_is_refused() {
    let (listener, cfg) = listen().await;
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_startup(&mut s).await;
        s.write_all(&auth(7, &[])).await.unwrap();
        let _ = s.read_u8().await;
    });
    let e = ReplicationConnection::connect(&cfg).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("GSSAPI"), "{e}");
}

#[tokio::test]
async fn nothing_listening_is_transient_08001() {
    let (listener, cfg) = listen().await;
    drop(listener);
    let e = ReplicationConnection::connect(&cfg).await.unwrap_err();
    assert_eq!(
        (e.kind, e.sqlstate.as_str()),
        (ErrorKind::Transient, "08001")
    );
}

/// Connects to a fake server that authenticates with cleartext; returns its socket.
async fn connected() -> (ReplicationConnection, TcpStream) {
    let (listener, cfg) = listen().await;
    let server = tokio::spawn(serve_login(listener));
    let conn = ReplicationConnection::connect(&cfg).await.unwrap();
    (conn, server.await.unwrap())
}

#[tokio::test]
async fn simple_query_rows_nulls_and_errors() {
    let (mut conn, mut s) = connected().await;
    let server = tokio::spawn(async move {
        let (tag, body) = read_frontend(&mut s).await;
        assert_eq!((tag, &body[..]), (b'Q', &b"IDENTIFY_SYSTEM\0"[..]));
        let mut row = 2u16.to_be_bytes().to_vec();
        row.extend_from_slice(&2i32.to_be_bytes());
        row.extend_from_slice(b"ab");
        row.extend_from_slice(&(-1i32).to_be_bytes());
        let mut out = backend(b'D', &row);
        out.extend(backend(b'C', b"IDENTIFY_SYSTEM\0"));
        out.extend(ready());
        s.write_all(&out).await.unwrap();

        read_frontend(&mut s).await;
        // Not fatal: the connection stays usable.
        let mut out = error_response("ERROR", "42601", "syntax error");
        out.extend(ready());
        s.write_all(&out).await.unwrap();
        s
    });
    let rows = conn.simple_query("IDENTIFY_SYSTEM").await.unwrap();
    assert_eq!(rows, vec![vec![Some("ab".to_owned()), None]]);
    let e = conn.simple_query("NONSENSE").await.unwrap_err();
    assert_eq!(
        (e.kind, e.sqlstate.as_str()),
        (ErrorKind::Internal, "42601")
    );
    server.await.unwrap();
}

fn xlog_data(start: u64, data: &[u8]) -> Vec<u8> {
    let mut p = vec![b'w'];
    p.extend_from_slice(&start.to_be_bytes());
    p.extend_from_slice(&(start + 100).to_be_bytes());
    p.extend_from_slice(&0i64.to_be_bytes());
    p.extend_from_slice(data);
    copy_data(&p)
}

#[tokio::test]
async fn next_is_cancel_safe_and_stop_drains() {
    let (conn, mut s) = connected().await;
    let (resume_tx, resume_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (tag, _) = read_frontend(&mut s).await;
        assert_eq!(tag, b'Q');
        let mut out = backend(b'W', &[0, 0, 0]);
        let msg = xlog_data(0x40, b"payload");
        let (first, second) = msg.split_at(msg.len() - 3);
        out.extend_from_slice(first);
        s.write_all(&out).await.unwrap();
        resume_rx.await.unwrap();
        s.write_all(second).await.unwrap();

        // The status update, then CopyDone; answer with data in flight, CopyDone,
        // CommandComplete and ReadyForQuery.
        let (tag, body) = read_frontend(&mut s).await;
        assert_eq!((tag, body[0], body.len()), (b'd', b'r', 34));
        assert_eq!(&body[9..17], &0x99u64.to_be_bytes());
        let (tag, _) = read_frontend(&mut s).await;
        assert_eq!(tag, b'c');
        let mut out = xlog_data(0x50, b"late");
        out.extend(backend(b'c', &[]));
        out.extend(backend(b'C', b"START_REPLICATION\0"));
        out.extend(ready());
        s.write_all(&out).await.unwrap();
        s
    });
    let options = PgOutputOptions {
        publication_names: vec!["p".into()],
        ..PgOutputOptions::default()
    };
    let mut stream = conn
        .start_replication("s1", Lsn::ZERO, &options)
        .await
        .unwrap();

    // Drop `next()` futures until the partial message has been read into the buffer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stream.buffered() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "nothing arrived");
        let r = tokio::time::timeout(Duration::from_millis(10), stream.next()).await;
        assert!(r.is_err(), "a message cannot be complete yet: {r:?}");
    }
    resume_tx.send(()).unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the rest arrives")
        .unwrap();
    assert_eq!(
        m,
        Some(ReplicationMessage::XLogData {
            wal_start: Lsn(0x40),
            wal_end: Lsn(0x40 + 100),
            server_time_micros: 0,
            data: Bytes::from_static(b"payload"),
        })
    );

    stream
        .send_status(Lsn(0x99), Lsn(0x99), Lsn(0x99), false)
        .await
        .unwrap();
    let _conn = stream.stop().await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn server_going_away_is_transient() {
    let (conn, mut s) = connected().await;
    let server = tokio::spawn(async move {
        read_frontend(&mut s).await;
        s.write_all(&backend(b'W', &[0, 0, 0])).await.unwrap();
        s.write_all(&error_response(
            "FATAL",
            "57P01",
            "terminating connection due to administrator command",
        ))
        .await
        .unwrap();
        s
    });
    let options = PgOutputOptions {
        publication_names: vec!["p".into()],
        ..PgOutputOptions::default()
    };
    let mut stream = conn
        .start_replication("s1", Lsn::ZERO, &options)
        .await
        .unwrap();
    let e = stream.next().await.unwrap_err();
    assert_eq!(
        (e.kind, e.sqlstate.as_str()),
        (ErrorKind::Transient, "57P01")
    );
    drop(server.await.unwrap());
    let e = stream.next().await.unwrap_err();
    assert_eq!(
        (e.kind, e.sqlstate.as_str()),
        (ErrorKind::Transient, "08006")
    );
}

#[tokio::test]
async fn a_walsender_shutting_down_ends_the_stream_with_command_complete() {
    let (conn, mut s) = connected().await;
    let server = tokio::spawn(async move {
        let (tag, _) = read_frontend(&mut s).await;
        assert_eq!(tag, b'Q');
        // What a walsender sends at a fast shutdown once everything sent is confirmed:
        // CommandComplete without CopyDone, then it exits.
        let mut out = backend(b'W', &[0, 0, 0]);
        out.extend(xlog_data(0x40, b"last"));
        out.extend(backend(b'C', b"COPY 0\0"));
        s.write_all(&out).await.unwrap();
        s
    });
    let options = PgOutputOptions {
        publication_names: vec!["p".into()],
        ..PgOutputOptions::default()
    };
    let mut stream = conn
        .start_replication("s1", Lsn::ZERO, &options)
        .await
        .unwrap();
    assert!(matches!(
        stream.next().await.unwrap(),
        Some(ReplicationMessage::XLogData { .. })
    ));
    assert!(stream.next().await.unwrap().is_none());
    assert!(stream.next().await.unwrap().is_none());
    drop(server.await.unwrap());
}
