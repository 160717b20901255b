//! PostgreSQL binary fields → ClickHouse RowBinary, without a [`Value`](ferry_core::Value) in
//! between.
//!
//! The initial load reads `COPY … (FORMAT binary)`, whose fields are each column's binary send
//! format, framed by [`ferry_core::binary_copy`]. A [`Transcoder`], built once per table from
//! its columns, appends one row's RowBinary from those fields: fixed-width values are checked
//! and byte-swapped into place, text and bytea are copied once, `numeric` becomes a `Decimal`
//! from its base-10000 digits (no text in between), and arrays are walked in place. Nothing is
//! allocated per row or per value; the output buffer is the caller's, to reuse.
//!
//! Each field is read as exactly the format that `ferry_postgres::types::decode_binary` accepts
//! for the column's [`ValueKind`], and the bytes written are those that decoding it and
//! encoding the [`Value`](ferry_core::Value) with [`crate::rowbinary::encode`] would give: both
//! write through [`crate::cell`], and a differential test holds them to it. A value ClickHouse
//! cannot hold is dealt with by the [`UnrepresentablePolicy`] (see [`crate::unrepresentable`]);
//! the transcoder counts what it replaced per column and keeps an example key for each.
//!
//! | kind | field |
//! |---|---|
//! | `Bool` | 1 byte, 0 or 1 |
//! | `Int16` / `Int32` / `Int64` / `UInt32` | 2 / 4 / 8 / 4 bytes, big-endian |
//! | `Float32` / `Float64` | IEEE 754 bits, big-endian |
//! | `Decimal` | `numeric_send` (see [`crate::decimal`]) |
//! | `Text` | UTF-8 (checked), e.g. `text`, `varchar`, `bpchar`, or a type's text output selected as text |
//! | `Bytes` | the bytes |
//! | `Uuid` | 16 bytes |
//! | `Date` | i32 days since 2000-01-01 (`i32::MAX`/`MIN` = ±infinity) |
//! | `Timestamp` / `TimestampTz` | i64 µs since 2000-01-01 (`i64::MAX`/`MIN` = ±infinity) |
//! | `Array` | `array_send`: `ndim i32 | has_nulls i32 | element oid u32`, `ndim` × (`length i32 | lower bound i32`), then each element as `length i32` (−1 for NULL) and its bytes |
//!
//! The same fields arrive in pgoutput's binary mode (`binary 'true'`), so the streaming path can
//! transcode its changes with this too; a column whose value comes from elsewhere already in
//! RowBinary (an unchanged TOASTed value read back from ClickHouse) is passed as
//! [`Field::Encoded`].

use ferry_core::pg_binary::{BinaryArray, BinaryNumeric};
use ferry_core::{ColumnSchema, ErrorKind, ValueKind};

use crate::cell::{self, ArraySource, Scalar, ScalarKind};
use crate::rowbinary::EncodeError;
use crate::unrepresentable::{self, Substitutions, Unrepresentable, UnrepresentablePolicy};

/// One field of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field<'a> {
    Null,
    /// The value in its type's binary send format.
    Binary(&'a [u8]),
    /// The column's RowBinary, written as it is (with its NULL marker where the column has one).
    Encoded(&'a [u8]),
}

impl<'a> From<Option<&'a [u8]>> for Field<'a> {
    /// A binary COPY field: `None` is NULL.
    fn from(field: Option<&'a [u8]>) -> Field<'a> {
        match field {
            None => Field::Null,
            Some(raw) => Field::Binary(raw),
        }
    }
}

/// Why a row could not be transcoded. Messages never include a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranscodeError {
    #[error("row has {got} fields, the table has {expected} columns")]
    FieldCount { expected: usize, got: usize },
    #[error("column \"{name}\": {source}")]
    Column {
        /// The column's position.
        column: usize,
        name: String,
        #[source]
        source: EncodeError,
    },
}

