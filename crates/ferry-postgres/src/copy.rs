//! An incremental decoder for `COPY … TO STDOUT (FORMAT binary)`.
//!
//! The stream (PostgreSQL's "binary COPY file format") is:
//!
//! ```text
//! header:  "PGCOPY\n\xff\r\n\0" | flags i32 | extension length i32 | extension bytes
//! tuple:   field count i16 | per field: length i32 (−1 = NULL) and that many bytes
//! trailer: field count −1
//! ```
//!
//! Integers are big-endian and every field is in its type's binary send format (decoded by
//! [`decode_binary`]). Bit 16 of the flags says each tuple carries an OID (never since
//! PostgreSQL 12, and rejected here); the other low 16 bits are "critical" and must be zero;
//! the high 15 bits may be ignored.
//!
//! The server sends the stream as CopyData messages that may cut a tuple anywhere (in practice
//! one message per tuple). [`BinaryCopyDecoder::push`] appends a chunk to an internal buffer and
//! [`BinaryCopyDecoder::next_row`] decodes the next complete tuple in place, so a row costs one
//! copy of its bytes into the buffer plus the allocations its values need; the buffer only
//! keeps the unfinished tail and is compacted as it is consumed.

use ferry_core::{Value, ValueKind};

use crate::types::{decode_binary, DecodeError};

/// The 11-byte signature that starts every binary COPY stream.
pub const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Flag bit: every tuple starts with an OID field.
const FLAG_OIDS: u32 = 1 << 16;

/// Why a binary COPY stream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    #[error("not a binary COPY stream: bad signature")]
    Signature,
    #[error("binary COPY stream has unsupported header flags {0:#x}")]
    Flags(u32),
    #[error("binary COPY header extension has a negative length")]
    Extension,
    #[error("binary COPY row has {got} fields, expected {expected}")]
    FieldCount { expected: usize, got: i16 },
    #[error("binary COPY field {column} has invalid length {length}")]
    FieldLength { column: usize, length: i32 },
    #[error("binary COPY field {column}: {source}")]
    Decode {
        column: usize,
        #[source]
        source: DecodeError,
    },
    #[error("binary COPY stream ended before its trailer")]
    Truncated,
    #[error("data after the end of the binary COPY stream")]
    TrailingData,
}

