//! One range of the initial load (or one partition of a query mirror's run): the source's
//! binary COPY stream into the destination's `COPY … FROM STDIN (FORMAT binary)`, in one
//! transaction with the range's record.
//!
//! The source reads the columns as they are (the destination asks for [`Wire::Native`]), so
//! the stream is already what the destination's COPY takes: where no column needs its values
//! rewritten ([`crate::recode`]), the bytes pass through as they came, only framed to count
//! rows; otherwise each row is framed and its fields rewritten as needed. Bytes are sent in
//! pieces of about 256 KiB, so memory stays bounded whatever the range's size.
//!
//! The range's rows and its line in `_ferry.loaded_ranges` (a partition's in
//! `_ferry.loaded_partitions`) commit together: after a crash, a range is either wholly in the
//! table and recorded (and [`crate::PgDestination`] answers `Load::Done` for it), or absent. A
//! target may run a statement before the `COPY` and one after it in the same transaction (a
//! query mirror's upsert stages its rows and applies them so, [`crate::qrep`]).
//!
//! [`Wire::Native`]: ferry_core::destination::Wire::Native

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use ferry_core::binary_copy::{write, CopyFramer, FrameError, DEFAULT_MAX_ROW_BYTES};
use ferry_core::destination::{LoadSink, Summary};
use ferry_core::{Error, ErrorKind};
use futures::SinkExt;
use tokio_postgres::{Client, CopyInSink};

use crate::db::{Db, MirrorId};
use crate::recode::Recode;
use crate::state::{self, Loaded};

/// Bytes gathered before they are sent.
const SEND_BYTES: usize = 256 * 1024;

/// Where a range goes.
pub(crate) struct RangeTarget {
    pub mirror: MirrorId,
    /// The destination table's OID (the range's record names it).
    pub table_oid: u32,
    /// What the line committed with the rows records.
    pub record: Loaded,
    /// Run in the transaction before the `COPY`.
    pub before: Option<String>,
    /// `COPY "s"."t" ("a", …) FROM STDIN (FORMAT binary)`.
    pub copy_sql: String,
    /// Run in the transaction after the `COPY`, before the record.
    pub after: Option<String>,
    /// Per column, how its values are rewritten; `None` when every column passes as it is.
    pub recode: Option<Arc<Vec<Recode>>>,
}

/// The sink of one range.
pub(crate) struct RangeSink {
    db: Db,
    client: Client,
    sink: Pin<Box<CopyInSink<Bytes>>>,
    framer: CopyFramer,
    target: RangeTarget,
    buf: Vec<u8>,
    rows: u64,
    header_written: bool,
}

fn frame_err(e: FrameError) -> Error {
    Error::new(e.kind(), "XX000", format!("reading the COPY stream: {e}"))
}

impl RangeSink {
    pub(crate) async fn open(
        db: Db,
        target: RangeTarget,
        columns: usize,
    ) -> Result<RangeSink, Error> {
        let client = db.connect("ferry load").await?;
        client.batch_execute("BEGIN").await.map_err(db.err())?;
        if let Some(sql) = &target.before {
            client.batch_execute(sql).await.map_err(db.err())?;
        }
        let sink = client
            .copy_in::<_, Bytes>(target.copy_sql.as_str())
            .await
            .map_err(db.err())?;
        Ok(RangeSink {
            db,
            client,
            sink: Box::pin(sink),
            framer: CopyFramer::new(columns, DEFAULT_MAX_ROW_BYTES),
            target,
            buf: Vec::with_capacity(SEND_BYTES + 64 * 1024),
            rows: 0,
            header_written: false,
        })
    }

    async fn send(&mut self) -> Result<(), Error> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(SEND_BYTES + 64 * 1024),
        ));
        self.sink.feed(chunk).await.map_err(self.db.err())
    }
}

#[async_trait]
impl LoadSink for RangeSink {
    async fn write(&mut self, chunk: Bytes) -> Result<(), Error> {
        match self.target.recode.clone() {
            None => {
                let mut rows = self.framer.feed(&chunk);
                let mut n = 0;
                while rows.next().map_err(frame_err)?.is_some() {
                    n += 1;
                }
                self.rows += n;
                self.buf.extend_from_slice(&chunk);
            }
            Some(recode) => {
                if !self.header_written {
                    write::header(&mut self.buf, 0, &[]);
                    self.header_written = true;
                }
                let RangeSink {
                    framer, buf, rows, ..
                } = self;
                let mut it = framer.feed(&chunk);
                while let Some(row) = it.next().map_err(frame_err)? {
                    buf.extend_from_slice(&(row.len() as i16).to_be_bytes());
                    for (i, field) in row.fields().enumerate() {
                        let Some(raw) = field else {
                            buf.extend_from_slice(&(-1i32).to_be_bytes());
                            continue;
                        };
                        let at = buf.len();
                        buf.extend_from_slice(&[0; 4]);
                        recode[i].apply(raw, buf).map_err(|e| {
                            Error::new(
                                ErrorKind::Internal,
                                "22P03",
                                format!("column {} of the COPY stream: {e}", i + 1),
                            )
                        })?;
                        let len = (buf.len() - at - 4) as i32;
                        buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
                    }
                    *rows += 1;
                }
            }
        }
        if self.buf.len() >= SEND_BYTES {
            self.send().await?;
        }
        Ok(())
    }

    fn rows(&self) -> u64 {
        self.rows
    }

    async fn finish(mut self: Box<Self>) -> Result<Summary, Error> {
        self.framer.finish().map_err(frame_err)?;
        if self.target.recode.is_some() {
            if !self.header_written {
                write::header(&mut self.buf, 0, &[]);
            }
            write::trailer(&mut self.buf);
        }
        self.send().await?;
        let copied = self.sink.as_mut().finish().await.map_err(self.db.err())?;
        let t = &self.target;
        if let Some(sql) = &t.after {
            self.client
                .batch_execute(sql)
                .await
                .map_err(self.db.err())?;
        }
        state::record(
            &self.db,
            &self.client,
            &t.mirror,
            t.table_oid,
            t.record,
            copied,
        )
        .await?;
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(self.db.err())?;
        Ok(Summary {
            rows: copied,
            substitutions: Vec::new(),
        })
    }
}
