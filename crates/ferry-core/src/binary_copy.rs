//! Framing PostgreSQL's binary COPY stream into rows of borrowed fields.
//!
//! `COPY … TO STDOUT (FORMAT binary)` sends (integers big-endian):
//!
//! ```text
//! header:  "PGCOPY\n\xff\r\n\0" | flags i32 | extension length i32 | extension bytes
//! tuple:   field count i16 | per field: length i32 (−1 = NULL) and that many bytes
//! trailer: field count −1
//! ```
//!
//! Bit 16 of the flags says every tuple carries an OID (never since PostgreSQL 12, and rejected
//! here); the other low 16 bits are "critical" and must be zero; the high 15 bits may be
//! ignored. Each field is in its type's binary send format; this module does not look inside
//! fields, it only finds them.
//!
//! # Zero copy, bounded memory
//!
//! The server sends the stream as CopyData messages, in practice one tuple per message (the
//! first also carries the header, the trailer comes alone), but a message may cut a tuple
//! anywhere. [`CopyFramer::feed`] takes one chunk and returns [`Rows`], a lending iterator: a
//! row that lies wholly inside the chunk is returned as a view into the chunk itself, with no
//! copy. Only a row cut by a chunk boundary is gathered, piece by piece, in the framer's own
//! buffer; and only as far as its length words announce, so that buffer never holds more than
//! one row, which may be at most [`CopyFramer::new`]'s `max_row_bytes` long: a longer field or
//! row is an error as soon as its length is read, before anything is allocated for it.
//!
//! Malformed input (a wrong signature, critical flags, a wrong field count, a negative length
//! other than −1, an oversized row, bytes after the trailer) is an error, never a panic; a stream
//! that simply stops is [`FrameError::Truncated`] at [`CopyFramer::finish`]. Where the stream is
//! cut into chunks never changes which rows come out or which error ends them.

/// The 11-byte signature that starts every binary COPY stream.
pub const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Signature, flags and extension length.
const HEADER_LEN: usize = 19;
/// Flag bit: every tuple starts with an OID field.
const FLAG_OIDS: u32 = 1 << 16;
/// A row limit that admits the largest field PostgreSQL can send (1 GiB − 1) with room for
/// small fields beside it.
pub const DEFAULT_MAX_ROW_BYTES: usize = (1 << 30) + (1 << 20);
/// The carry-over buffer is given back once a split row made it bigger than this.
const KEEP_BUFFER_BYTES: usize = 256 * 1024;

/// Why a binary COPY stream could not be framed. Messages never include data from the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
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
    #[error("binary COPY row is larger than the limit of {limit} bytes")]
    RowTooLarge { limit: usize },
    #[error("binary COPY stream ended before its trailer")]
    Truncated,
    #[error("data after the end of the binary COPY stream")]
    TrailingData,
    #[error("a chunk of the binary COPY stream was not read to its end")]
    Abandoned,
}

impl FrameError {
    /// A stream the server sent that Ferry cannot read is a bug or a broken invariant; a row
    /// over the limit is a value Ferry will not carry.
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            FrameError::RowTooLarge { .. } => crate::ErrorKind::Unsupported,
            _ => crate::ErrorKind::Internal,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Gathering the fixed part of the header in `pending`.
    Header,
    /// Skipping this many more bytes of header extension.
    Extension(u64),
    Tuples,
    /// The trailer was read.
    Done,
    /// An error ended the stream; it is returned again on every later call.
    Failed(FrameError),
}

/// How far the scan of one tuple got: offsets are from the tuple's first byte.
#[derive(Debug, Clone, Copy, Default)]
struct Scan {
    /// Offset of the next length word (0: the field count is not read yet).
    at: usize,
    /// Fields whose length word was read.
    field: usize,
}

enum Progress {
    /// The tuple is complete and this long.
    Complete(usize),
    /// The trailer (two bytes).
    Trailer,
    /// At least this many bytes of the tuple are needed to go on.
    Need(usize),
}

