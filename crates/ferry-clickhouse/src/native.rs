//! ClickHouse's `Native` format: rows gathered into columnar blocks.
//!
//! ClickHouse parses `Native` more cheaply than `RowBinary` (its own column layout, each column
//! read in one go): on a 2-core machine, inserting 5 M `pgbench_accounts` rows costs it about
//! 17 % less CPU, and a wide mixed table about 30 % less time. A [`NativeBlock`] takes rows
//! already in RowBinary (as [`crate::transcode::Transcoder`] and [`crate::rowbinary::encode`]
//! write them, so every value, NULL and substitution is decided in one place) and transposes
//! them into one block's columns; [`NativeBlock::finish`] writes the block.
//!
//! A block is (integers as LEB128 `VarUInt`, strings length-prefixed):
//!
//! ```text
//! columns VarUInt | rows VarUInt | per column: name String | type String | data
//! ```
//!
//! and each column's data is the bulk form of its type, for all the block's rows:
//!
//! | type | data |
//! |---|---|
//! | fixed-width (`Int32`, `Decimal`, `UUID`, `Date32`, `DateTime64`, …) | the values back to back, as in RowBinary |
//! | `String` | per row: `VarUInt` length and the bytes, as in RowBinary |
//! | `Nullable(T)` | a null map (a byte per row, 1 for NULL), then `T`'s data for every row (NULL rows hold `T`'s default: zeros, or the empty string) |
//! | `Array(T)` | the offsets (`UInt64` per row: the running total of elements), then `T`'s data for all elements |
//! | `Variant(T)` | a `UInt64` 0 (the basic discriminator mode), a discriminator per row (255 for NULL, 0 for `T`), then `T`'s data for the rows that are not NULL |
//!
//! A block holds at most the rows and bytes given to [`NativeBlock::new`]; the caller finishes
//! it when [`NativeBlock::is_full`] says so, so memory stays bounded by one block per insert.

use ferry_core::ident::ch_ident;
use ferry_core::{ColumnSchema, ValueKind};

use crate::cell::{self, leb128, string, Marker, ScalarKind};
use crate::rowbinary::EncodeError;
use crate::table::{IS_DELETED_COLUMN, VERSION_COLUMN};
use crate::transcode::{self, ColumnPlan, Field, Plan, RowTarget};
use crate::types::clickhouse_type;
use crate::unrepresentable::{Unrepresentable, UnrepresentablePolicy};

/// Why a row in RowBinary could not be taken apart. Only a row not written for these columns
/// gets here: a bug, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("RowBinary row does not match its columns (column {column})")]
pub struct RowShapeError {
    pub column: usize,
}

/// How one column's values are laid out.
#[derive(Debug, Clone)]
enum Layout {
    Fixed(usize),
    String,
    Nullable(Box<Layout>),
    /// `levels` nested arrays of `Nullable(element)`.
    Array {
        levels: usize,
        element: Box<Layout>,
    },
    /// A one-member `Variant` around an array.
    Variant(Box<Layout>),
}

impl Layout {
    fn scalar(kind: &ValueKind) -> Layout {
        match kind {
            ValueKind::Array { element, dims } => Layout::Array {
                levels: usize::from((*dims).max(1)),
                element: Box::new(Layout::Nullable(Box::new(Layout::scalar(element)))),
            },
            // A kind without a ClickHouse type has no rows to take; its width does not matter.
            _ => match ScalarKind::of(kind).ok().map(cell::width) {
                Some(None) => Layout::String,
                Some(Some(w)) => Layout::Fixed(w),
                None => Layout::Fixed(32),
            },
        }
    }

    fn of(kind: &ValueKind, nullable: bool) -> Layout {
        let inner = Layout::scalar(kind);
        match (nullable, &inner) {
            (false, _) => inner,
            (true, Layout::Array { .. }) => Layout::Variant(Box::new(inner)),
            (true, _) => Layout::Nullable(Box::new(inner)),
        }
    }
}

