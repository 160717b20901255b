//! Frontend messages after login, read and checked before anything else sees them.
//!
//! Every message is a type byte, a length (which counts itself) and a body. The reader
//! takes one message at a time from the socket and never buffers more than the limits
//! allow: a `Query`, `Parse` or `Bind` up to the statement limit, any other message up to
//! a few kilobytes. A statement over its limit is skipped unread and answered with
//! `54000`, and the session goes on. The body is then parsed exactly as PostgreSQL lays it
//! out — every string terminated where it must be, every count and length within the
//! message, nothing left over — and only a message that passes becomes a pgwire message.
//! A message that does not is a protocol violation: `08P01` and the connection closes,
//! since what follows it can no longer be trusted to start a message. Text that is not
//! UTF-8 is an error the session survives (`22021`), as in PostgreSQL.

use std::io;

use bytes::Bytes;
use pgwire::error::ErrorInfo;
use pgwire::messages::extendedquery::{Bind, Close, Describe, Execute, Flush, Parse, Sync};
use pgwire::messages::simplequery::Query;
use pgwire::messages::terminate::Terminate;
use pgwire::messages::PgWireFrontendMessage;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::code;

/// PostgreSQL's own ceiling for any message (`PQ_LARGE_MESSAGE_LIMIT`).
const MAX_ANY_MESSAGE: usize = 0x3fff_ffff;

/// What the reader makes of the next message.
#[derive(Debug)]
pub enum Incoming {
    /// A well-formed message.
    Message(PgWireFrontendMessage),
    /// An error for this message; the session goes on (after an extended-protocol
    /// message, it skips to the next Sync).
    Error {
        info: Box<ErrorInfo>,
        extended: bool,
    },
    /// A protocol violation: the error is sent and the connection closed.
    Fatal(Box<ErrorInfo>),
}

/// The size limits of messages after login.
#[derive(Debug, Clone, Copy)]
pub struct MessageLimits {
    /// `Query`, `Parse` and `Bind` bodies.
    pub statement: usize,
    /// Every other message.
    pub other: usize,
}

/// Reads the next message; `Ok(None)` when the client has gone.
pub async fn read_message<R: AsyncRead + Unpin>(
    io: &mut R,
    limits: MessageLimits,
) -> io::Result<Option<Incoming>> {
    loop {
        let mut header = [0u8; 5];
        match io.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let kind = header[0];
        let length = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let body_len = match usize::try_from(length) {
            Ok(n) if (4..=MAX_ANY_MESSAGE).contains(&n) => n - 4,
            _ => return Ok(Some(fatal(format!("invalid message length {length}")))),
        };
        // Copy messages outside a COPY are ignored, as PostgreSQL does, and function calls
        // refused; neither is read into memory.
        if matches!(kind, b'd' | b'c' | b'f' | b'F') {
            if !skip(io, body_len).await? {
                return Ok(None);
            }
            if kind != b'F' {
                continue;
            }
            return Ok(Some(Incoming::Error {
                info: Box::new(error(
                    code::FEATURE_NOT_SUPPORTED,
                    "the function call message is not supported".into(),
                )),
                extended: false,
            }));
        }
        let statement = matches!(kind, b'Q' | b'P' | b'B');
        if !statement && body_len > limits.other {
            return Ok(Some(fatal(format!(
                "invalid message length {length} for message type \"{}\"",
                kind.escape_ascii()
            ))));
        }
        if body_len > limits.statement {
            if !skip(io, body_len).await? {
                return Ok(None);
            }
            let mut info = error(
                code::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "statement is too long: {body_len} bytes, the limit is {}",
                    limits.statement
                ),
            );
            info.hint = Some(
                "Send a shorter statement, or raise the daemon's --max-statement-size.".into(),
            );
            return Ok(Some(Incoming::Error {
                info: Box::new(info),
                extended: kind != b'Q',
            }));
        }
        let mut body = vec![0u8; body_len];
        match io.read_exact(&mut body).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        return Ok(Some(parse(kind, &body)));
    }
}

