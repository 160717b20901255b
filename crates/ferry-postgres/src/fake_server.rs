//! A scripted fake server for unit tests of the connections Ferry speaks the protocol on
//! itself: it writes the backend messages a test composes and reads what the client sends.

use std::collections::HashMap;

use ferry_core::peer::{PostgresConfig, SslMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub(crate) fn backend(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

pub(crate) fn cstrs(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p.as_bytes());
        out.push(0);
    }
    out
}

pub(crate) fn auth(code: i32, extra: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(extra);
    backend(b'R', &body)
}

pub(crate) fn ready() -> Vec<u8> {
    backend(b'Z', b"I")
}

pub(crate) fn error_response(severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (t, v) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(t);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    backend(b'E', &body)
}

/// What follows a successful authentication.
pub(crate) fn welcome() -> Vec<u8> {
    let mut out = auth(0, &[]);
    out.extend(backend(
        b'S',
        &cstrs(&["server_version", "15.4 (Debian 15.4-1.pgdg120+1)"]),
    ));
    let mut key = 4242i32.to_be_bytes().to_vec();
    key.extend_from_slice(&7i32.to_be_bytes());
    out.extend(backend(b'K', &key));
    out.extend(ready());
    out
}

pub(crate) async fn read_startup(s: &mut TcpStream) -> HashMap<String, String> {
    let len = s.read_u32().await.unwrap() as usize;
    let mut body = vec![0; len - 4];
    s.read_exact(&mut body).await.unwrap();
    assert_eq!(&body[..4], &196_608u32.to_be_bytes());
    let parts: Vec<String> = body[4..]
        .split(|&b| b == 0)
        .map(|p| String::from_utf8(p.to_vec()).unwrap())
        .collect();
    parts
        .chunks(2)
        .filter(|c| c.len() == 2 && !c[0].is_empty())
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect()
}

pub(crate) async fn read_frontend(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let tag = s.read_u8().await.unwrap();
    let len = s.read_u32().await.unwrap() as usize;
    let mut body = vec![0; len - 4];
    s.read_exact(&mut body).await.unwrap();
    (tag, body)
}

pub(crate) async fn listen() -> (TcpListener, PostgresConfig) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = PostgresConfig {
        host: "127.0.0.1".into(),
        port,
        user: "alice".into(),
        password: "secret".into(),
        database: "db".into(),
        // The scripted server below speaks no TLS; `prefer` is tested on its own.
        ssl_mode: SslMode::Disable,
        ssl_root_cert: None,
    };
    (listener, cfg)
}

pub(crate) fn copy_data(payload: &[u8]) -> Vec<u8> {
    backend(b'd', payload)
}

/// Accepts one connection and lets it in with a cleartext password; returns its socket.
pub(crate) async fn serve_login(listener: TcpListener) -> TcpStream {
    let (mut s, _) = listener.accept().await.unwrap();
    read_startup(&mut s).await;
    s.write_all(&auth(3, &[])).await.unwrap();
    read_frontend(&mut s).await;
    s.write_all(&welcome()).await.unwrap();
    s
}