/// Frames one binary COPY stream of rows with a fixed number of fields.
#[derive(Debug)]
pub struct CopyFramer {
    fields: usize,
    max_row_bytes: usize,
    state: State,
    /// The unfinished header, or the first bytes of a row cut by a chunk boundary.
    pending: Vec<u8>,
    /// The scan of the row in `pending`.
    scan: Scan,
    /// `pending` holds a complete row that was handed out; it is cleared on the next call.
    pending_done: bool,
    rows: u64,
}

impl CopyFramer {
    /// A framer for rows of `fields` fields; a row (its field count, length words and data)
    /// longer than `max_row_bytes` is an error.
    pub fn new(fields: usize, max_row_bytes: usize) -> Self {
        CopyFramer {
            fields,
            max_row_bytes,
            state: State::Header,
            pending: Vec::new(),
            scan: Scan::default(),
            pending_done: false,
            rows: 0,
        }
    }

    /// Takes the next piece of the stream (e.g. one CopyData message). Read the returned
    /// [`Rows`] until it gives `None` or an error; a chunk left unread fails the stream with
    /// [`FrameError::Abandoned`].
    pub fn feed<'f, 'c>(&'f mut self, chunk: &'c [u8]) -> Rows<'f, 'c> {
        Rows {
            framer: self,
            chunk,
            pos: 0,
        }
    }

    /// Rows framed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Whether the trailer has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes held for a row cut by a chunk boundary (at most the row limit plus 4).
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// Checks, once the input has ended and every row was read, that the stream was complete;
    /// returns the number of rows.
    pub fn finish(&self) -> Result<u64, FrameError> {
        match &self.state {
            State::Done => Ok(self.rows),
            State::Failed(e) => Err(e.clone()),
            _ => Err(FrameError::Truncated),
        }
    }