/// Reads and drops `n` bytes; `false` if the client went first.
async fn skip<R: AsyncRead + Unpin>(io: &mut R, n: usize) -> io::Result<bool> {
    let copied = tokio::io::copy(&mut io.take(n as u64), &mut tokio::io::sink()).await?;
    Ok(copied == n as u64)
}

/// Parses one message body of type `kind`.
pub fn parse(kind: u8, body: &[u8]) -> Incoming {
    match parse_body(kind, body) {
        Ok(message) => Incoming::Message(message),
        Err(Bad::Malformed(what)) => fatal(format!(
            "invalid \"{}\" message: {what}",
            kind.escape_ascii()
        )),
        Err(Bad::Encoding(bytes)) => Incoming::Error {
            info: Box::new(invalid_utf8(&bytes)),
            extended: kind != b'Q',
        },
        Err(Bad::Value(info)) => Incoming::Error {
            info,
            extended: kind != b'Q',
        },
        Err(Bad::UnknownType) => fatal(format!("invalid frontend message type {}", kind)),
    }
}

enum Bad {
    /// The body is not laid out as the message type says.
    Malformed(&'static str),
    /// Text that is not UTF-8; the offending bytes.
    Encoding(Vec<u8>),
    /// A well-formed message with a value PostgreSQL refuses.
    Value(Box<ErrorInfo>),
    UnknownType,
}

fn parse_body(kind: u8, body: &[u8]) -> Result<PgWireFrontendMessage, Bad> {
    let mut c = Cursor(body);
    let message = match kind {
        b'Q' => PgWireFrontendMessage::Query(Query::new(c.text()?)),
        b'P' => {
            let name = c.name()?;
            let query = c.text()?;
            let count = c.count()?;
            let mut type_oids = Vec::with_capacity(count.min(c.0.len() / 4));
            for _ in 0..count {
                type_oids.push(c.i32()? as u32);
            }
            PgWireFrontendMessage::Parse(Parse::new(name, query, type_oids))
        }
        b'B' => {
            let portal = c.name()?;
            let statement = c.name()?;
            let formats = c.formats()?;
            let count = c.count()?;
            let mut parameters = Vec::with_capacity(count.min(c.0.len() / 4));
            for _ in 0..count {
                let len = c.i32()?;
                parameters.push(match len {
                    -1 => None,
                    n if n >= 0 => Some(Bytes::copy_from_slice(c.bytes(n as usize)?)),
                    _ => return Err(Bad::Malformed("negative parameter length")),
                });
            }
            let result_formats = c.formats()?;
            PgWireFrontendMessage::Bind(Bind::new(
                portal,
                statement,
                formats,
                parameters,
                result_formats,
            ))
        }
        b'D' | b'C' => {
            let target = c.u8()?;
            if target != b'S' && target != b'P' {
                return Err(Bad::Malformed("the target must be S or P"));
            }
            let name = c.name()?;
            if kind == b'D' {
                PgWireFrontendMessage::Describe(Describe::new(target, name))
            } else {
                PgWireFrontendMessage::Close(Close::new(target, name))
            }
        }
        b'E' => {
            let name = c.name()?;
            let max_rows = c.i32()?;
            PgWireFrontendMessage::Execute(Execute::new(name, max_rows.max(0)))
        }
        b'S' => PgWireFrontendMessage::Sync(Sync::new()),
        b'H' => PgWireFrontendMessage::Flush(Flush::new()),
        b'X' => PgWireFrontendMessage::Terminate(Terminate::new()),
        _ => return Err(Bad::UnknownType),
    };
    if !c.0.is_empty() {
        return Err(Bad::Malformed("data left over at its end"));
    }
    Ok(message)
}

/// Reads a message body front to back, never past its end.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Bad> {
        if n > self.0.len() {
            return Err(Bad::Malformed("a length runs past its end"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Bad> {
        Ok(self.bytes(1)?[0])
    }

    fn i16(&mut self) -> Result<i16, Bad> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, Bad> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A count of what follows: 0 to 32767.
    fn count(&mut self) -> Result<usize, Bad> {
        usize::try_from(self.i16()?).map_err(|_| Bad::Malformed("a negative count"))
    }

    /// A list of format codes, each 0 (text) or 1 (binary).
    fn formats(&mut self) -> Result<Vec<i16>, Bad> {
        let count = self.count()?;
        let mut formats = Vec::with_capacity(count.min(self.0.len() / 2));
        for _ in 0..count {
            let f = self.i16()?;
            if f != 0 && f != 1 {
                return Err(Bad::Value(Box::new(error(
                    code::INVALID_PARAMETER_VALUE,
                    format!("unsupported format code: {f}"),
                ))));
            }
            formats.push(f);
        }
        Ok(formats)
    }

    /// A NUL-terminated string.
    fn cstr(&mut self) -> Result<&'a [u8], Bad> {
        let end = self
            .0
            .iter()
            .position(|b| *b == 0)
            .ok_or(Bad::Malformed("a string is not terminated"))?;
        let s = &self.0[..end];
        self.0 = &self.0[end + 1..];
        Ok(s)
    }

    fn text(&mut self) -> Result<String, Bad> {
        let raw = self.cstr()?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => {
                // PostgreSQL shows as many bytes as the first one announces.
                let start = e.valid_up_to();
                let len = match raw[start] {
                    0xc0..=0xdf => 2,
                    0xe0..=0xef => 3,
                    0xf0..=0xf7 => 4,
                    _ => 1,
                };
                Err(Bad::Encoding(
                    raw[start..(start + len).min(raw.len())].to_vec(),
                ))
            }
        }
    }

    /// A statement or portal name; the empty name is the unnamed one.
    fn name(&mut self) -> Result<Option<String>, Bad> {
        let s = self.text()?;
        Ok((!s.is_empty()).then_some(s))
    }
}

/// PostgreSQL's error for bytes that are not UTF-8.
pub fn invalid_utf8(bytes: &[u8]) -> ErrorInfo {
    let shown: Vec<String> = bytes.iter().map(|b| format!("0x{b:02x}")).collect();
    error(
        code::CHARACTER_NOT_IN_REPERTOIRE,
        format!(
            "invalid byte sequence for encoding \"UTF8\": {}",
            shown.join(" ")
        ),
    )
}

pub fn error(sqlstate: &str, message: String) -> ErrorInfo {
    ErrorInfo::new("ERROR".to_owned(), sqlstate.to_owned(), message)
}

pub fn fatal_info(sqlstate: &str, message: String) -> ErrorInfo {
    ErrorInfo::new("FATAL".to_owned(), sqlstate.to_owned(), message)
}

fn fatal(message: String) -> Incoming {
    Incoming::Fatal(Box::new(fatal_info(code::PROTOCOL_VIOLATION, message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend(((body.len() + 4) as i32).to_be_bytes());
        out.extend(body);
        out
    }

    const LIMITS: MessageLimits = MessageLimits {
        statement: 64,
        other: 16,
    };

    async fn read(bytes: &[u8]) -> Option<Incoming> {
        let mut io = bytes;
        read_message(&mut io, LIMITS).await.unwrap()
    }

    fn sqlstate(i: &Incoming) -> (&str, bool) {
        match i {
            Incoming::Message(m) => panic!("parsed: {m:?}"),
            Incoming::Error { info, .. } => (info.code.as_str(), false),
            Incoming::Fatal(info) => (info.code.as_str(), true),
        }
    }

    /// A Bind body: portal, statement, formats, parameters, result formats.
    fn bind(params: &[Option<&[u8]>], declared: i16) -> Vec<u8> {
        let mut b = b"\0\0".to_vec();
        b.extend(0i16.to_be_bytes());
        b.extend(declared.to_be_bytes());
        for p in params {
            match p {
                None => b.extend((-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend((v.len() as i32).to_be_bytes());
                    b.extend(*v);
                }
            }
        }
        b.extend(0i16.to_be_bytes());
        b
    }

    #[tokio::test]
    async fn well_formed_messages_parse() {
        let m = read(&frame(b'Q', b"SELECT 1\0")).await.unwrap();
        assert!(
            matches!(m, Incoming::Message(PgWireFrontendMessage::Query(q)) if q.query == "SELECT 1")
        );
        let m = read(&frame(b'B', &bind(&[Some(b"ab"), None], 2)))
            .await
            .unwrap();
        let Incoming::Message(PgWireFrontendMessage::Bind(b)) = m else {
            panic!("{m:?}")
        };
        assert_eq!(b.parameters, vec![Some(Bytes::from_static(b"ab")), None]);
        assert!(read(b"").await.is_none());
        assert!(read(&frame(b'S', b"")[..3]).await.is_none());
    }

    #[tokio::test]
    async fn what_pgwire_panicked_on_is_a_protocol_violation() {
        // A parameter length past the message's end, and counts of -1 and 32767.
        let mut past_end = bind(&[Some(b"ab")], 1);
        past_end[6..10].copy_from_slice(&1000i32.to_be_bytes());
        for body in [past_end, bind(&[], -1), bind(&[], 32767), b"\0".to_vec()] {
            let m = read(&frame(b'B', &body)).await.unwrap();
            assert_eq!(sqlstate(&m), ("08P01", true), "{body:?}");
        }
        for (kind, body) in [
            (b'Q', &b"no terminator"[..]),
            (b'Q', b"two\0strings\0"),
            (b'S', b"x"),
            (b'D', b"Xname\0"),
            (b'E', b"\0\0\0"),
            (b'p', b"garbage"),
            (b'z', b""),
        ] {
            let m = read(&frame(kind, body)).await.unwrap();
            assert_eq!(sqlstate(&m), ("08P01", true), "{}", kind as char);
        }
        // Lengths below 4, beyond PostgreSQL's ceiling, and a small message declaring a large one.
        for length in [0i32, 3, -5, i32::MAX] {
            let mut bytes = vec![b'Q'];
            bytes.extend(length.to_be_bytes());
            assert_eq!(sqlstate(&read(&bytes).await.unwrap()), ("08P01", true));
        }
        let mut bytes = vec![b'S'];
        bytes.extend(1000i32.to_be_bytes());
        assert_eq!(sqlstate(&read(&bytes).await.unwrap()), ("08P01", true));
    }

    #[tokio::test]
    async fn long_statements_are_skipped_and_the_stream_goes_on() {
        let long = [b'x'; 100];
        let mut bytes = frame(b'Q', &[&long[..], b"\0"].concat());
        bytes.extend(frame(b'S', b""));
        let mut io = &bytes[..];
        let m = read_message(&mut io, LIMITS).await.unwrap().unwrap();
        assert!(matches!(&m, Incoming::Error { info, extended: false } if info.code == "54000"));
        let m = read_message(&mut io, LIMITS).await.unwrap().unwrap();
        assert!(matches!(
            m,
            Incoming::Message(PgWireFrontendMessage::Sync(_))
        ));
    }

    #[tokio::test]
    async fn invalid_utf8_is_22021() {
        let m = read(&frame(b'Q', b"CREATE PEER \xe2\x28\xa1\0"))
            .await
            .unwrap();
        let Incoming::Error { info, extended } = m else {
            panic!("{m:?}")
        };
        assert_eq!(info.code, "22021");
        assert!(!extended);
        assert!(
            info.message.ends_with(": 0xe2 0x28 0xa1"),
            "{}",
            info.message
        );
        let m = read(&frame(b'P', b"\0SELECT '\xff'\0\0\0")).await.unwrap();
        assert!(matches!(m, Incoming::Error { extended: true, .. }));
    }

    /// Random bodies of every type never panic and never yield more than they hold.
    #[test]
    fn random_bodies_do_not_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let kind = b"QPBDCESHXFdpz"[(next() % 13) as usize];
            let len = (next() % 48) as usize;
            let body: Vec<u8> = (0..len)
                .map(|_| match next() % 4 {
                    0 => 0,
                    1 => 0xff,
                    _ => next() as u8,
                })
                .collect();
            let _ = parse(kind, &body);
        }
    }
}
