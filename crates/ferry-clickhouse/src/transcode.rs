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

use crate::cell::{self, ArraySource, Marker, Scalar, ScalarKind};
use crate::native::NativeBlock;
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

impl<'a> Field<'a> {
    /// The value in binary (`None` for NULL), or else the bytes already encoded.
    pub(crate) fn binary(self) -> Result<Option<&'a [u8]>, &'a [u8]> {
        match self {
            Field::Null => Ok(None),
            Field::Binary(raw) => Ok(Some(raw)),
            Field::Encoded(bytes) => Err(bytes),
        }
    }
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
pub(crate) enum Plan {
    Scalar(ScalarKind),
    Array { element: ScalarKind, dims: u8 },
}

/// How one column is transcoded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ColumnPlan {
    pub(crate) plan: Plan,
    pub(crate) nullable: bool,
}

/// Where transcoded rows go: RowBinary bytes, or a `Native` block's columns.
pub(crate) trait RowTarget {
    fn begin_row(&mut self);
    /// Writes column `column`'s cell.
    fn write_field(
        &mut self,
        column: usize,
        plan: &ColumnPlan,
        field: Field<'_>,
        policy: UnrepresentablePolicy,
    ) -> Result<Option<Unrepresentable>, EncodeError>;
    /// Ends the row with Ferry's version and deletion marker.
    fn end_row(&mut self, version: u64, is_deleted: bool);
    /// Takes back what the row wrote so far.
    fn abort_row(&mut self);
}

/// A row appended to RowBinary bytes.
struct RowBinaryTarget<'o> {
    out: &'o mut Vec<u8>,
    start: usize,
}

impl RowTarget for RowBinaryTarget<'_> {
    fn begin_row(&mut self) {
        self.start = self.out.len();
    }

    #[inline(always)]
    fn write_field(
        &mut self,
        _column: usize,
        plan: &ColumnPlan,
        field: Field<'_>,
        policy: UnrepresentablePolicy,
    ) -> Result<Option<Unrepresentable>, EncodeError> {
        let out = &mut *self.out;
        let raw = field
            .binary()
            .map_err(|encoded| out.extend_from_slice(encoded));
        let Ok(raw) = raw else {
            return Ok(None);
        };
        match plan.plan {
            Plan::Scalar(kind) => {
                scalar_field(kind, Marker::inline(plan.nullable), raw, policy, out)
            }
            Plan::Array { element, dims } => {
                array_field(element, dims, plan.nullable, raw, policy, out)
            }
        }
    }

    fn end_row(&mut self, version: u64, is_deleted: bool) {
        self.out.extend_from_slice(&version.to_le_bytes());
        self.out.push(u8::from(is_deleted));
    }

    fn abort_row(&mut self) {
        self.out.truncate(self.start);
    }
}

/// Writes a scalar field's cell into `data`, its NULL marker by `marker`.
#[inline(always)]
pub(crate) fn scalar_field(
    kind: ScalarKind,
    mut marker: Marker<'_>,
    raw: Option<&[u8]>,
    policy: UnrepresentablePolicy,
    data: &mut Vec<u8>,
) -> Result<Option<Unrepresentable>, EncodeError> {
    match raw {
        None => cell::scalar_cell(kind, marker, None, policy, data),
        Some(raw) if is_plain(kind) => {
            marker.not_null(data);
            plain_value(kind, raw, data)?;
            Ok(None)
        }
        Some(raw) => {
            let value = parse(kind, raw)?;
            cell::scalar_cell(kind, marker, Some(value), policy, data)
        }
    }
}