impl TranscodeError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            TranscodeError::FieldCount { .. } => ErrorKind::Internal,
            TranscodeError::Column { source, .. } => source.kind(),
        }
    }

    /// The position of the column at fault, if one is.
    pub fn column(&self) -> Option<usize> {
        match self {
            TranscodeError::FieldCount { .. } => None,
            TranscodeError::Column { column, .. } => Some(*column),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Plan {
    Scalar(ScalarKind),
    Array { element: ScalarKind, dims: u8 },
}

#[derive(Debug, Clone, Copy)]
struct Column {
    plan: Plan,
    nullable: bool,
}

/// Appends rows of one table as RowBinary, from their fields in the table's column order,
/// followed by Ferry's `_ferry_version` and `_ferry_is_deleted`.
#[derive(Debug, Clone)]
pub struct Transcoder {
    columns: Vec<Column>,
    names: Vec<String>,
    /// The key columns' positions, in key order.
    key_columns: Vec<usize>,
    policy: UnrepresentablePolicy,
    substitutions: Substitutions,
    /// Columns whose first substitution happened in the current row (reused, rarely filled).
    first_in_row: Vec<usize>,
}

impl Transcoder {
    /// A transcoder for rows of these columns (their `kind`, `nullable` and `key_position`).
    /// Fails for a kind that has no ClickHouse type (a `Decimal` wider than 76 digits, an array
    /// of arrays).
    pub fn new(
        columns: &[ColumnSchema],
        policy: UnrepresentablePolicy,
    ) -> Result<Transcoder, TranscodeError> {
        let plans = columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let plan = match &c.kind {
                    ValueKind::Array { element, dims } => {
                        ScalarKind::of(element).map(|element| Plan::Array {
                            element,
                            dims: *dims,
                        })
                    }
                    kind => ScalarKind::of(kind).map(Plan::Scalar),
                };
                plan.map(|plan| Column {
                    plan,
                    nullable: c.nullable,
                })
                .map_err(|source| TranscodeError::Column {
                    column: i,
                    name: c.name.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Transcoder {
            columns: plans,
            names: columns.iter().map(|c| c.name.clone()).collect(),
            key_columns: unrepresentable::key_columns(columns),
            policy,
            substitutions: Substitutions::new(columns.len()),
            first_in_row: Vec::new(),
        })
    }

    /// Appends one row: every column from `fields` (one per column, in order), then `version`
    /// and `is_deleted`. On error nothing is appended. `fields` is walked a second time only for
    /// a row with a column's first substitution, to render its example key.
    pub fn append_row<'f, I>(
        &mut self,
        fields: I,
        version: u64,
        is_deleted: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), TranscodeError>
    where
        I: IntoIterator,
        I::Item: Into<Field<'f>>,
        I::IntoIter: Clone,
    {
        let start = out.len();
        let mut fields = fields.into_iter();
        let all = fields.clone();
        for (i, column) in self.columns.iter().enumerate() {
            let Some(field) = fields.next() else {
                out.truncate(start);
                return Err(TranscodeError::FieldCount {
                    expected: self.columns.len(),
                    got: i,
                });
            };
            match write_field(column, field.into(), self.policy, out) {
                Ok(None) => {}
                Ok(Some(why)) => {
                    if self.substitutions.record(i, why) {
                        self.first_in_row.push(i);
                    }
                }
                Err(source) => {
                    out.truncate(start);
                    return Err(TranscodeError::Column {
                        column: i,
                        name: self.names[i].clone(),
                        source,
                    });
                }
            }
        }
        if fields.next().is_some() {
            out.truncate(start);
            return Err(TranscodeError::FieldCount {
                expected: self.columns.len(),
                got: self.columns.len() + 1 + fields.count(),
            });
        }
        out.extend_from_slice(&version.to_le_bytes());
        out.push(u8::from(is_deleted));
        if !self.first_in_row.is_empty() {
            let key = self.example_key(all);
            for i in std::mem::take(&mut self.first_in_row) {
                self.substitutions.set_example(i, key.clone());
            }
        }
        Ok(())
    }

    /// The values replaced so far, per column.
    pub fn substitutions(&self) -> &Substitutions {
        &self.substitutions
    }

    /// Takes the substitutions counted so far, leaving none.
    pub fn take_substitutions(&mut self) -> Substitutions {
        std::mem::replace(
            &mut self.substitutions,
            Substitutions::new(self.columns.len()),
        )
    }

    pub fn policy(&self) -> UnrepresentablePolicy {
        self.policy
    }

    /// The row's key as text, from its fields.
    fn example_key<'f, I>(&self, fields: I) -> Option<String>
    where
        I: Iterator + Clone,
        I::Item: Into<Field<'f>>,
    {
        let values: Vec<String> =
            self.key_columns
                .iter()
                .map(|&k| {
                    let field = fields.clone().nth(k).map(Into::into);
                    match (self.columns[k].plan, field) {
                        (_, None | Some(Field::Null)) => "NULL".to_owned(),
                        (_, Some(Field::Encoded(_))) => "?".to_owned(),
                        (Plan::Scalar(kind), Some(Field::Binary(raw))) => parse(kind, raw)
                            .map_or_else(|_| "?".to_owned(), |v| cell::render(kind, v)),
                        (Plan::Array { element, .. }, Some(Field::Binary(raw))) => {
                            Elements::new(element, raw).map_or_else(
                                |_| "?".to_owned(),
                                |mut a| cell::render_array(element, &mut a),
                            )
                        }
                    }
                })
                .collect();
        let names = self.key_columns.iter().map(|&k| self.names[k].as_str());
        unrepresentable::format_key(names, &values)
    }
}

#[inline]
fn write_field(
    column: &Column,
    field: Field<'_>,
    policy: UnrepresentablePolicy,
    out: &mut Vec<u8>,
) -> Result<Option<Unrepresentable>, EncodeError> {
    let raw = match field {
        Field::Encoded(bytes) => {
            out.extend_from_slice(bytes);
            return Ok(None);
        }
        Field::Null => None,
        Field::Binary(raw) => Some(raw),
    };
    match column.plan {
        Plan::Scalar(kind) => match raw {
            None => cell::scalar_cell(kind, column.nullable, None, policy, out),
            Some(raw) => {
                if plain_field(kind, column.nullable, raw, out)? {
                    return Ok(None);
                }
                let value = parse(kind, raw)?;
                cell::scalar_cell(kind, column.nullable, Some(value), policy, out)
            }
        },
        Plan::Array { element, dims } => {
            let mut array = raw.map(|raw| Elements::new(element, raw)).transpose()?;
            cell::array_cell(
                element,
                dims,
                column.nullable,
                array.as_mut().map(|a| a as &mut dyn ArraySource<'_>),
                policy,
                out,
            )
        }
    }
}

fn fixed<const N: usize>(raw: &[u8], what: &'static str) -> Result<[u8; N], EncodeError> {
    raw.try_into().map_err(|_| EncodeError::Malformed {
        what,
        reason: "wrong length",
    })
}

/// Reads a non-NULL field of `kind` in its binary send format.
#[inline(always)]
fn parse(kind: ScalarKind, raw: &[u8]) -> Result<Scalar<'_>, EncodeError> {
    use ScalarKind as K;
    Ok(match kind {
        K::Bool => Scalar::Bool(bool_field(raw)?),
        K::Int16 => Scalar::Int16(i16::from_be_bytes(fixed(raw, "int2")?)),
        K::Int32 => Scalar::Int32(i32::from_be_bytes(fixed(raw, "int4")?)),
        K::Int64 => Scalar::Int64(i64::from_be_bytes(fixed(raw, "int8")?)),
        K::UInt32 => Scalar::UInt32(u32::from_be_bytes(fixed(raw, "oid")?)),
        K::Float32 => Scalar::Float32(f32::from_be_bytes(fixed(raw, "float4")?)),
        K::Float64 => Scalar::Float64(f64::from_be_bytes(fixed(raw, "float8")?)),
        K::Decimal { .. } => Scalar::DecimalBinary(BinaryNumeric::parse(raw)?),
        K::Text => Scalar::Str(text_field(raw)?),
        K::Bytes => Scalar::Str(raw),
        K::Uuid => Scalar::Uuid(uuid_field(raw)?),
        K::Date => Scalar::Date(i32::from_be_bytes(fixed(raw, "date")?)),
        K::Timestamp | K::TimestampTz => {
            Scalar::Timestamp(i64::from_be_bytes(fixed(raw, "timestamp")?))
        }
    })
}

#[inline(always)]
fn bool_field(raw: &[u8]) -> Result<bool, EncodeError> {
    match fixed::<1>(raw, "bool")? {
        [0] => Ok(false),
        [1] => Ok(true),
        _ => Err(EncodeError::Malformed {
            what: "bool",
            reason: "byte is neither 0 nor 1",
        }),
    }
}

#[inline(always)]
fn text_field(raw: &[u8]) -> Result<&[u8], EncodeError> {
    // Text is mostly ASCII, which is checked faster on its own.
    if !raw.is_ascii() && std::str::from_utf8(raw).is_err() {
        return Err(EncodeError::Malformed {
            what: "text",
            reason: "not valid UTF-8",
        });
    }
    Ok(raw)
}

#[inline(always)]
fn uuid_field(raw: &[u8]) -> Result<&[u8; 16], EncodeError> {
    raw.try_into().map_err(|_| EncodeError::Malformed {
        what: "uuid",
        reason: "wrong length",
    })
}

/// Writes a non-NULL field of a kind every value of which ClickHouse holds (true when `kind`
/// is one), straight from its bytes; the same bytes [`cell::scalar_cell`] writes for its
/// [`Scalar`], which is built in memory otherwise, and that would double a narrow row's cost.
#[inline(always)]
fn plain_field(
    kind: ScalarKind,
    nullable: bool,
    raw: &[u8],
    out: &mut Vec<u8>,
) -> Result<bool, EncodeError> {
    use ScalarKind as K;
    let plain = |bytes: &[u8], out: &mut Vec<u8>| {
        cell::not_null(nullable, out);
        out.extend_from_slice(bytes);
    };
    match kind {
        K::Bool => plain(&[u8::from(bool_field(raw)?)], out),
        K::Int16 => plain(&i16::from_be_bytes(fixed(raw, "int2")?).to_le_bytes(), out),
        K::Int32 => plain(&i32::from_be_bytes(fixed(raw, "int4")?).to_le_bytes(), out),
        K::Int64 => plain(&i64::from_be_bytes(fixed(raw, "int8")?).to_le_bytes(), out),
        K::UInt32 => plain(&u32::from_be_bytes(fixed(raw, "oid")?).to_le_bytes(), out),
        K::Float32 => plain(
            &f32::from_be_bytes(fixed(raw, "float4")?).to_le_bytes(),
            out,
        ),
        K::Float64 => plain(
            &f64::from_be_bytes(fixed(raw, "float8")?).to_le_bytes(),
            out,
        ),
        K::Text | K::Bytes => {
            let bytes = if kind == K::Text {
                text_field(raw)?
            } else {
                raw
            };
            cell::not_null(nullable, out);
            cell::string(bytes, out);
        }
        K::Uuid => {
            let u = uuid_field(raw)?;
            cell::not_null(nullable, out);
            cell::uuid(u, out);
        }
        K::Decimal { .. } | K::Date | K::Timestamp | K::TimestampTz => return Ok(false),
    }
    Ok(true)
}

/// A binary array whose elements are read as scalars of one kind.
struct Elements<'a> {
    element: ScalarKind,
    array: BinaryArray<'a>,
}

impl<'a> Elements<'a> {
    fn new(element: ScalarKind, raw: &'a [u8]) -> Result<Elements<'a>, EncodeError> {
        Ok(Elements {
            element,
            array: BinaryArray::parse(raw)?,
        })
    }
}

impl<'a> ArraySource<'a> for Elements<'a> {
    fn dims(&self) -> &[i32] {
        self.array.dims()
    }

    fn lower_bounds_are_one(&self) -> bool {
        self.array.lower_bounds().iter().all(|&b| b == 1)
    }

    fn next_element(&mut self) -> Result<Option<Scalar<'a>>, EncodeError> {
        match self.array.next_element()? {
            None => Ok(None),
            Some(raw) => parse(self.element, raw).map(Some),
        }
    }

    fn finish(&mut self) -> Result<(), EncodeError> {
        Ok(self.array.finish()?)
    }
}

#[cfg(test)]
mod tests;