/// One column's data so far.
#[derive(Debug)]
enum Column {
    Fixed {
        width: usize,
        data: Vec<u8>,
    },
    String {
        data: Vec<u8>,
    },
    Nullable {
        nulls: Vec<u8>,
        inner: Box<Column>,
    },
    Array {
        /// Per level, the running element counts (`UInt64` little-endian).
        offsets: Vec<Vec<u8>>,
        /// Per level, the elements so far.
        totals: Vec<u64>,
        element: Box<Column>,
    },
    Variant {
        discriminators: Vec<u8>,
        inner: Box<Column>,
    },
}

impl Column {
    fn new(layout: &Layout) -> Column {
        match layout {
            Layout::Fixed(width) => Column::Fixed {
                width: *width,
                data: Vec::new(),
            },
            Layout::String => Column::String { data: Vec::new() },
            Layout::Nullable(inner) => Column::Nullable {
                nulls: Vec::new(),
                inner: Box::new(Column::new(inner)),
            },
            Layout::Array { levels, element } => Column::Array {
                offsets: vec![Vec::new(); *levels],
                totals: vec![0; *levels],
                element: Box::new(Column::new(element)),
            },
            Layout::Variant(inner) => Column::Variant {
                discriminators: Vec::new(),
                inner: Box::new(Column::new(inner)),
            },
        }
    }

    /// Takes one value off the front of `row` (RowBinary); `None` when it is not there.
    fn take(&mut self, row: &mut &[u8]) -> Option<()> {
        match self {
            Column::Fixed { width, data } => match *width {
                // Constant sizes, so that each is a plain move rather than a call to copy.
                1 => take_n::<1>(row, data)?,
                2 => take_n::<2>(row, data)?,
                4 => take_n::<4>(row, data)?,
                8 => take_n::<8>(row, data)?,
                16 => take_n::<16>(row, data)?,
                w => data.extend_from_slice(take(row, w)?),
            },
            Column::String { data } => {
                let start = *row;
                let len = read_leb128(row)?;
                let len = usize::try_from(len).ok()?;
                take(row, len)?;
                data.extend_from_slice(&start[..start.len() - row.len()]);
            }
            Column::Nullable { nulls, inner } => {
                let marker = *take(row, 1)?.first()?;
                match marker {
                    0 => inner.take(row)?,
                    1 => inner.default_value(),
                    _ => return None,
                }
                nulls.push(marker);
            }
            Column::Array {
                offsets,
                totals,
                element,
            } => array_level(offsets, totals, 0, element, row)?,
            Column::Variant {
                discriminators,
                inner,
            } => {
                let d = *take(row, 1)?.first()?;
                match d {
                    0 => inner.take(row)?,
                    255 => {}
                    _ => return None,
                }
                discriminators.push(d);
            }
        }
        Some(())
    }

    /// Appends the type's default, the value a NULL row holds under its null map.
    fn default_value(&mut self) {
        match self {
            Column::Fixed { width, data } => data.resize(data.len() + *width, 0),
            Column::String { data } => data.push(0),
            Column::Nullable { nulls, inner } => {
                nulls.push(1);
                inner.default_value();
            }
            Column::Array {
                offsets, totals, ..
            } => {
                // An empty array: its offset repeats the running total.
                offsets[0].extend_from_slice(&totals[0].to_le_bytes());
            }
            Column::Variant { discriminators, .. } => discriminators.push(255),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Column::Fixed { data, .. } | Column::String { data } => out.extend_from_slice(data),
            Column::Nullable { nulls, inner } => {
                out.extend_from_slice(nulls);
                inner.write(out);
            }
            Column::Array {
                offsets, element, ..
            } => {
                for level in offsets {
                    out.extend_from_slice(level);
                }
                element.write(out);
            }
            Column::Variant {
                discriminators,
                inner,
            } => {
                out.extend_from_slice(&0u64.to_le_bytes());
                out.extend_from_slice(discriminators);
                inner.write(out);
            }
        }
    }

    fn clear(&mut self) {
        match self {
            Column::Fixed { data, .. } | Column::String { data } => data.clear(),
            Column::Nullable { nulls, inner } => {
                nulls.clear();
                inner.clear();
            }
            Column::Array {
                offsets,
                totals,
                element,
            } => {
                offsets.iter_mut().for_each(Vec::clear);
                totals.iter_mut().for_each(|t| *t = 0);
                element.clear();
            }
            Column::Variant {
                discriminators,
                inner,
            } => {
                discriminators.clear();
                inner.clear();
            }
        }
    }

