//! Decoding pgoutput, the output plugin of PostgreSQL's built-in logical replication.
//!
//! Each XLogData message of a replication stream carries one pgoutput message
//! ([`PgOutputMessage`]). A transaction arrives as Begin, its changes (Insert, Update,
//! Delete, Truncate, transactional Message), then Commit. Before the first change to a table
//! in a session, and again whenever its definition changed, a Relation message describes it
//! (Type messages likewise describe non-built-in column types); changes refer to it by oid.
//!
//! With protocol version 2 and `streaming 'on'`, a transaction that outgrows
//! `logical_decoding_work_mem` is sent while still in progress: in blocks between Stream Start
//! and Stream Stop, possibly interleaved with other transactions, and finally confirmed by
//! Stream Commit or discarded by Stream Abort (of the whole transaction or of one
//! subtransaction). Inside such a block every message except Origin begins with the
//! transaction's xid; outside one, none does. Nothing in a message says which case it is,
//! so [`PgOutputDecoder`] remembers whether it is inside a block.
//!
//! Column values ([`TupleColumn`]) are text as the column type's output function prints it
//! (or binary with `binary 'true'`, which Ferry does not ask for); a TOASTed value that an
//! UPDATE left unchanged is not sent at all ([`TupleColumn::UnchangedToast`]), and the apply
//! side must keep the value it has. Values and message contents are slices of the received
//! buffer, not copies.
//!
//! The decoder never panics on malformed input: every read is bounds-checked and a bad
//! message is a [`DecodeError`].

use bytes::Bytes;
use ferry_core::{ErrorKind, Lsn};

use crate::connect::SourceError;

/// One pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutputMessage {
    /// A transaction starts; `final_lsn` is the LSN of its commit record.
    Begin {
        final_lsn: Lsn,
        commit_time_micros: i64,
        xid: u32,
    },
    /// A transaction committed; `end_lsn` is just past its commit record, the position to
    /// confirm once it is applied.
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time_micros: i64,
    },
    /// The transaction was replicated from another node.
    Origin {
        commit_lsn: Lsn,
        name: String,
    },
    Relation(RelationBody),
    Type(TypeBody),
    Insert {
        xid: Option<u32>,
        relation_id: u32,
        new: TupleData,
    },
    /// `old` is sent when the replica identity changed (`Key`) or is FULL (`Full`).
    Update {
        xid: Option<u32>,
        relation_id: u32,
        old: Option<OldTuple>,
        new: TupleData,
    },
    Delete {
        xid: Option<u32>,
        relation_id: u32,
        old: OldTuple,
    },
    Truncate {
        xid: Option<u32>,
        cascade: bool,
        restart_identity: bool,
        relation_ids: Vec<u32>,
    },
    /// A `pg_logical_emit_message` message (with the `messages` option). A transactional
    /// one arrives inside its transaction at commit; a non-transactional one as soon as it
    /// is decoded, outside any Begin/Commit and so before the commit of the transaction
    /// that emitted it.
    Message {
        xid: Option<u32>,
        transactional: bool,
        /// Where the message's WAL record ends (not where it starts).
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
    /// A block of a streamed in-progress transaction begins.
    StreamStart {
        xid: u32,
        first_segment: bool,
    },
    /// The current block of a streamed transaction ends.
    StreamStop,
    /// A streamed transaction committed.
    StreamCommit {
        xid: u32,
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time_micros: i64,
    },
    /// A streamed transaction (`subxid == xid`) or one of its subtransactions aborted.
    /// Protocol version 4 (parallel streaming) adds where and when.
    StreamAbort {
        xid: u32,
        subxid: u32,
        abort_lsn: Option<Lsn>,
        abort_time_micros: Option<i64>,
    },
}

/// A table's description, sent before the first change to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationBody {
    /// The streamed transaction it belongs to.
    pub xid: Option<u32>,
    /// The table's oid.
    pub id: u32,
    /// The schema (`pg_catalog`, which pgoutput sends as an empty string, is spelt out).
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    /// The columns the tuples carry, in order (dropped and generated columns are left out).
    pub columns: Vec<RelationColumn>,
}

/// One column of a [`RelationBody`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity (every column is, with REPLICA IDENTITY FULL).
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    /// `atttypmod`: -1, or the length, precision and scale a type was declared with.
    pub type_modifier: i32,
}

/// A non-built-in type's name, sent before a Relation that uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeBody {
    pub xid: Option<u32>,
    pub id: u32,
    pub namespace: String,
    pub name: String,
}

/// `relreplident`: which old values UPDATE and DELETE carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `d`: the primary key.
    Default,
    /// `n`: nothing.
    Nothing,
    /// `f`: all columns.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

/// The old row of an UPDATE or DELETE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: only the replica identity columns are set, the others are `Null`.
    Key(TupleData),
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full(TupleData),
}

impl OldTuple {
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// A row's values, in the order of the relation's columns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TupleData {
    pub columns: Vec<TupleColumn>,
}

