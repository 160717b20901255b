//! One range of the initial load: a binary COPY stream in, one streamed insert out.
//!
//! The source sends each field in the canonical binary form of its column's kind
//! ([`ferry_core::canonical`]). Each row is framed in place ([`ferry_core::binary_copy`]),
//! transcoded field by field into ClickHouse's columnar `Native` format ([`crate::transcode`],
//! [`crate::native`]) with version 0 (below every streamed change), and sent as bounded blocks
//! of one insert: no value is materialised per cell, and memory stays bounded by the block
//! size whatever the range's size. Values a column cannot hold are replaced or refused as the
//! mirror's policy says ([`crate::unrepresentable`]), and counted.

use async_trait::async_trait;
use bytes::Bytes;
use ferry_core::binary_copy::{CopyFramer, FrameError, DEFAULT_MAX_ROW_BYTES};
use ferry_core::destination::{LoadSink, Substitution, Summary, TableSpec, TargetName};
use ferry_core::mirror::Unrepresentable;
use ferry_core::{ColumnSchema, Error};

use crate::identity;
use crate::native::NativeBlock;
use crate::table::{ClickHouse, RowInsert, WriteError};
use crate::transcode::{TranscodeError, Transcoder};
use crate::unrepresentable::{Substitutions, UnrepresentablePolicy};

/// Rows of a `Native` block, and its bytes, at most: memory is bounded by workers × block.
pub(crate) const BLOCK_ROWS: usize = 65_536;
pub(crate) const BLOCK_BYTES: usize = 1 << 20;

/// The mirror's policy, as this crate names it.
pub(crate) fn policy(p: Unrepresentable) -> UnrepresentablePolicy {
    match p {
        Unrepresentable::Substitute => UnrepresentablePolicy::Substitute,
        Unrepresentable::Fail => UnrepresentablePolicy::Fail,
    }
}

/// The substitutions of a range or a write, as the engine reports them.
pub(crate) fn summarise(
    table: i64,
    columns: &[ColumnSchema],
    s: &Substitutions,
) -> Vec<Substitution> {
    columns
        .iter()
        .zip(s.columns())
        .filter(|(_, s)| s.count > 0)
        .map(|(c, s)| Substitution {
            table,
            column: c.name.clone(),
            count: s.count,
            example_key: s.example_key.clone(),
        })
        .collect()
}

/// The sink of one range.
pub struct RangeSink {
    framer: CopyFramer,
    transcoder: Transcoder,
    block: NativeBlock,
    out: Vec<u8>,
    insert: RowInsert,
    columns: Vec<ColumnSchema>,
    table: i64,
    /// For a table without a key: the range, whose rows' ids are numbered in it.
    identity: Option<i32>,
    /// Rows sent, and rows in the block not sent yet.
    rows: u64,
}

impl RangeSink {
    /// `converts`: some of the table's column types were chosen in place of the mapped ones,
    /// and ClickHouse converts the rows as they arrive.
    pub(crate) fn new(
        ch: &ClickHouse,
        table: &TableSpec,
        into: &TargetName,
        range: i32,
        policy: UnrepresentablePolicy,
        converts: bool,
    ) -> Result<RangeSink, Error> {
        let meta = [ch.meta().version.as_str(), ch.meta().is_deleted.as_str()];
        let stored = identity::storage_columns(&table.columns);
        Ok(RangeSink {
            framer: CopyFramer::new(table.columns.len(), DEFAULT_MAX_ROW_BYTES),
            transcoder: Transcoder::new(&stored, policy).map_err(transcode_error)?,
            block: NativeBlock::named(&stored, meta, BLOCK_ROWS, BLOCK_BYTES),
            out: Vec::new(),
            insert: ch.insert_for(&into.namespace, &into.table, &stored, true, converts),
            columns: table.columns.clone(),
            table: table.id,
            identity: identity::keyless(&table.columns).then_some(range),
            rows: 0,
        })
    }

    /// Sends the block's rows.
    async fn send_block(&mut self) -> Result<(), Error> {
        send_block(&mut self.block, &mut self.out, &mut self.insert).await
    }
}

/// Sends a block's rows as the next piece of `insert` (`out` is scratch space).
pub(crate) async fn send_block(
    block: &mut NativeBlock,
    out: &mut Vec<u8>,
    insert: &mut RowInsert,
) -> Result<(), Error> {
    let n = block.rows() as u64;
    if n == 0 {
        return Ok(());
    }
    block.finish(out);
    insert.send_encoded(std::mem::take(out), n).await?;
    Ok(())
}

pub(crate) fn frame_error(e: FrameError) -> Error {
    Error::new(e.kind(), "XX000", format!("reading the COPY stream: {e}"))
}

pub(crate) fn transcode_error(e: TranscodeError) -> Error {
    Error::new(e.kind(), "22000", e.to_string())
}

/// Names the column of an encoding error.
pub(crate) fn column_error(columns: &[ColumnSchema], e: WriteError) -> Error {
    match e {
        WriteError::Encode { column, source } => Error::new(
            source.kind(),
            "22000",
            format!(
                "column \"{}\": {source}",
                columns.get(column).map(|c| c.name.as_str()).unwrap_or("?")
            ),
        ),
        other => other.into(),
    }
}

#[async_trait]
impl LoadSink for RangeSink {
    async fn write(&mut self, chunk: Bytes) -> Result<(), Error> {
        let mut pos = 0;
        loop {
            let full = {
                let Some(row) = self
                    .framer
                    .next_row(&chunk, &mut pos)
                    .map_err(frame_error)?
                else {
                    break;
                };
                match self.identity {
                    None => self
                        .transcoder
                        .append_native(row.fields(), 0, false, &mut self.block),
                    Some(range) => {
                        let hash = identity::row_hash(row.fields()).to_be_bytes();
                        let id = identity::load_row_id(range, self.rows).to_be_bytes();
                        let extra = [Some(&hash[..]), Some(&id[..])];
                        self.transcoder.append_native(
                            row.fields().chain(extra),
                            0,
                            false,
                            &mut self.block,
                        )
                    }
                }
                .map_err(transcode_error)?;
                self.rows += 1;
                self.block.is_full()
            };
            if full {
                self.send_block().await?;
            }
        }
        Ok(())
    }

    fn rows(&self) -> u64 {
        self.rows
    }

    async fn finish(mut self: Box<Self>) -> Result<Summary, Error> {
        self.framer.finish().map_err(frame_error)?;
        self.send_block().await?;
        let substitutions = summarise(self.table, &self.columns, self.transcoder.substitutions());
        let RangeSink { insert, .. } = *self;
        let rows = insert.finish().await?;
        Ok(Summary {
            rows,
            substitutions,
        })
    }
}
