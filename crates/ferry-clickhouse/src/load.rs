//! One range of the initial load: a binary COPY stream in, one streamed insert out.
//!
//! The source sends each field in the canonical binary form of its column's kind
//! ([`ferry_core::canonical`]); each row is framed in place ([`ferry_core::binary_copy`]) and
//! written as RowBinary with version 0 (below every streamed change) into one insert, sent in
//! chunks as it grows, so memory stays bounded whatever the range's size.

use async_trait::async_trait;
use bytes::Bytes;
use ferry_core::binary_copy::{CopyFramer, DEFAULT_MAX_ROW_BYTES};
use ferry_core::destination::{LoadSink, Summary, TableSpec, TargetName};
use ferry_core::{canonical, ColumnSchema, Error, Value};

use crate::table::{ClickHouse, RowInsert, WriteError};

/// The sink of one range.
pub struct RangeSink {
    framer: CopyFramer,
    insert: RowInsert,
    columns: Vec<ColumnSchema>,
    values: Vec<Value>,
}

impl RangeSink {
    pub(crate) fn new(ch: &ClickHouse, table: &TableSpec, into: &TargetName) -> RangeSink {
        RangeSink {
            framer: CopyFramer::new(table.columns.len(), DEFAULT_MAX_ROW_BYTES),
            insert: ch.insert(&into.namespace, &into.table, &table.columns),
            columns: table.columns.clone(),
            values: Vec::with_capacity(table.columns.len()),
        }
    }
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
        let RangeSink {
            framer,
            insert,
            columns,
            values,
        } = self;
        let frame_err = |e: ferry_core::binary_copy::FrameError| {
            Error::new(e.kind(), "XX000", format!("reading the COPY stream: {e}"))
        };
        let mut rows = framer.feed(&chunk);
        while let Some(row) = rows.next().map_err(frame_err)? {
            values.clear();
            for (field, c) in row.fields().zip(columns.iter()) {
                values.push(match field {
                    None => Value::Null,
                    Some(raw) => canonical::decode(&c.kind, raw)
                        .map_err(|e| Error::from(e).context(format!("column \"{}\"", c.name)))?,
                });
            }
            insert
                .push(values, 0, false)
                .await
                .map_err(|e| column_error(columns, e))?;
        }
        Ok(())
    }

    fn rows(&self) -> u64 {
        self.insert.rows()
    }

    async fn finish(self: Box<Self>) -> Result<Summary, Error> {
        let RangeSink { framer, insert, .. } = *self;
        framer
            .finish()
            .map_err(|e| Error::new(e.kind(), "XX000", format!("reading the COPY stream: {e}")))?;
        let rows = insert.finish().await?;
        Ok(Summary {
            rows,
            substitutions: Vec::new(),
        })
    }
}
