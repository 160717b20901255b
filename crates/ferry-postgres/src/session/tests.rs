//! Unit tests: the CopyData drain over every way of cutting its input, and a scripted fake
//! server for the COPY's messages (notices, errors mid-stream, oversize frames). The real
//! server is exercised by the initial load's end-to-end tests.

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::*;
use crate::fake_server::*;

/// A CopyData frame for each payload, one after the other.
fn frames(payloads: &[&[u8]]) -> Vec<u8> {
    payloads.iter().flat_map(|p| copy_data(p)).collect()
}

/// Drains `input` fed in `pieces`, with chunks of at most `cap` bytes; returns the chunks and
/// where the last drain stopped.
fn drain_pieces(input: &[u8], cuts: &[usize], cap: usize) -> (Vec<Vec<u8>>, Drained) {
    let mut buf = BytesMut::new();
    let mut left = 0;
    let mut chunks = Vec::new();
    let mut out = BytesMut::new();
    let mut last = Drained::NeedInput;
    let mut bounds = cuts.to_vec();
    bounds.push(input.len());
    let mut from = 0;
    for to in bounds {
        buf.extend_from_slice(&input[from..to]);
        from = to;
        loop {
            last = drain_copy_data(&mut buf, &mut left, &mut out, cap, 1024).unwrap();
            match last {
                Drained::Full => chunks.push(std::mem::take(&mut out).to_vec()),
                Drained::NeedInput | Drained::Message => break,
            }
        }
    }
    if !out.is_empty() {
        chunks.push(out.to_vec());
    }
    (chunks, last)
}

#[test]
fn payloads_come_out_whole_however_the_input_is_cut() {
    let payloads: [&[u8]; 4] = [b"PGCOPY-header-and-row-1", b"", b"row-2", b"\xff\xff"];
    let input = frames(&payloads);
    let expected: Vec<u8> = payloads.concat();
    for cap in [1, 3, 7, 1024] {
        for a in 0..=input.len() {
            for b in a..=input.len() {
                let (chunks, last) = drain_pieces(&input, &[a, b], cap);
                assert_eq!(last, Drained::NeedInput, "cuts {a} {b}");
                assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= cap));
                assert_eq!(chunks.concat(), expected, "cuts {a} {b}, cap {cap}");
            }
        }
    }
}

#[test]
fn another_message_stops_the_drain_and_stays_in_the_buffer() {
    let mut input = frames(&[b"row"]);
    let done = backend(b'c', b"");
    input.extend_from_slice(&done);
    let mut buf = BytesMut::from(&input[..]);
    let (mut left, mut out) = (0, BytesMut::new());
    let stopped = drain_copy_data(&mut buf, &mut left, &mut out, 100, 100).unwrap();
    assert_eq!(stopped, Drained::Message);
    assert_eq!(&out[..], b"row");
    assert_eq!(&buf[..], &done[..]);
}

#[test]
fn oversize_and_short_frames_are_refused_before_their_payload() {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(b"d");
    buf.extend_from_slice(&(4 + 101u32).to_be_bytes());
    let (mut left, mut out) = (0, BytesMut::new());
    let e = drain_copy_data(&mut buf, &mut left, &mut out, 1000, 100).unwrap_err();
    assert!(e.contains("longer than the limit of 100 bytes"), "{e}");
    assert!(out.is_empty());

    let mut buf = BytesMut::from(&[b'd', 0, 0, 0, 3][..]);
    let e = drain_copy_data(&mut buf, &mut left, &mut out, 1000, 100).unwrap_err();
    assert!(e.contains("invalid CopyData length 3"), "{e}");
}