/// Writes an array field's cell (in RowBinary: a `Variant` when `nullable`).
pub(crate) fn array_field(
    element: ScalarKind,
    dims: u8,
    nullable: bool,
    raw: Option<&[u8]>,
    policy: UnrepresentablePolicy,
    out: &mut Vec<u8>,
) -> Result<Option<Unrepresentable>, EncodeError> {
    let mut array = raw.map(|raw| Elements::new(element, raw)).transpose()?;
    cell::array_cell(
        element,
        dims,
        nullable,
        array.as_mut().map(|a| a as &mut dyn ArraySource<'_>),
        policy,
        out,
    )
}

/// Appends rows of one table as RowBinary, from their fields in the table's column order,
/// followed by Ferry's `_ferry_version` and `_ferry_is_deleted`.
#[derive(Debug, Clone)]
pub struct Transcoder {
    columns: Vec<ColumnPlan>,
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
                plan.map(|plan| ColumnPlan {
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
        self.append(
            fields,
            version,
            is_deleted,
            &mut RowBinaryTarget { out, start },
        )
    }

    /// As [`Transcoder::append_row`], into a `Native` block made for the same columns (see
    /// [`NativeBlock::new`]) instead of RowBinary.
    pub fn append_native<'f, I>(
        &mut self,
        fields: I,
        version: u64,
        is_deleted: bool,
        block: &mut NativeBlock,
    ) -> Result<(), TranscodeError>
    where
        I: IntoIterator,
        I::Item: Into<Field<'f>>,
        I::IntoIter: Clone,
    {
        if block.user_columns() != self.columns.len() {
            return Err(TranscodeError::FieldCount {
                expected: self.columns.len(),
                got: block.user_columns(),
            });
        }
        self.append(fields, version, is_deleted, block)
    }

    #[inline(always)]
    fn append<'f, I, T>(
        &mut self,
        fields: I,
        version: u64,
        is_deleted: bool,
        target: &mut T,
    ) -> Result<(), TranscodeError>
    where
        I: IntoIterator,
        I::Item: Into<Field<'f>>,
        I::IntoIter: Clone,
        T: RowTarget,
    {
        let mut fields = fields.into_iter();
        let all = fields.clone();
        target.begin_row();
        for (i, column) in self.columns.iter().enumerate() {
            let Some(field) = fields.next() else {
                target.abort_row();
                return Err(TranscodeError::FieldCount {
                    expected: self.columns.len(),
                    got: i,
                });
            };
            match target.write_field(i, column, field.into(), self.policy) {
                Ok(None) => {}
                Ok(Some(why)) => {
                    if self.substitutions.record(i, why) {
                        self.first_in_row.push(i);
                    }
                }
                Err(source) => {
                    target.abort_row();
                    self.first_in_row.clear();
                    return Err(TranscodeError::Column {
                        column: i,
                        name: self.names[i].clone(),
                        source,
                    });
                }
            }
        }
        if fields.next().is_some() {
            target.abort_row();
            self.first_in_row.clear();
            return Err(TranscodeError::FieldCount {
                expected: self.columns.len(),
                got: self.columns.len() + 1 + fields.count(),
            });
        }
        target.end_row(version, is_deleted);
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

/// Whether every value of `kind` can be held, so that [`plain_value`] writes it.
#[inline(always)]
pub(crate) fn is_plain(kind: ScalarKind) -> bool {
    use ScalarKind as K;
    !matches!(
        kind,
        K::Decimal { .. } | K::Date | K::Timestamp | K::TimestampTz
    )
}

/// Writes a non-NULL field of a [plain](is_plain) kind straight from its bytes: the same bytes
/// [`cell::scalar_cell`] writes for its [`Scalar`], which would be built in memory otherwise
/// (and that alone would double a narrow row's cost).
#[inline(always)]
pub(crate) fn plain_value(
    kind: ScalarKind,
    raw: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    use ScalarKind as K;
    match kind {
        K::Bool => out.push(u8::from(bool_field(raw)?)),
        K::Int16 => out.extend_from_slice(&i16::from_be_bytes(fixed(raw, "int2")?).to_le_bytes()),
        K::Int32 => out.extend_from_slice(&i32::from_be_bytes(fixed(raw, "int4")?).to_le_bytes()),
        K::Int64 => out.extend_from_slice(&i64::from_be_bytes(fixed(raw, "int8")?).to_le_bytes()),
        K::UInt32 => out.extend_from_slice(&u32::from_be_bytes(fixed(raw, "oid")?).to_le_bytes()),
        K::Float32 => {
            out.extend_from_slice(&f32::from_be_bytes(fixed(raw, "float4")?).to_le_bytes())
        }
        K::Float64 => {
            out.extend_from_slice(&f64::from_be_bytes(fixed(raw, "float8")?).to_le_bytes())
        }
        K::Text => cell::string(text_field(raw)?, out),
        K::Bytes => cell::string(raw, out),
        K::Uuid => cell::uuid(uuid_field(raw)?, out),
        K::Decimal { .. } | K::Date | K::Timestamp | K::TimestampTz => {
            return Err(EncodeError::Mismatch {
                kind: cell::kind_name(kind),
                value: "plain",
            })
        }
    }
    Ok(())
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
pub(crate) mod tests;
