//! The first packets of a connection, up to the startup packet.
//!
//! Before the startup packet a client may ask for TLS (SSLRequest), for GSS encryption
//! (GSSENCRequest, always refused), or send a CancelRequest instead. Each of these is a
//! length and a code, and the length is checked before anything is read: no packet before
//! login may exceed `max_startup_message`. The startup packet must be protocol 3; a later
//! minor version, or `_pq_.` options, are answered with NegotiateProtocolVersion (3.0), as
//! PostgreSQL does.

use std::collections::BTreeMap;
use std::io;

use pgwire::messages::startup::NegotiateProtocolVersion;
use pgwire::messages::PgWireBackendMessage;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use super::{send, send_fatal, FrontDoor, Io};
use crate::error::code;
use crate::metrics::Metrics;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_3_0: u32 = 3 << 16;

/// What the startup packet said.
#[derive(Debug, Clone, Default)]
pub struct StartupParams {
    pub user: String,
    pub database: Option<String>,
    pub application_name: Option<String>,
}

/// How the opening ended.
pub enum Opening {
    /// A cancel request was handled, the client left, or it was refused: nothing more to
    /// do but close the connection (given back when an error was sent on it).
    Closed(Option<Box<dyn Io>>),
    /// A startup packet: the session goes on to login.
    Startup {
        io: Box<dyn Io>,
        tls: bool,
        params: StartupParams,
    },
}

/// A packet before the startup packet's end: its code (or protocol version) and body.
struct Packet {
    length: usize,
    code: u32,
    body: Vec<u8>,
}

