//! A PostgreSQL-protocol client that sends exactly the bytes a test gives it, for tests of
//! what no driver would send: malformed, truncated and oversized messages, text that is not
//! UTF-8, cancel requests. It logs in with SCRAM-SHA-256 and reads backend messages as raw
//! `(type, body)` pairs.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::{digest, hmac, pbkdf2};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One backend message: its type byte and body.
pub type Message = (u8, Vec<u8>);

/// A message of type `kind` with `body`, framed with its length.
pub fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend(((body.len() + 4) as i32).to_be_bytes());
    out.extend(body);
    out
}

/// A startup packet for protocol 3.0 with these parameters.
pub fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend(k.as_bytes());
        body.push(0);
        body.extend(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// A simple query of raw bytes (NUL-terminated here).
pub fn query(sql: &[u8]) -> Vec<u8> {
    frame(b'Q', &[sql, b"\0"].concat())
}

/// A CancelRequest packet.
pub fn cancel_request(pid: i32, secret: i32) -> Vec<u8> {
    let mut out = 16i32.to_be_bytes().to_vec();
    out.extend(80_877_102i32.to_be_bytes());
    out.extend(pid.to_be_bytes());
    out.extend(secret.to_be_bytes());
    out
}

/// The SQLSTATE of an ErrorResponse body.
pub fn error_code(message: &Message) -> Option<String> {
    error_field(message, b'C')
}

/// A field (`C` code, `M` message, `S` severity, `H` hint) of an ErrorResponse.
pub fn error_field(message: &Message, field: u8) -> Option<String> {
    if message.0 != b'E' {
        return None;
    }
    let mut rest = &message.1[..];
    while let Some((&kind, tail)) = rest.split_first() {
        let end = tail.iter().position(|b| *b == 0)?;
        if kind == field {
            return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
        }
        rest = &tail[end + 1..];
    }
    None
}

/// The client's side of SCRAM-SHA-256 after server-first: the client-final message, and
/// the server-final message a server that knows the password sends. The salted password is
/// kept per salt and password, so that tests logging in thousands of times pay PBKDF2 once.
pub fn scram_client_final(
    password: &str,
    client_first_bare: &str,
    server_first: &str,
) -> (String, String) {
    type Salted = Mutex<HashMap<(String, Vec<u8>, u32), [u8; 32]>>;
    static SALTED: OnceLock<Salted> = OnceLock::new();
    let mut nonce = "";
    let mut salt = Vec::new();
    let mut iterations = 0;
    for field in server_first.split(',') {
        match field.split_at_checked(2) {
            Some(("r=", v)) => nonce = v,
            Some(("s=", v)) => salt = BASE64.decode(v).expect("base64 salt"),
            Some(("i=", v)) => iterations = v.parse().expect("iterations"),
            _ => {}
        }
    }
    let salted = *SALTED
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry((password.to_owned(), salt.clone(), iterations))
        .or_insert_with(|| {
            let mut out = [0u8; 32];
            pbkdf2::derive(
                pbkdf2::PBKDF2_HMAC_SHA256,
                NonZeroU32::new(iterations).expect("iterations"),
                &salt,
                password.as_bytes(),
                &mut out,
            );
            out
        });
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored = digest::digest(&digest::SHA256, client_key.as_ref());
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let signature = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, stored.as_ref()),
        auth_message.as_bytes(),
    );
    let proof: Vec<u8> = client_key
        .as_ref()
        .iter()
        .zip(signature.as_ref())
        .map(|(a, b)| a ^ b)
        .collect();
    let server_key = hmac::sign(&key, b"Server Key");
    let verifier = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, server_key.as_ref()),
        auth_message.as_bytes(),
    );
    (
        format!("{without_proof},p={}", BASE64.encode(proof)),
        format!("v={}", BASE64.encode(verifier)),
    )
}

/// A connection speaking the protocol byte by byte.
pub struct RawClient {
    pub stream: TcpStream,
    /// From BackendKeyData, once logged in.
    pub pid: i32,
    pub secret: i32,
}

impl RawClient {
    /// Connects without sending anything.
    pub async fn connect(addr: std::net::SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        RawClient {
            stream,
            pid: 0,
            secret: 0,
        }
    }

    /// Connects and logs in; the messages up to ReadyForQuery, or the error that ended it.
    pub async fn login(
        addr: std::net::SocketAddr,
        user: &str,
        password: &str,
    ) -> Result<RawClient, Vec<Message>> {
        let mut c = RawClient::connect(addr).await;
        c.send(&startup(&[("user", user), ("database", "ferry")]))
            .await;
        let bare = format!("n=,r={:x}", rand::random::<u128>());
        let mut expected = String::new();
        let mut seen = Vec::new();
        loop {
            let Some(m) = c.read(Duration::from_secs(10)).await else {
                return Err(seen);
            };
            match (
                m.0,
                m.1.get(..4)
                    .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            ) {
                (b'R', Some(10)) => {
                    let first = format!("n,,{bare}");
                    let mut body = b"SCRAM-SHA-256\0".to_vec();
                    body.extend((first.len() as i32).to_be_bytes());
                    body.extend(first.as_bytes());
                    c.send(&frame(b'p', &body)).await;
                }
                (b'R', Some(11)) => {
                    let server_first = String::from_utf8_lossy(&m.1[4..]).into_owned();
                    let (last, server_final) = scram_client_final(password, &bare, &server_first);
                    expected = server_final;
                    c.send(&frame(b'p', last.as_bytes())).await;
                }
                (b'R', Some(12)) => {
                    assert_eq!(&m.1[4..], expected.as_bytes(), "the server's proof");
                }
                (b'K', _) if m.1.len() == 8 => {
                    c.pid = i32::from_be_bytes([m.1[0], m.1[1], m.1[2], m.1[3]]);
                    c.secret = i32::from_be_bytes([m.1[4], m.1[5], m.1[6], m.1[7]]);
                }
                (b'Z', _) => return Ok(c),
                (b'E', _) => {
                    seen.push(m);
                    return Err(seen);
                }
                _ => {}
            }
            seen.push(m);
        }
    }

    /// Sends bytes as they are; a connection the server closed is not an error here.
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next message; `None` when the server closed the connection or sent nothing in
    /// time.
    pub async fn read(&mut self, timeout: Duration) -> Option<Message> {
        tokio::time::timeout(timeout, async {
            let kind = self.stream.read_u8().await.ok()?;
            let len = self.stream.read_i32().await.ok()?;
            let mut body = vec![0u8; usize::try_from(len).ok()?.checked_sub(4)?];
            self.stream.read_exact(&mut body).await.ok()?;
            Some((kind, body))
        })
        .await
        .ok()
        .flatten()
    }

    /// Messages up to and with ReadyForQuery, or until the connection closes or `timeout`
    /// passes between two messages.
    pub async fn until_ready(&mut self, timeout: Duration) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(m) = self.read(timeout).await {
            let ready = m.0 == b'Z';
            out.push(m);
            if ready {
                break;
            }
        }
        out
    }

    /// Whether the server has closed the connection (reads EOF within `timeout`).
    pub async fn closed(&mut self, timeout: Duration) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(timeout, self.stream.read(&mut byte)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}