impl CopyError {
    /// A stream the server sent that Ferry cannot read is a bug or a broken invariant.
    pub fn kind(&self) -> ferry_core::ErrorKind {
        ferry_core::ErrorKind::Internal
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the fixed part of the header.
    Header,
    /// Skipping this many more bytes of header extension.
    Extension(usize),
    Tuples,
    /// The trailer was read.
    Done,
}

/// Decodes a binary COPY stream into rows of [`Value`]s, one [`ValueKind`] per column.
#[derive(Debug)]
pub struct BinaryCopyDecoder {
    kinds: Vec<ValueKind>,
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf`.
    pos: usize,
    state: State,
    rows: u64,
}

impl BinaryCopyDecoder {
    /// A decoder for rows whose columns have these kinds, in the order they are selected.
    pub fn new(kinds: Vec<ValueKind>) -> Self {
        BinaryCopyDecoder {
            kinds,
            buf: Vec::with_capacity(64 * 1024),
            pos: 0,
            state: State::Header,
            rows: 0,
        }
    }

    /// Appends the next piece of the stream (e.g. one CopyData message).
    pub fn push(&mut self, chunk: &[u8]) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            // Only the unread tail is moved, and only once half the buffer is read.
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete row, or `None` when more input is needed or the stream is over
    /// (see [`BinaryCopyDecoder::is_done`]).
    pub fn next_row(&mut self) -> Result<Option<Vec<Value>>, CopyError> {
        loop {
            match self.state {
                State::Header => {
                    if !self.read_header()? {
                        return Ok(None);
                    }
                }
                State::Extension(left) => {
                    let n = left.min(self.buf.len() - self.pos);
                    self.pos += n;
                    if n < left {
                        self.state = State::Extension(left - n);
                        return Ok(None);
                    }
                    self.state = State::Tuples;
                }
                State::Tuples => return self.read_tuple(),
                State::Done => {
                    if self.pos < self.buf.len() {
                        return Err(CopyError::TrailingData);
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// Whether the trailer has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The number of rows decoded so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Checks, once the input has ended and every row was taken, that the stream was complete.
    pub fn finish(&self) -> Result<u64, CopyError> {
        match self.state {
            State::Done if self.pos == self.buf.len() => Ok(self.rows),
            State::Done => Err(CopyError::TrailingData),
            _ => Err(CopyError::Truncated),
        }
    }

    fn unread(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Reads the fixed header if it is all there.
    fn read_header(&mut self) -> Result<bool, CopyError> {
        let data = self.unread();
        // Reject a wrong stream as soon as its first bytes disagree.
        let n = data.len().min(SIGNATURE.len());
        if data[..n] != SIGNATURE[..n] {
            return Err(CopyError::Signature);
        }
        if data.len() < SIGNATURE.len() + 8 {
            return Ok(false);
        }
        let flags = be_u32(data, 11);
        if flags & 0xFFFF != 0 || flags & FLAG_OIDS != 0 {
            return Err(CopyError::Flags(flags));
        }
        let extension =
            usize::try_from(be_u32(data, 15) as i32).map_err(|_| CopyError::Extension)?;
        self.pos += SIGNATURE.len() + 8;
        self.state = State::Extension(extension);
        Ok(true)
    }

    fn read_tuple(&mut self) -> Result<Option<Vec<Value>>, CopyError> {
        let data = &self.buf[self.pos..];
        if data.len() < 2 {
            return Ok(None);
        }
        let count = i16::from_be_bytes([data[0], data[1]]);
        if count == -1 {
            self.pos += 2;
            self.state = State::Done;
            if self.pos < self.buf.len() {
                return Err(CopyError::TrailingData);
            }
            return Ok(None);
        }
        if usize::try_from(count).ok() != Some(self.kinds.len()) {
            return Err(CopyError::FieldCount {
                expected: self.kinds.len(),
                got: count,
            });
        }
        // First make sure the whole tuple is here, so that a partial one costs nothing.
        let mut end = 2;
        for column in 0..self.kinds.len() {
            let Some(len) = data.get(end..end + 4) else {
                return Ok(None);
            };
            let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            end += 4;
            if len >= 0 {
                end += len as usize;
            } else if len != -1 {
                return Err(CopyError::FieldLength {
                    column,
                    length: len,
                });
            }
        }
        if data.len() < end {
            return Ok(None);
        }
        let mut row = Vec::with_capacity(self.kinds.len());
        let mut at = 2;
        for (column, kind) in self.kinds.iter().enumerate() {
            let len = be_u32(data, at) as i32;
            at += 4;
            if len == -1 {
                row.push(Value::Null);
                continue;
            }
            let raw = &data[at..at + len as usize];
            at += len as usize;
            row.push(
                decode_binary(kind, raw).map_err(|source| CopyError::Decode { column, source })?,
            );
        }
        self.pos += end;
        self.rows += 1;
        Ok(Some(row))
    }
}

/// A big-endian u32 at `at`; the caller has checked the bounds.
fn be_u32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u32, extension: &[u8]) -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&(extension.len() as u32).to_be_bytes());
        v.extend_from_slice(extension);
        v
    }

    fn tuple(v: &mut Vec<u8>, fields: &[Option<&[u8]>]) {
        v.extend_from_slice(&(fields.len() as i16).to_be_bytes());
        for f in fields {
            match f {
                None => v.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(b) => {
                    v.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    v.extend_from_slice(b);
                }
            }
        }
    }

    fn sample() -> (Vec<u8>, Vec<Vec<Value>>) {
        let mut s = header(0, b"ext");
        let mut rows = Vec::new();
        for i in 0..50i32 {
            let text = "x".repeat(i as usize);
            let int = i.to_be_bytes();
            let null = i % 3 == 0;
            tuple(
                &mut s,
                &[Some(&int), if null { None } else { Some(text.as_bytes()) }],
            );
            rows.push(vec![
                Value::Int32(i),
                if null { Value::Null } else { Value::Text(text) },
            ]);
        }
        s.extend_from_slice(&(-1i16).to_be_bytes());
        (s, rows)
    }

    fn decode_in_chunks(
        stream: &[u8],
        mut next_size: impl FnMut() -> usize,
    ) -> Result<Vec<Vec<Value>>, CopyError> {
        let mut d = BinaryCopyDecoder::new(vec![ValueKind::Int32, ValueKind::Text]);
        let mut rows = Vec::new();
        let mut rest = stream;
        while !rest.is_empty() {
            let n = next_size().clamp(1, rest.len());
            d.push(&rest[..n]);
            rest = &rest[n..];
            while let Some(row) = d.next_row()? {
                rows.push(row);
            }
        }
        assert_eq!(d.finish()?, rows.len() as u64);
        Ok(rows)
    }

    #[test]
    fn any_chunking() {
        let (stream, expected) = sample();
        assert_eq!(
            decode_in_chunks(&stream, || usize::MAX),
            Ok(expected.clone())
        );
        for size in 1..40 {
            assert_eq!(decode_in_chunks(&stream, || size), Ok(expected.clone()));
        }
        let mut x = 7u32;
        for _ in 0..50 {
            let rows = decode_in_chunks(&stream, || {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as usize % 64
            });
            assert_eq!(rows, Ok(expected.clone()));
        }
    }

    #[test]
    fn truncated_streams() {
        let (stream, _) = sample();
        for n in 0..stream.len() {
            let mut d = BinaryCopyDecoder::new(vec![ValueKind::Int32, ValueKind::Text]);
            d.push(&stream[..n]);
            while let Ok(Some(_)) = d.next_row() {}
            assert_eq!(d.finish(), Err(CopyError::Truncated), "prefix {n}");
        }
    }

    #[test]
    fn malformed_streams() {
        let kinds = || vec![ValueKind::Int32];
        let run = |bytes: &[u8]| {
            let mut d = BinaryCopyDecoder::new(kinds());
            d.push(bytes);
            loop {
                match d.next_row() {
                    Ok(Some(_)) => continue,
                    Ok(None) => return d.finish().map(|_| ()),
                    Err(e) => return Err(e),
                }
            }
        };
        assert_eq!(run(b"PGCOPX"), Err(CopyError::Signature));
        assert_eq!(run(&header(1 << 16, b"")), Err(CopyError::Flags(1 << 16)));
        assert_eq!(run(&header(1, b"")), Err(CopyError::Flags(1)));
        // Non-critical flag bits are ignored.
        let mut ok = header(1 << 20, b"");
        ok.extend_from_slice(&(-1i16).to_be_bytes());
        assert_eq!(run(&ok), Ok(()));

        let mut s = header(0, b"");
        tuple(&mut s, &[Some(b"ab"), Some(b"cd")]);
        assert!(matches!(
            run(&s),
            Err(CopyError::FieldCount {
                expected: 1,
                got: 2
            })
        ));
        let mut s = header(0, b"");
        tuple(&mut s, &[Some(b"abc")]);
        assert!(matches!(run(&s), Err(CopyError::Decode { column: 0, .. })));
        let mut s = header(0, b"");
        s.extend_from_slice(&1i16.to_be_bytes());
        s.extend_from_slice(&(-2i32).to_be_bytes());
        assert!(matches!(
            run(&s),
            Err(CopyError::FieldLength {
                column: 0,
                length: -2
            })
        ));
        let mut s = header(0, b"");
        s.extend_from_slice(&(-1i16).to_be_bytes());
        s.push(0);
        assert_eq!(run(&s), Err(CopyError::TrailingData));
        let mut s = header(0, b"");
        s[15..19].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(run(&s), Err(CopyError::Extension));
        // A huge announced field length just waits for more data.
        let mut s = header(0, b"");
        s.extend_from_slice(&1i16.to_be_bytes());
        s.extend_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(run(&s), Err(CopyError::Truncated));
    }
}