    /// The lengths of its buffers (and running totals) that [`Column::rollback`] cannot work
    /// out, in a fixed order. With `per_row` (a column of the block, or the values under its
    /// null map) the column holds exactly one value per row, so a fixed-width buffer's length
    /// and a null map's follow from the block's row count and need no mark: that keeps
    /// marking a row (for every row) down to a string column's length.
    #[inline]
    fn mark(&self, marks: &mut Vec<usize>, per_row: bool) {
        match self {
            Column::Fixed { .. } if per_row => {}
            Column::Fixed { data, .. } | Column::String { data } => marks.push(data.len()),
            Column::Nullable { nulls, inner } => {
                if !per_row {
                    marks.push(nulls.len());
                }
                inner.mark(marks, per_row);
            }
            Column::Array {
                offsets,
                totals,
                element,
            } => {
                marks.extend(offsets.iter().map(Vec::len));
                marks.extend(totals.iter().map(|&t| t as usize));
                element.mark(marks, false);
            }
            Column::Variant {
                discriminators,
                inner,
            } => {
                marks.push(discriminators.len());
                inner.mark(marks, false);
            }
        }
    }

    /// Goes back to what [`Column::mark`] saw; `rows`: the block's rows before the row, for
    /// a column marked `per_row`.
    fn rollback(&mut self, marks: &mut impl Iterator<Item = usize>, rows: Option<usize>) {
        let back = |v: &mut Vec<u8>, marks: &mut dyn Iterator<Item = usize>| {
            v.truncate(marks.next().unwrap_or(0));
        };
        match self {
            Column::Fixed { width, data } => match rows {
                Some(rows) => data.truncate(rows * *width),
                None => back(data, marks),
            },
            Column::String { data } => back(data, marks),
            Column::Nullable { nulls, inner } => {
                match rows {
                    Some(rows) => nulls.truncate(rows),
                    None => back(nulls, marks),
                }
                inner.rollback(marks, rows);
            }
            Column::Array {
                offsets,
                totals,
                element,
            } => {
                offsets.iter_mut().for_each(|o| back(o, marks));
                for t in totals.iter_mut() {
                    *t = marks.next().unwrap_or(0) as u64;
                }
                element.rollback(marks, None);
            }
            Column::Variant {
                discriminators,
                inner,
            } => {
                back(discriminators, marks);
                inner.rollback(marks, None);
            }
        }
    }

    /// A scalar column's data, and its null map when it is `Nullable`.
    fn scalar_buffers(&mut self) -> Option<(&mut Vec<u8>, Option<&mut Vec<u8>>)> {
        match self {
            Column::Fixed { data, .. } | Column::String { data } => Some((data, None)),
            Column::Nullable { nulls, inner } => match &mut **inner {
                Column::Fixed { data, .. } | Column::String { data } => Some((data, Some(nulls))),
                _ => None,
            },
            _ => None,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Column::Fixed { data, .. } | Column::String { data } => data.len(),
            Column::Nullable { nulls, inner } => nulls.len() + inner.bytes(),
            Column::Array {
                offsets, element, ..
            } => offsets.iter().map(Vec::len).sum::<usize>() + element.bytes(),
            Column::Variant {
                discriminators,
                inner,
            } => discriminators.len() + inner.bytes(),
        }
    }
}

/// One array at `level` (its element count, then its sub-arrays or elements).
fn array_level(
    offsets: &mut [Vec<u8>],
    totals: &mut [u64],
    level: usize,
    element: &mut Column,
    row: &mut &[u8],
) -> Option<()> {
    let n = read_leb128(row)?;
    totals[level] = totals[level].checked_add(n)?;
    offsets[level].extend_from_slice(&totals[level].to_le_bytes());
    for _ in 0..n {
        if level + 1 < offsets.len() {
            array_level(offsets, totals, level + 1, element, row)?;
        } else {
            element.take(row)?;
        }
    }
    Some(())
}

#[inline(always)]
fn take_n<const N: usize>(row: &mut &[u8], data: &mut Vec<u8>) -> Option<()> {
    let (head, tail) = row.split_first_chunk::<N>()?;
    data.extend_from_slice(head);
    *row = tail;
    Some(())
}

