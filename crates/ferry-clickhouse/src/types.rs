//! ClickHouse column types for Ferry's [`ValueKind`]s.
//!
//! | kind | ClickHouse type |
//! |---|---|
//! | `Bool` | `Bool` |
//! | `Int16`, `Int32`, `Int64` | `Int16`, `Int32`, `Int64` |
//! | `UInt32` | `UInt32` |
//! | `Float32`, `Float64` | `Float32`, `Float64` |
//! | `Decimal { p, s }` | `Decimal(p, s)` |
//! | `Text`, `Bytes` | `String` |
//! | `Uuid` | `UUID` |
//! | `Date` | `Date32` (1900-01-01 … 2299-12-31; see [`crate::unrepresentable`] for others) |
//! | `Timestamp` | `DateTime64(6)` (1900-01-01 00:00:00 … 2299-12-31 23:59:59.999999, likewise) |
//! | `TimestampTz` | `DateTime64(6, 'UTC')` (same range) |
//! | `Array { element, dims }` | `Array(…Array(Nullable(element))…)`, `dims` levels deep |
//!
//! Both timestamp kinds are stored as microseconds since the Unix epoch in UTC. A
//! `DateTime64(6)` without a time zone is *displayed* in the server's time zone, so a PostgreSQL
//! `timestamp` shows its original wall-clock time only on a server running in UTC (or when read
//! with `toString(col, 'UTC')`); the stored value is exact either way.
//!
//! A nullable scalar column is `Nullable(T)`. Array elements are always `Nullable`, since
//! PostgreSQL arrays may hold NULLs whatever the column's constraints.
//!
//! # NULL arrays
//!
//! ClickHouse has no `Nullable(Array(…))`, and storing a NULL array as `[]` would make it
//! indistinguishable from PostgreSQL's empty array `{}`. A nullable array column is therefore
//! `Variant(Array(…))`: a one-member variant, which is NULL or the array. It reads back as
//! `NULL` or the array (JSON `null` / `[…]`); `length(col)` and `col[i]` work on it directly,
//! and array functions that need a plain array (`has`, `arrayJoin`, …) take its subcolumn
//! ``col.`Array(Nullable(Int32))` `` (which is `[]` for NULL). A `NOT NULL` array column is a
//! plain `Array(…)`.

use ferry_core::ValueKind;

/// The ClickHouse type of a column of `kind`; `nullable` when the source allows NULL.
pub fn clickhouse_type(kind: &ValueKind, nullable: bool) -> String {
    match kind {
        ValueKind::Array { element, dims } => {
            let mut t = format!("Nullable({})", scalar_type(element));
            for _ in 0..(*dims).max(1) {
                t = format!("Array({t})");
            }
            if nullable {
                t = format!("Variant({t})");
            }
            t
        }
        _ if nullable => format!("Nullable({})", scalar_type(kind)),
        _ => scalar_type(kind),
    }
}

fn scalar_type(kind: &ValueKind) -> String {
    match kind {
        ValueKind::Bool => "Bool".into(),
        ValueKind::Int16 => "Int16".into(),
        ValueKind::Int32 => "Int32".into(),
        ValueKind::Int64 => "Int64".into(),
        ValueKind::UInt32 => "UInt32".into(),
        ValueKind::Float32 => "Float32".into(),
        ValueKind::Float64 => "Float64".into(),
        ValueKind::Decimal { precision, scale } => format!("Decimal({precision}, {scale})"),
        ValueKind::Text | ValueKind::Bytes => "String".into(),
        ValueKind::Uuid => "UUID".into(),
        ValueKind::Date => "Date32".into(),
        ValueKind::Timestamp => "DateTime64(6)".into(),
        ValueKind::TimestampTz => "DateTime64(6, 'UTC')".into(),
        // Arrays of arrays are not a kind the source produces; `encode` rejects their values.
        ValueKind::Array { .. } => clickhouse_type(kind, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types() {
        use ValueKind as K;
        let cases = [
            (K::Bool, false, "Bool"),
            (K::Int16, true, "Nullable(Int16)"),
            (K::UInt32, false, "UInt32"),
            (
                K::Decimal {
                    precision: 76,
                    scale: 20,
                },
                false,
                "Decimal(76, 20)",
            ),
            (K::Text, true, "Nullable(String)"),
            (K::Bytes, false, "String"),
            (K::Uuid, false, "UUID"),
            (K::Date, true, "Nullable(Date32)"),
            (K::Timestamp, false, "DateTime64(6)"),
            (K::TimestampTz, true, "Nullable(DateTime64(6, 'UTC'))"),
            (
                K::Array {
                    element: Box::new(K::Int32),
                    dims: 1,
                },
                false,
                "Array(Nullable(Int32))",
            ),
            (
                K::Array {
                    element: Box::new(K::Text),
                    dims: 2,
                },
                true,
                "Variant(Array(Array(Nullable(String))))",
            ),
        ];
        for (kind, nullable, expected) in cases {
            assert_eq!(clickhouse_type(&kind, nullable), expected);
        }
    }
}