/// One value of a [`TupleData`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleColumn {
    /// `n`
    Null,
    /// `u`: a TOASTed value the change did not touch; it is not sent.
    UnchangedToast,
    /// `t`: the type's text output.
    Text(Bytes),
    /// `b`: the type's binary send format.
    Binary(Bytes),
}

/// A pgoutput message that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message")]
    Empty,
    #[error("unknown pgoutput message type {0:?}")]
    UnknownMessage(char),
    #[error("pgoutput {message} message is truncated: {needed} bytes needed at offset {offset}")]
    Truncated {
        message: &'static str,
        offset: usize,
        needed: usize,
    },
    #[error("invalid pgoutput {message} message: {detail}")]
    Invalid {
        message: &'static str,
        detail: String,
    },
    #[error("pgoutput {message} message has {count} bytes too many")]
    TrailingBytes { message: &'static str, count: usize },
}

impl From<DecodeError> for SourceError {
    fn from(e: DecodeError) -> SourceError {
        SourceError {
            kind: ErrorKind::Internal,
            sqlstate: "XX000".into(),
            message: e.to_string(),
            hint: None,
            source: None,
        }
    }
}

/// Decodes the messages of one replication stream, tracking Stream Start/Stop blocks.
#[derive(Debug, Default, Clone)]
pub struct PgOutputDecoder {
    in_stream: bool,
}

impl PgOutputDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the last message left us inside a Stream Start … Stream Stop block.
    pub fn in_stream(&self) -> bool {
        self.in_stream
    }

    /// Decodes the data of one XLogData message.
    pub fn decode(&mut self, data: Bytes) -> Result<PgOutputMessage, DecodeError> {
        let m = decode(data, self.in_stream)?;
        match &m {
            PgOutputMessage::StreamStart { .. } if self.in_stream => {
                return Err(invalid("Stream Start", "already inside a streamed block"));
            }
            PgOutputMessage::StreamStart { .. } => self.in_stream = true,
            PgOutputMessage::StreamStop if !self.in_stream => {
                return Err(invalid("Stream Stop", "not inside a streamed block"));
            }
            PgOutputMessage::StreamStop => self.in_stream = false,
            _ => {}
        }
        Ok(m)
    }
}