fn take<'a>(row: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if row.len() < n {
        return None;
    }
    let (head, tail) = row.split_at(n);
    *row = tail;
    Some(head)
}

fn read_leb128(row: &mut &[u8]) -> Option<u64> {
    let mut n: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *take(row, 1)?.first()?;
        n |= u64::from(b & 0x7F) << shift;
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// One block of a table's rows in `Native`, gathered from their RowBinary.
#[derive(Debug)]
pub struct NativeBlock {
    /// Each column's name and type, already in `String` form.
    headers: Vec<Vec<u8>>,
    columns: Vec<Column>,
    rows: usize,
    /// Bytes of column data, as last counted (every [`RECOUNT_ROWS`] rows).
    counted: usize,
    max_rows: usize,
    max_bytes: usize,
    /// The buffers' lengths before the current row (reused).
    marks: Vec<usize>,
    /// The columns that have lengths to mark ([`Column::mark`]): only these are visited
    /// for every row.
    marked: Vec<usize>,
    /// An array cell in RowBinary on its way into its columns (reused).
    scratch: Vec<u8>,
}

/// The data is counted again every this many rows, so a block overshoots its bytes by less.
const RECOUNT_ROWS: usize = 64;

impl NativeBlock {
    /// A block for a replicated table's columns, with Ferry's `_ferry_version` and
    /// `_ferry_is_deleted` after them (the columns [`crate::table::Destination::insert`]
    /// names); full at `max_rows` rows or `max_bytes` bytes of data, whichever comes first.
    pub fn new(columns: &[ColumnSchema], max_rows: usize, max_bytes: usize) -> NativeBlock {
        Self::named(
            columns,
            [VERSION_COLUMN, IS_DELETED_COLUMN],
            max_rows,
            max_bytes,
        )
    }

    /// [`NativeBlock::new`], with the version and deletion columns named `meta`.
    pub fn named(
        columns: &[ColumnSchema],
        meta: [&str; 2],
        max_rows: usize,
        max_bytes: usize,
    ) -> NativeBlock {
        let mut headers = Vec::new();
        let mut layouts = Vec::new();
        let mut header = |name: &str, ty: &str, layout: Layout| {
            let mut h = Vec::new();
            string(name.as_bytes(), &mut h);
            string(ty.as_bytes(), &mut h);
            headers.push(h);
            layouts.push(layout);
        };
        for c in columns {
            header(
                &c.name,
                &clickhouse_type(&c.kind, c.nullable),
                Layout::of(&c.kind, c.nullable),
            );
        }
        header(meta[0], "UInt64", Layout::Fixed(8));
        header(meta[1], "UInt8", Layout::Fixed(1));
        let columns: Vec<Column> = layouts.iter().map(Column::new).collect();
        let marked = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                let mut marks = Vec::new();
                c.mark(&mut marks, true);
                !marks.is_empty()
            })
            .map(|(i, _)| i)
            .collect();
        NativeBlock {
            headers,
            columns,
            rows: 0,
            counted: 0,
            marks: Vec::new(),
            marked,
            scratch: Vec::new(),
            max_rows: max_rows.max(1),
            max_bytes,
        }
    }

    /// The column list for `INSERT INTO t (…) FORMAT Native`, quoted.
    pub fn column_list(columns: &[ColumnSchema]) -> String {
        Self::column_list_named(columns, [VERSION_COLUMN, IS_DELETED_COLUMN])
    }

    /// [`NativeBlock::column_list`] with the version and deletion columns named `meta`.
    pub fn column_list_named(columns: &[ColumnSchema], meta: [&str; 2]) -> String {
        columns
            .iter()
            .map(|c| c.name.as_str())
            .chain(meta)
            .map(ch_ident)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Adds the rows in `rowbinary` (whole rows, each with its version and deletion marker);
    /// returns how many. An error means the rows were not written for these columns (a bug,
    /// never a value): the block is then emptied, and the insert it was for must be abandoned.
    pub fn push_rows(&mut self, mut rowbinary: &[u8]) -> Result<usize, RowShapeError> {
        let mut n = 0;
        while !rowbinary.is_empty() {
            self.push_row(&mut rowbinary)?;
            n += 1;
        }
        Ok(n)
    }

    /// Adds the row at the front of `rowbinary`, taking it off.
    fn push_row(&mut self, rowbinary: &mut &[u8]) -> Result<(), RowShapeError> {
        let mut rest = *rowbinary;
        for (i, column) in self.columns.iter_mut().enumerate() {
            if column.take(&mut rest).is_none() {
                self.clear();
                return Err(RowShapeError { column: i });
            }
        }
        *rowbinary = rest;
        self.row_done();
        Ok(())
    }

    fn row_done(&mut self) {
        self.rows += 1;
        if self.rows % RECOUNT_ROWS == 0 {
            self.counted = self.bytes();
        }
    }

    fn clear(&mut self) {
        self.columns.iter_mut().for_each(Column::clear);
        self.rows = 0;
        self.counted = 0;
    }

    /// Rows in the block.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether the block reached its rows or bytes (the bytes are counted every few rows).
    pub fn is_full(&self) -> bool {
        self.rows >= self.max_rows || self.counted >= self.max_bytes
    }

    /// The number of the table's own columns (without Ferry's two).
    pub fn user_columns(&self) -> usize {
        self.columns.len() - 2
    }

    /// Bytes of column data gathered.
    pub fn bytes(&self) -> usize {
        self.columns.iter().map(Column::bytes).sum()
    }

    /// Appends the block in `Native` to `out` and empties it (keeping its buffers). A block
    /// without rows writes nothing.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.rows == 0 {
            return;
        }
        out.reserve(self.bytes() + self.headers.iter().map(Vec::len).sum::<usize>() + 20);
        leb128(self.columns.len() as u64, out);
        leb128(self.rows as u64, out);
        for (header, column) in self.headers.iter().zip(&mut self.columns) {
            out.extend_from_slice(header);
            column.write(out);
            column.clear();
        }
        self.rows = 0;
        self.counted = 0;
    }
}