fn notice(message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (t, v) in [(b'S', "NOTICE"), (b'C', "00000"), (b'M', message)] {
        body.push(t);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    backend(b'N', &body)
}

/// Starts a session against a fake server; returns it with the server's socket.
async fn session() -> (Session, TcpStream) {
    let (listener, cfg) = listen().await;
    let server = tokio::spawn(serve_login(listener));
    let s = Session::connect(&cfg, "ferry test").await.unwrap();
    (s, server.await.unwrap())
}

/// Reads the COPY's query and answers CopyOutResponse (binary, one column).
async fn start_copy(s: &mut TcpStream) {
    let (tag, body) = read_frontend(s).await;
    assert_eq!(tag, b'Q');
    assert!(body.starts_with(b"COPY"));
    s.write_all(&backend(b'H', &[1, 0, 1, 0, 1])).await.unwrap();
}

/// Reads every chunk of a COPY.
async fn read_all(copy: &mut CopyOut<'_>) -> Result<Vec<u8>, SourceError> {
    let mut all = Vec::new();
    while let Some(chunk) = copy.next().await? {
        assert!(!chunk.is_empty() && chunk.len() <= CHUNK_BYTES);
        all.extend_from_slice(&chunk);
    }
    Ok(all)
}

#[tokio::test]
async fn notices_and_parameter_reports_mid_copy_are_absorbed() {
    let (mut session, mut s) = session().await;
    let big = vec![7u8; CHUNK_BYTES + 10];
    let server = tokio::spawn(async move {
        start_copy(&mut s).await;
        let mut out = copy_data(b"one");
        out.extend(notice("something to say"));
        out.extend(copy_data(&big));
        out.extend(backend(b'S', &cstrs(&["TimeZone", "UTC"])));
        out.extend(copy_data(b"two"));
        out.extend(backend(b'c', b""));
        out.extend(notice("and again"));
        out.extend(backend(b'C', b"COPY 3\0"));
        out.extend(ready());
        // Sent in small pieces, so that frames and messages are cut by reads.
        for piece in out.chunks(1000) {
            s.write_all(piece).await.unwrap();
            s.flush().await.unwrap();
        }
        // The session is in step again: it runs the next statement.
        let (tag, _) = read_frontend(&mut s).await;
        assert_eq!(tag, b'Q');
        let mut out = backend(b'C', b"COMMIT\0");
        out.extend(ready());
        s.write_all(&out).await.unwrap();
        s
    });
    let mut copy = session.copy_out("COPY t TO STDOUT").await.unwrap();
    let all = read_all(&mut copy).await.unwrap();
    assert!(copy.next().await.unwrap().is_none());
    let mut expected = b"one".to_vec();
    expected.extend(vec![7u8; CHUNK_BYTES + 10]);
    expected.extend_from_slice(b"two");
    assert_eq!(all.len(), expected.len());
    assert!(all == expected);
    assert_eq!(session.wire.parameters["TimeZone"], "UTC");
    session.batch_execute("COMMIT").await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn an_error_mid_copy_keeps_its_sqlstate() {
    let (mut session, mut s) = session().await;
    let server = tokio::spawn(async move {
        start_copy(&mut s).await;
        let mut out = copy_data(b"row");
        out.extend(error_response(
            "ERROR",
            "40001",
            "could not serialize access",
        ));
        out.extend(ready());
        s.write_all(&out).await.unwrap();
        let (tag, _) = read_frontend(&mut s).await;
        assert_eq!(tag, b'Q');
        let mut out = backend(b'C', b"ROLLBACK\0");
        out.extend(ready());
        s.write_all(&out).await.unwrap();
        s
    });
    let mut copy = session.copy_out("COPY t TO STDOUT").await.unwrap();
    let e = read_all(&mut copy).await.unwrap_err();
    assert_eq!(e.sqlstate, "40001");
    assert_eq!(e.kind, crate::connect::kind_of_sqlstate("40001"));
    assert!(e.message.contains("could not serialize access"), "{e}");
    // Once an error ended it, the copy stays ended.
    assert!(copy.next().await.unwrap().is_none());
    session.batch_execute("ROLLBACK").await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn an_error_instead_of_the_copy() {
    let (mut session, mut s) = session().await;
    let server = tokio::spawn(async move {
        read_frontend(&mut s).await;
        let mut out = error_response("ERROR", "42P01", "relation \"t\" does not exist");
        out.extend(ready());
        s.write_all(&out).await.unwrap();
        s
    });
    let e = session.copy_out("COPY t TO STDOUT").await.err().unwrap();
    assert_eq!(
        (e.kind, e.sqlstate.as_str()),
        (ErrorKind::NotFound, "42P01")
    );
    server.await.unwrap();
}

#[tokio::test]
async fn an_oversize_frame_is_a_protocol_error() {
    let (mut session, mut s) = session().await;
    let server = tokio::spawn(async move {
        start_copy(&mut s).await;
        let mut out = vec![b'd'];
        out.extend_from_slice(&u32::MAX.to_be_bytes());
        s.write_all(&out).await.unwrap();
        s
    });
    let mut copy = session.copy_out("COPY t TO STDOUT").await.unwrap();
    let e = read_all(&mut copy).await.unwrap_err();
    assert_eq!(e.sqlstate, "08P01");
    assert!(e.message.contains("longer than the limit"), "{e}");
    // The session does not know where the server is any more.
    let e = session.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(e.sqlstate, "08P01");
    server.await.unwrap();
}

#[tokio::test]
async fn an_oversize_message_is_refused_before_it_is_read() {
    let (mut session, mut s) = session().await;
    let server = tokio::spawn(async move {
        start_copy(&mut s).await;
        let mut out = vec![b'N'];
        out.extend_from_slice(&(MAX_MESSAGE as u32).to_be_bytes());
        s.write_all(&out).await.unwrap();
        s
    });
    let mut copy = session.copy_out("COPY t TO STDOUT").await.unwrap();
    let e = read_all(&mut copy).await.unwrap_err();
    assert_eq!(e.sqlstate, "08P01");
    server.await.unwrap();
}

#[tokio::test]
async fn the_server_going_away_mid_copy_is_transient() {
    let (mut session, mut s) = session().await;
    let server = tokio::spawn(async move {
        start_copy(&mut s).await;
        s.write_all(&copy_data(b"half a ro")[..8]).await.unwrap();
    });
    let mut copy = session.copy_out("COPY t TO STDOUT").await.unwrap();
    server.await.unwrap();
    let e = read_all(&mut copy).await.unwrap_err();
    assert_eq!(
        (e.kind, e.sqlstate.as_str()),
        (ErrorKind::Transient, "08006")
    );
}

#[tokio::test]
async fn execute_binds_its_parameters() {
    let (mut session, mut s) = session().await;
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(read_frontend(&mut s).await);
        }
        let mut out = backend(b'1', b"");
        out.extend(backend(b'2', b""));
        out.extend(backend(b'D', &[0, 1, 0, 0, 0, 1, b'x']));
        out.extend(backend(b'C', b"SELECT 1\0"));
        out.extend(ready());
        s.write_all(&out).await.unwrap();
        seen
    });
    let value = "it's; DROP TABLE t";
    session
        .execute(
            "SELECT pg_catalog.set_config($1, $2, true)",
            &[Param::Text("ferry.x"), Param::Binary(value.as_bytes())],
        )
        .await
        .unwrap();
    let seen = server.await.unwrap();
    let tags: Vec<u8> = seen.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"PBES");
    let parse = &seen[0].1;
    assert!(parse.windows(2).any(|w| w == b"$2"));
    assert!(!parse.windows(4).any(|w| w == b"DROP"));
    let bind = Bytes::from(seen[1].1.clone());
    // Unnamed portal and statement, two formats (text, binary), two values.
    assert_eq!(&bind[..8], &[0, 0, 0, 2, 0, 0, 0, 1]);
    assert!(bind.windows(value.len()).any(|w| w == value.as_bytes()));
}
