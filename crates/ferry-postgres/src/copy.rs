//! An incremental decoder for `COPY … TO STDOUT (FORMAT binary)` into rows of [`Value`]s.
//!
//! The stream is framed by [`ferry_core::binary_copy`] (which explains the format); every
//! field is in its type's binary send format and is decoded by [`decode_binary`].
//! [`BinaryCopyDecoder::push`] keeps a copy of a chunk and [`BinaryCopyDecoder::next_row`]
//! decodes its next complete row, so a row costs one copy of its bytes plus the allocations its
//! values need. (The snapshot's fast path, which never makes [`Value`]s, frames the chunks
//! itself and transcodes the fields.)

use ferry_core::binary_copy::{CopyFramer, FrameError, DEFAULT_MAX_ROW_BYTES};
use ferry_core::{Value, ValueKind};

use crate::types::{decode_binary, DecodeError};

pub use ferry_core::binary_copy::SIGNATURE;

/// Why a binary COPY stream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("binary COPY field {column}: {source}")]
    Decode {
        column: usize,
        #[source]
        source: DecodeError,
    },
}

impl CopyError {
    /// A stream the server sent that Ferry cannot read is a bug or a broken invariant.
    pub fn kind(&self) -> ferry_core::ErrorKind {
        match self {
            CopyError::Frame(e) => e.kind(),
            CopyError::Decode { source, .. } => source.kind(),
        }
    }
}

/// Decodes a binary COPY stream into rows of [`Value`]s, one [`ValueKind`] per column.
#[derive(Debug)]
pub struct BinaryCopyDecoder {
    kinds: Vec<ValueKind>,
    framer: CopyFramer,
    /// The chunks pushed and not read yet.
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf`.
    pos: usize,
    rows: u64,
}

impl BinaryCopyDecoder {
    /// A decoder for rows whose columns have these kinds, in the order they are selected.
    pub fn new(kinds: Vec<ValueKind>) -> Self {
        BinaryCopyDecoder {
            framer: CopyFramer::new(kinds.len(), DEFAULT_MAX_ROW_BYTES),
            kinds,
            buf: Vec::with_capacity(64 * 1024),
            pos: 0,
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
        let Some(row) = self.framer.next_row(&self.buf, &mut self.pos)? else {
            return Ok(None);
        };
        let mut values = Vec::with_capacity(self.kinds.len());
        for (column, (field, kind)) in row.fields().zip(&self.kinds).enumerate() {
            values.push(match field {
                None => Value::Null,
                Some(raw) => decode_binary(kind, raw)
                    .map_err(|source| CopyError::Decode { column, source })?,
            });
        }
        self.rows += 1;
        Ok(Some(values))
    }

    /// Whether the trailer has been read.
    pub fn is_done(&self) -> bool {
        self.framer.is_done()
    }

    /// The number of rows decoded so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Checks, once the input has ended and every row was taken, that the stream was complete.
    pub fn finish(&self) -> Result<u64, CopyError> {
        if self.pos < self.buf.len() {
            return Err(if self.framer.is_done() {
                FrameError::TrailingData
            } else {
                FrameError::Truncated
            }
            .into());
        }
        self.framer.finish()?;
        Ok(self.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use ferry_core::binary_copy::write;

    fn header(flags: u32, extension: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write::header(&mut v, flags, extension);
        v
    }

    fn tuple(v: &mut Vec<u8>, fields: &[Option<&[u8]>]) {
        write::tuple(v, fields.iter().copied());
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
            assert_eq!(
                d.finish(),
                Err(CopyError::Frame(FrameError::Truncated)),
                "prefix {n}"
            );
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
        assert_eq!(run(b"PGCOPX"), Err(CopyError::Frame(FrameError::Signature)));
        assert_eq!(
            run(&header(1 << 16, b"")),
            Err(CopyError::Frame(FrameError::Flags(1 << 16)))
        );
        assert_eq!(
            run(&header(1, b"")),
            Err(CopyError::Frame(FrameError::Flags(1)))
        );
        // Non-critical flag bits are ignored.
        let mut ok = header(1 << 20, b"");
        ok.extend_from_slice(&(-1i16).to_be_bytes());
        assert_eq!(run(&ok), Ok(()));

        let mut s = header(0, b"");
        tuple(&mut s, &[Some(b"ab"), Some(b"cd")]);
        assert!(matches!(
            run(&s),
            Err(CopyError::Frame(FrameError::FieldCount {
                expected: 1,
                got: 2
            }))
        ));
        let mut s = header(0, b"");
        tuple(&mut s, &[Some(b"abc")]);
        assert!(matches!(run(&s), Err(CopyError::Decode { column: 0, .. })));
        let mut s = header(0, b"");
        s.extend_from_slice(&1i16.to_be_bytes());
        s.extend_from_slice(&(-2i32).to_be_bytes());
        assert!(matches!(
            run(&s),
            Err(CopyError::Frame(FrameError::FieldLength {
                column: 0,
                length: -2
            }))
        ));
        let mut s = header(0, b"");
        s.extend_from_slice(&(-1i16).to_be_bytes());
        s.push(0);
        assert_eq!(run(&s), Err(CopyError::Frame(FrameError::TrailingData)));
        let mut s = header(0, b"");
        s[15..19].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(run(&s), Err(CopyError::Frame(FrameError::Extension)));
        // A large announced field length just waits for more data; one beyond what PostgreSQL
        // can send is refused before anything is gathered for it.
        let mut s = header(0, b"");
        s.extend_from_slice(&1i16.to_be_bytes());
        s.extend_from_slice(&(1i32 << 29).to_be_bytes());
        assert_eq!(run(&s), Err(CopyError::Frame(FrameError::Truncated)));
        s.truncate(s.len() - 4);
        s.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(
            run(&s),
            Err(CopyError::Frame(FrameError::RowTooLarge { .. }))
        ));
    }
}