impl RowTarget for NativeBlock {
    fn begin_row(&mut self) {
        self.marks.clear();
        // The others mark nothing, and take no marks back in `abort_row`.
        for &i in &self.marked {
            self.columns[i].mark(&mut self.marks, true);
        }
    }

    #[inline(always)]
    fn write_field(
        &mut self,
        column: usize,
        plan: &ColumnPlan,
        field: Field<'_>,
        policy: UnrepresentablePolicy,
    ) -> Result<Option<Unrepresentable>, EncodeError> {
        let shape = || EncodeError::Malformed {
            what: "encoded value",
            reason: "does not match its column",
        };
        let col = self.columns.get_mut(column).ok_or_else(shape)?;
        let raw = match field.binary() {
            Ok(raw) => raw,
            Err(mut encoded) => {
                col.take(&mut encoded).ok_or_else(shape)?;
                return Ok(None);
            }
        };
        match plan.plan {
            Plan::Scalar(kind) => {
                let (data, nulls) = col.scalar_buffers().ok_or_else(shape)?;
                let marker = match nulls {
                    Some(nulls) => Marker::Map(nulls),
                    None => Marker::None,
                };
                transcode::scalar_field(kind, marker, raw, policy, data)
            }
            Plan::Array { element, dims } => {
                // Arrays go through RowBinary: rare enough not to need a columnar writer.
                self.scratch.clear();
                let why = transcode::array_field(
                    element,
                    dims,
                    plan.nullable,
                    raw,
                    policy,
                    &mut self.scratch,
                )?;
                col.take(&mut &self.scratch[..]).ok_or_else(shape)?;
                Ok(why)
            }
        }
    }

    fn end_row(&mut self, version: u64, is_deleted: bool) {
        if let [.., Column::Fixed { data: v, .. }, Column::Fixed { data: d, .. }] =
            &mut self.columns[..]
        {
            v.extend_from_slice(&version.to_le_bytes());
            d.push(u8::from(is_deleted));
        }
        self.row_done();
    }

    fn abort_row(&mut self) {
        let mut marks = self.marks.iter().copied();
        for c in &mut self.columns {
            c.rollback(&mut marks, Some(self.rows));
        }
    }
}

#[cfg(test)]
mod tests;