/// Reads one untyped packet; `Ok(None)` when the client has gone, an error message when the
/// length is out of bounds.
async fn read_packet<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    limit: usize,
) -> io::Result<Option<Result<Packet, String>>> {
    let mut head = [0u8; 8];
    match io.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let length = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    if !(8..=limit).contains(&length) {
        return Ok(Some(Err(format!(
            "invalid length of startup packet: {length}"
        ))));
    }
    let mut body = vec![0u8; length - 8];
    match io.read_exact(&mut body).await {
        Ok(_) => Ok(Some(Ok(Packet { length, code, body }))),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads packets until the startup packet, negotiating TLS on the way.
pub async fn open(mut tcp: TcpStream, front: &FrontDoor, metrics: &Metrics) -> io::Result<Opening> {
    let limit = front.limits.max_startup_message;
    loop {
        let packet = match read_packet(&mut tcp, limit).await? {
            None => return Ok(Opening::Closed(None)),
            Some(Err(message)) => return violation(Box::new(tcp), metrics, message).await,
            Some(Ok(p)) => p,
        };
        match packet.code {
            SSL_REQUEST if packet.body.is_empty() => {
                let Some(acceptor) = &front.tls else {
                    tcp.write_all(b"N").await?;
                    tcp.flush().await?;
                    continue;
                };
                tcp.write_all(b"S").await?;
                tcp.flush().await?;
                // Nothing was read past the SSLRequest: whatever follows is the handshake.
                let mut io: Box<dyn Io> = Box::new(acceptor.accept(tcp).await?);
                let packet = match read_packet(&mut io, limit).await? {
                    None => return Ok(Opening::Closed(None)),
                    Some(Err(message)) => return violation(io, metrics, message).await,
                    Some(Ok(p)) => p,
                };
                return startup(io, true, packet, front, metrics).await;
            }
            GSSENC_REQUEST if packet.body.is_empty() => {
                tcp.write_all(b"N").await?;
                tcp.flush().await?;
            }
            _ => return startup(Box::new(tcp), false, packet, front, metrics).await,
        }
    }
}

async fn violation(mut io: Box<dyn Io>, metrics: &Metrics, message: String) -> io::Result<Opening> {
    metrics.protocol_violation();
    send_fatal(&mut io, code::PROTOCOL_VIOLATION, message).await;
    Ok(Opening::Closed(Some(io)))
}

async fn refuse(mut io: Box<dyn Io>, sqlstate: &str, message: &str) -> io::Result<Opening> {
    send_fatal(&mut io, sqlstate, message.to_owned()).await;
    Ok(Opening::Closed(Some(io)))
}

/// A cancel request or the startup packet, after any TLS negotiation.
async fn startup(
    io: Box<dyn Io>,
    tls: bool,
    packet: Packet,
    front: &FrontDoor,
    metrics: &Metrics,
) -> io::Result<Opening> {
    let body = &packet.body;
    match packet.code {
        CANCEL_REQUEST if body.len() == 8 => {
            let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            let secret = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
            let done = front.registry.cancel(pid, secret);
            metrics.cancel_request(done);
            debug!(pid, done, "cancel request");
            Ok(Opening::Closed(None))
        }
        version if version >> 16 == 3 => {
            let params = match read_params(body) {
                Ok(p) => p,
                Err(message) => return violation(io, metrics, message).await,
            };
            let Some(user) = params.get("user").filter(|u| !u.is_empty()) else {
                return refuse(
                    io,
                    code::INVALID_AUTHORIZATION,
                    "no PostgreSQL user name specified in startup packet",
                )
                .await;
            };
            if params
                .get("replication")
                .is_some_and(|r| !matches!(r.as_str(), "false" | "0" | "off" | "no"))
            {
                return refuse(
                    io,
                    code::FEATURE_NOT_SUPPORTED,
                    "replication connections are not supported by Ferry",
                )
                .await;
            }
            let unknown: Vec<String> = params
                .keys()
                .filter(|k| k.starts_with("_pq_."))
                .cloned()
                .collect();
            let mut io = io;
            if version != PROTOCOL_3_0 || !unknown.is_empty() {
                send(
                    &mut io,
                    [PgWireBackendMessage::NegotiateProtocolVersion(
                        NegotiateProtocolVersion::new(PROTOCOL_3_0 as i32, unknown),
                    )],
                )
                .await?;
            }
            let params = StartupParams {
                user: user.clone(),
                database: params.get("database").cloned(),
                application_name: params.get("application_name").cloned(),
            };
            Ok(Opening::Startup { io, tls, params })
        }
        other => {
            let message = match other {
                SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => {
                    format!("invalid length of startup packet: {}", packet.length)
                }
                v => format!(
                    "unsupported frontend protocol {}.{}: server supports 3.0 to 3.0",
                    v >> 16,
                    v & 0xffff
                ),
            };
            violation(io, metrics, message).await
        }
    }
}

/// The key/value pairs of a startup packet: NUL-terminated strings, ending with an empty one.
fn read_params(body: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let invalid = |what: &str| format!("invalid startup packet layout: {what}");
    let mut params = BTreeMap::new();
    let mut rest = body;
    loop {
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| invalid("expected terminator as last byte"))?;
        if end == 0 {
            if rest.len() != 1 {
                return Err(invalid("data after the terminator"));
            }
            return Ok(params);
        }
        let key = std::str::from_utf8(&rest[..end]).map_err(|_| invalid("a name is not UTF-8"))?;
        rest = &rest[end + 1..];
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| invalid("a value is not terminated"))?;
        let value =
            std::str::from_utf8(&rest[..end]).map_err(|_| invalid("a value is not UTF-8"))?;
        rest = &rest[end + 1..];
        params.insert(key.to_owned(), value.to_owned());
    }
}

/// Reads one typed message before login: `(type, body)`, `Ok(None)` when the client has gone.
/// A length outside 4..=`limit` is a protocol violation.
pub async fn read_typed<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    limit: usize,
) -> io::Result<Option<Result<(u8, Vec<u8>), String>>> {
    let mut head = [0u8; 5];
    match io.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let length = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    let body_len = match usize::try_from(length) {
        Ok(n) if (4..=limit).contains(&n) => n - 4,
        _ => return Ok(Some(Err(format!("invalid message length {length}")))),
    };
    let mut body = vec![0u8; body_len];
    match io.read_exact(&mut body).await {
        Ok(_) => Ok(Some(Ok((head[0], body)))),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_parameters() {
        let p = read_params(b"user\0ferry\0database\0x\0\0").unwrap();
        assert_eq!(p.get("user").map(String::as_str), Some("ferry"));
        for bad in [
            &b""[..],
            b"user\0ferry\0",
            b"user\0ferry",
            b"\0\0",
            b"user\0\xff\0\0",
            b"user",
        ] {
            assert!(read_params(bad).is_err(), "{bad:?}");
        }
    }
}