    /// The lower-level form of [`CopyFramer::feed`], for a caller that keeps the chunk itself
    /// between calls: the next row of `chunk` from `*pos` on, advancing `*pos` past what was
    /// read. The same chunk must be passed again until `*pos` reaches its end (that is, until
    /// this returns `None` or an error); only then may the next chunk follow, at position 0.
    pub fn next_row<'a>(
        &'a mut self,
        chunk: &'a [u8],
        pos: &mut usize,
    ) -> Result<Option<Row<'a>>, FrameError> {
        let f = self;
        if f.pending_done {
            f.pending_done = false;
            f.scan = Scan::default();
            if f.pending.capacity() > KEEP_BUFFER_BYTES {
                f.pending = Vec::new();
            } else {
                f.pending.clear();
            }
        }
        loop {
            let rest = chunk.get(*pos..).unwrap_or_default();
            match &f.state {
                State::Failed(e) => {
                    *pos = chunk.len();
                    return Err(e.clone());
                }
                State::Header => {
                    let take = (HEADER_LEN - f.pending.len()).min(rest.len());
                    f.pending.extend_from_slice(&rest[..take]);
                    *pos += take;
                    // Reject a wrong stream as soon as its first bytes disagree.
                    let n = f.pending.len().min(SIGNATURE.len());
                    if f.pending[..n] != SIGNATURE[..n] {
                        *pos = chunk.len();
                        return f.fail(FrameError::Signature);
                    }
                    if f.pending.len() < HEADER_LEN {
                        return Ok(None);
                    }
                    let h = &f.pending;
                    let flags = u32::from_be_bytes([h[11], h[12], h[13], h[14]]);
                    let extension = i32::from_be_bytes([h[15], h[16], h[17], h[18]]);
                    f.pending.clear();
                    if flags & 0xFFFF != 0 || flags & FLAG_OIDS != 0 {
                        *pos = chunk.len();
                        return f.fail(FrameError::Flags(flags));
                    }
                    let Ok(extension) = u64::try_from(extension) else {
                        *pos = chunk.len();
                        return f.fail(FrameError::Extension);
                    };
                    f.state = State::Extension(extension);
                }
                State::Extension(left) => {
                    let left = *left;
                    let n = left.min(rest.len() as u64);
                    // `n` is at most `rest.len()`.
                    *pos += n as usize;
                    if n < left {
                        f.state = State::Extension(left - n);
                        return Ok(None);
                    }
                    f.state = State::Tuples;
                }
                State::Done => {
                    if rest.is_empty() {
                        return Ok(None);
                    }
                    *pos = chunk.len();
                    return f.fail(FrameError::TrailingData);
                }
                State::Tuples if !f.pending.is_empty() => {
                    // Finish the row the previous chunks began, taking only what it needs.
                    let mut scan = f.scan;
                    let progress = f.scan(&mut scan, &f.pending);
                    f.scan = scan;
                    match progress {
                        Err(e) => {
                            *pos = chunk.len();
                            return f.fail(e);
                        }
                        Ok(Progress::Trailer) => {
                            f.pending.clear();
                            f.scan = Scan::default();
                            f.state = State::Done;
                        }
                        Ok(Progress::Need(n)) => {
                            let take = (n - f.pending.len()).min(rest.len());
                            if take == 0 {
                                return Ok(None);
                            }
                            f.pending.extend_from_slice(&rest[..take]);
                            *pos += take;
                        }
                        Ok(Progress::Complete(_)) => {
                            f.pending_done = true;
                            f.rows += 1;
                            return Ok(Some(Row::new(&f.pending, f.fields)));
                        }
                    }
                }
                State::Tuples => {
                    if rest.is_empty() {
                        return Ok(None);
                    }
                    let mut scan = Scan::default();
                    match f.scan(&mut scan, rest) {
                        Err(e) => {
                            *pos = chunk.len();
                            return f.fail(e);
                        }
                        Ok(Progress::Trailer) => {
                            *pos += 2;
                            f.state = State::Done;
                        }
                        Ok(Progress::Need(_)) => {
                            // Carry the row's beginning over; the scan so far stays valid.
                            f.pending.extend_from_slice(rest);
                            f.scan = scan;
                            *pos = chunk.len();
                            return Ok(None);
                        }
                        Ok(Progress::Complete(n)) => {
                            *pos += n;
                            f.rows += 1;
                            let fields = f.fields;
                            return Ok(Some(Row::new(&rest[..n], fields)));
                        }
                    }
                }
            }
        }
    }

    fn fail<T>(&mut self, e: FrameError) -> Result<T, FrameError> {
        self.state = State::Failed(e.clone());
        Err(e)
    }

    /// Advances `scan` over `data`, the tuple's bytes from its start (possibly fewer than it has).
    fn scan(&self, scan: &mut Scan, data: &[u8]) -> Result<Progress, FrameError> {
        if scan.at == 0 {
            let Some(count) = data.get(..2) else {
                return Ok(Progress::Need(2));
            };
            let count = i16::from_be_bytes([count[0], count[1]]);
            if count == -1 {
                return Ok(Progress::Trailer);
            }
            if usize::try_from(count).ok() != Some(self.fields) {
                return Err(FrameError::FieldCount {
                    expected: self.fields,
                    got: count,
                });
            }
            scan.at = 2;
        }
        while scan.field < self.fields {
            let Some(word) = data.get(scan.at..scan.at + 4) else {
                return Ok(Progress::Need(scan.at + 4));
            };
            let length = i32::from_be_bytes([word[0], word[1], word[2], word[3]]);
            let data_len = match length {
                -1 => 0,
                n => usize::try_from(n).map_err(|_| FrameError::FieldLength {
                    column: scan.field,
                    length,
                })?,
            };
            // The row so far, with the next field's data (and the length word after it, if any).
            let end = scan.at + 4 + data_len;
            if end > self.max_row_bytes {
                return Err(FrameError::RowTooLarge {
                    limit: self.max_row_bytes,
                });
            }
            scan.at = end;
            scan.field += 1;
        }
        Ok(if data.len() >= scan.at {
            Progress::Complete(scan.at)
        } else {
            Progress::Need(scan.at)
        })
    }
}

/// The rows of one chunk; see [`CopyFramer::feed`].
pub struct Rows<'f, 'c> {
    framer: &'f mut CopyFramer,
    chunk: &'c [u8],
    pos: usize,
}