/// Decodes one message; `in_stream` says whether it is inside a Stream Start … Stream Stop
/// block, where changes carry their transaction's xid.
pub fn decode(data: Bytes, in_stream: bool) -> Result<PgOutputMessage, DecodeError> {
    let tag = *data.first().ok_or(DecodeError::Empty)?;
    let name = match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        b'S' => "Stream Start",
        b'E' => "Stream Stop",
        b'c' => "Stream Commit",
        b'A' => "Stream Abort",
        other => return Err(DecodeError::UnknownMessage(other as char)),
    };
    let mut r = Reader {
        buf: data,
        pos: 1,
        message: name,
    };
    let xid = |r: &mut Reader| -> Result<Option<u32>, DecodeError> {
        if in_stream {
            r.u32().map(Some)
        } else {
            Ok(None)
        }
    };
    let m = match tag {
        b'B' => PgOutputMessage::Begin {
            final_lsn: r.lsn()?,
            commit_time_micros: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => PgOutputMessage::Commit {
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_time_micros: r.i64()?,
        },
        b'O' => PgOutputMessage::Origin {
            commit_lsn: r.lsn()?,
            name: r.string()?,
        },
        b'R' => {
            let xid = xid(&mut r)?;
            PgOutputMessage::Relation(relation(&mut r, xid)?)
        }
        b'Y' => PgOutputMessage::Type(TypeBody {
            xid: xid(&mut r)?,
            id: r.u32()?,
            namespace: r.namespace()?,
            name: r.string()?,
        }),
        b'I' => {
            let xid = xid(&mut r)?;
            let relation_id = r.u32()?;
            match r.u8()? {
                b'N' => {}
                k => return Err(r.invalid(format!("expected new tuple 'N', got {:?}", k as char))),
            }
            PgOutputMessage::Insert {
                xid,
                relation_id,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let xid = xid(&mut r)?;
            let relation_id = r.u32()?;
            let (old, next) = match r.u8()? {
                b'K' => (Some(OldTuple::Key(r.tuple()?)), r.u8()?),
                b'O' => (Some(OldTuple::Full(r.tuple()?)), r.u8()?),
                k => (None, k),
            };
            if next != b'N' {
                return Err(r.invalid(format!("expected new tuple 'N', got {:?}", next as char)));
            }
            PgOutputMessage::Update {
                xid,
                relation_id,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let xid = xid(&mut r)?;
            let relation_id = r.u32()?;
            let old = match r.u8()? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                k => {
                    return Err(r.invalid(format!(
                        "expected old key 'K' or old tuple 'O', got {:?}",
                        k as char
                    )))
                }
            };
            PgOutputMessage::Delete {
                xid,
                relation_id,
                old,
            }
        }
        b'T' => {
            let xid = xid(&mut r)?;
            let count = r.count_i32("relation count")?;
            let flags = r.u8()?;
            let mut relation_ids = Vec::with_capacity(count.min(r.remaining() / 4));
            for _ in 0..count {
                relation_ids.push(r.u32()?);
            }
            PgOutputMessage::Truncate {
                xid,
                cascade: flags & 1 != 0,
                restart_identity: flags & 2 != 0,
                relation_ids,
            }
        }
        b'M' => {
            let xid = xid(&mut r)?;
            let flags = r.u8()?;
            let lsn = r.lsn()?;
            let prefix = r.string()?;
            let len = r.count_i32("content length")?;
            PgOutputMessage::Message {
                xid,
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.bytes(len)?,
            }
        }
        b'S' => PgOutputMessage::StreamStart {
            xid: r.u32()?,
            first_segment: r.u8()? == 1,
        },
        b'E' => PgOutputMessage::StreamStop,
        b'c' => PgOutputMessage::StreamCommit {
            xid: r.u32()?,
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_time_micros: r.i64()?,
        },
        _ => {
            // b'A', the last of the tags accepted above.
            let xid = r.u32()?;
            let subxid = r.u32()?;
            let (abort_lsn, abort_time_micros) = if r.remaining() == 0 {
                (None, None)
            } else {
                (Some(r.lsn()?), Some(r.i64()?))
            };
            PgOutputMessage::StreamAbort {
                xid,
                subxid,
                abort_lsn,
                abort_time_micros,
            }
        }
    };
    r.finish()?;
    Ok(m)
}

fn relation(r: &mut Reader, xid: Option<u32>) -> Result<RelationBody, DecodeError> {
    let id = r.u32()?;
    let namespace = r.namespace()?;
    let name = r.string()?;
    let replica_identity = match r.u8()? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        other => {
            return Err(r.invalid(format!("unknown replica identity {:?}", other as char)));
        }
    };
    let count = usize::from(r.u16()?);
    let mut columns = Vec::with_capacity(count.min(r.remaining()));
    for _ in 0..count {
        columns.push(RelationColumn {
            is_key: r.u8()? & 1 != 0,
            name: r.string()?,
            type_oid: r.u32()?,
            type_modifier: r.i32()?,
        });
    }
    Ok(RelationBody {
        xid,
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn invalid(message: &'static str, detail: &str) -> DecodeError {
    DecodeError::Invalid {
        message,
        detail: detail.to_owned(),
    }
}

/// A bounds-checked cursor over one message.
struct Reader {
    buf: Bytes,
    pos: usize,
    message: &'static str,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let end = self.end(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.pos..end]);
        self.pos = end;
        Ok(out)
    }

    /// Where `n` bytes from here end, if they are there.
    fn end(&self, n: usize) -> Result<usize, DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                message: self.message,
                offset: self.pos,
                needed: n - self.remaining(),
            });
        }
        Ok(self.pos + n)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.take().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.take().map(u32::from_be_bytes)
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        self.take().map(i32::from_be_bytes)
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        self.take().map(i64::from_be_bytes)
    }

    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        self.take().map(u64::from_be_bytes).map(Lsn)
    }

    /// An Int32 count or length, which must not be negative.
    fn count_i32(&mut self, what: &str) -> Result<usize, DecodeError> {
        let n = self.i32()?;
        usize::try_from(n).map_err(|_| self.invalid(format!("negative {what} {n}")))
    }

    /// `n` bytes, sharing the message's buffer.
    fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let end = self.end(n)?;
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::Truncated {
                message: self.message,
                offset: self.buf.len(),
                needed: 1,
            });
        };
        let s = std::str::from_utf8(&rest[..len])
            .map_err(|_| self.invalid("a name is not valid UTF-8".into()))?
            .to_owned();
        self.pos += len + 1;
        Ok(s)
    }

    /// A schema name; pgoutput abbreviates `pg_catalog` to the empty string.
    fn namespace(&mut self) -> Result<String, DecodeError> {
        let s = self.string()?;
        Ok(if s.is_empty() { "pg_catalog".into() } else { s })
    }

    fn tuple(&mut self) -> Result<TupleData, DecodeError> {
        let count = usize::from(self.u16()?);
        let mut columns = Vec::with_capacity(count.min(self.remaining()));
        for _ in 0..count {
            let column = match self.u8()? {
                b'n' => TupleColumn::Null,
                b'u' => TupleColumn::UnchangedToast,
                b't' => {
                    let len = self.count_i32("value length")?;
                    TupleColumn::Text(self.bytes(len)?)
                }
                b'b' => {
                    let len = self.count_i32("value length")?;
                    TupleColumn::Binary(self.bytes(len)?)
                }
                other => {
                    return Err(self.invalid(format!("unknown column kind {:?}", other as char)));
                }
            };
            columns.push(column);
        }
        Ok(TupleData { columns })
    }

    fn invalid(&self, detail: String) -> DecodeError {
        DecodeError::Invalid {
            message: self.message,
            detail,
        }
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                message: self.message,
                count,
            }),
        }
    }
}

#[cfg(test)]
mod tests;