impl Rows<'_, '_> {
    /// The next complete row, or `None` when the chunk is used up (or the stream is over).
    // A lending iterator: the row borrows from the chunk or the framer's carry-over buffer.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Row<'_>>, FrameError> {
        self.framer.next_row(self.chunk, &mut self.pos)
    }
}

impl Drop for Rows<'_, '_> {
    fn drop(&mut self) {
        let f = &mut *self.framer;
        if self.pos < self.chunk.len() && !matches!(f.state, State::Failed(_)) {
            f.state = State::Failed(FrameError::Abandoned);
        }
    }
}

/// One complete row: its fields in order, each `None` for NULL.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    /// The tuple after its field count.
    body: &'a [u8],
    fields: usize,
}

impl<'a> Row<'a> {
    fn new(tuple: &'a [u8], fields: usize) -> Row<'a> {
        Row {
            body: tuple.get(2..).unwrap_or_default(),
            fields,
        }
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.fields
    }

    pub fn is_empty(&self) -> bool {
        self.fields == 0
    }

    /// The fields in order.
    #[inline]
    pub fn fields(&self) -> Fields<'a> {
        Fields {
            rest: self.body,
            left: self.fields,
        }
    }
}

/// The fields of a [`Row`]: `Some(bytes)`, or `None` for NULL.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> Iterator for Fields<'a> {
    type Item = Option<&'a [u8]>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The framer checked every length; a short row (impossible) just ends early.
        let (word, rest) = self.rest.split_first_chunk::<4>()?;
        let length = i32::from_be_bytes(*word);
        let Ok(n) = usize::try_from(length) else {
            self.rest = rest;
            return Some(None);
        };
        let data = rest.get(..n)?;
        self.rest = &rest[n..];
        Some(Some(data))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left))
    }
}

/// Writing the format, for tests and benchmarks of the readers: the header (with these flags and
/// extension), a tuple, the trailer; and binary arrays (see [`crate::pg_binary`]) to put in them.
pub mod write {
    use super::SIGNATURE;

    pub fn header(out: &mut Vec<u8>, flags: u32, extension: &[u8]) {
        out.extend_from_slice(SIGNATURE);
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&(extension.len() as u32).to_be_bytes());
        out.extend_from_slice(extension);
    }

    pub fn tuple<'a>(out: &mut Vec<u8>, fields: impl IntoIterator<Item = Option<&'a [u8]>>) {
        let count_at = out.len();
        out.extend_from_slice(&[0, 0]);
        let (count, _) = values(out, fields);
        out[count_at..count_at + 2].copy_from_slice(&(count as i16).to_be_bytes());
    }

    /// An array in `array_send` format: `(length, lower bound)` per dimension, the elements in
    /// row-major order.
    pub fn array<'a>(
        out: &mut Vec<u8>,
        element_oid: u32,
        dims: &[(i32, i32)],
        elements: impl IntoIterator<Item = Option<&'a [u8]>>,
    ) {
        out.extend_from_slice(&(dims.len() as i32).to_be_bytes());
        let has_nulls_at = out.len();
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&element_oid.to_be_bytes());
        for (len, lower) in dims {
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&lower.to_be_bytes());
        }
        let (_, nulls) = values(out, elements);
        out[has_nulls_at..has_nulls_at + 4].copy_from_slice(&i32::from(nulls).to_be_bytes());
    }

    /// Length-prefixed values (−1 for NULL); how many, and whether one was NULL.
    fn values<'a>(
        out: &mut Vec<u8>,
        values: impl IntoIterator<Item = Option<&'a [u8]>>,
    ) -> (usize, bool) {
        let (mut count, mut nulls) = (0, false);
        for value in values {
            match value {
                None => {
                    out.extend_from_slice(&(-1i32).to_be_bytes());
                    nulls = true;
                }
                Some(b) => {
                    out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    out.extend_from_slice(b);
                }
            }
            count += 1;
        }
        (count, nulls)
    }

    pub fn trailer(out: &mut Vec<u8>) {
        out.extend_from_slice(&(-1i16).to_be_bytes());
    }
}

#[cfg(test)]
mod tests;
