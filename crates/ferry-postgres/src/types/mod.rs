//! PostgreSQL types: how each column is carried, and decoding its values.
//!
//! A column's type comes from the catalog ([`COLUMNS_QUERY`] → [`PgColumn`]), [`value_kind`]
//! decides its [`ValueKind`] and how the snapshot must select it ([`Mapping`]), and the
//! decoders turn PostgreSQL's wire formats into [`Value`](ferry_core::Value)s:
//!
//! - [`decode_binary`]: the binary send format, as found in `COPY … (FORMAT binary)` (the
//!   snapshot path, see [`crate::copy`]);
//! - [`decode_text`]: the text output format, as found in pgoutput messages (the streaming path).
//!
//! Both decoders return equal values for the same datum; the tests check this against a real
//! server for every mapped type.
//!
//! # Type mapping
//!
//! | PostgreSQL type | [`ValueKind`] | snapshot selects |
//! |---|---|---|
//! | `bool` | `Bool` | column |
//! | `int2`, `int4`, `int8` | `Int16`, `Int32`, `Int64` | column |
//! | `oid`, `xid`, `cid` | `UInt32` | column |
//! | `float4`, `float8` (NaN, ±Infinity kept) | `Float32`, `Float64` | column |
//! | `numeric(p, s)` with p ≤ 76 | `Decimal { p, s }` | column |
//! | `numeric` without typmod, or p > 76 | `Text` (exact decimal text) | text |
//! | `money` | `Decimal { 19, money_scale }` | `::numeric` |
//! | `text`, `varchar`, `bpchar` (padding kept), `name`, `citext` | `Text` | column |
//! | `json`, `jsonb`, `xml` | `Text` | text |
//! | `bytea` | `Bytes` | column |
//! | `uuid` | `Uuid` | column |
//! | `date` (±infinity kept) | `Date` | column |
//! | `timestamp`, `timestamptz` (±infinity kept) | `Timestamp`, `TimestampTz` | column |
//! | `reg*` (`regclass`, `regtype` …; their text is a name, not a number) | `Text` | text |
//! | everything else: `time`, `timetz`, `interval`, `inet`, `cidr`, `macaddr`, `macaddr8`, `bit`, `varbit`, `"char"`, enums, composites, ranges, multiranges, geometric types, `hstore`, `tsvector`, `tsquery`, `pg_lsn`, `xid8`, `int2vector`, `oidvector`, unknown extension types | `Text` (PostgreSQL's text output) | text |
//! | array of any of the above, `attndims` dimensions (at least 1) | `Array { element, dims }` | column, or as `text[]` / `numeric[]` when the element needs it |
//! | array whose element type's delimiter is not `,` (`box[]`) | `Text` | text |
//!
//! "text" means the type's output function, exactly what pgoutput sends: the snapshot selects
//! `CASE WHEN num_nulls(col) = 0 THEN format('%s', col) END` (`format`'s `%s` calls the output
//! function; `num_nulls` keeps a composite whose fields are all NULL apart from a NULL), and for
//! arrays `col::text::text[]` (the array's output, read back as `text[]`). A plain `::text` cast
//! is not the same: `inet`, `cidr` and `"char"` have cast functions of their own (`inet::text`
//! always shows the netmask) and `xml::text` keeps an XML declaration that `xml_out` drops;
//! `::text[]` would apply those casts element by element.
//!
//! Domains are mapped as their base type (resolved recursively by [`COLUMNS_QUERY`], including a
//! domain's typmod such as `CREATE DOMAIN d AS numeric(10, 2)`).
//!
//! Notes on the choices:
//! - `money`'s scale depends on the server's `lc_monetary`; the caller reads it with
//!   `SELECT scale('1'::money::numeric)`. Precision 19 holds every `int8` amount. The snapshot
//!   selects `::numeric` (exact) so that the binary decoder sees one numeric format for every
//!   `Decimal`; the text decoder also accepts money's own output (`-$1,234.56`) for the streaming
//!   path, which must run with `lc_monetary = C` so that the format is that one.
//! - `jsonb`'s binary form is a version byte and the text; selecting its text keeps one decoder
//!   for every `Text` column. `xml`'s binary form depends on the client encoding.
//! - `reg*` types are sent as numbers in binary but as names in text: they travel as names.

mod datetime;
mod exact;
mod numeric;
mod text;

use ferry_core::ValueKind;

pub use exact::{describe_types, exact_types, result_types, TypeUse};
pub use ferry_core::canonical::{decode as decode_binary, DecodeError};
pub use text::decode_text;

/// Well-known type OIDs (fixed in PostgreSQL's catalog).
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT2VECTOR: u32 = 22;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const XID: u32 = 28;
    pub const CID: u32 = 29;
    pub const OIDVECTOR: u32 = 30;
    pub const JSON: u32 = 114;
    pub const XML: u32 = 142;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const MONEY: u32 = 790;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// The largest `numeric` precision carried as a decimal (ClickHouse's `Decimal256` limit).
pub const MAX_DECIMAL_PRECISION: u8 = 76;
/// Precision of `money` as a decimal: every `int8` amount has at most 19 digits.
pub const MONEY_PRECISION: u8 = 19;

/// A column's type as the catalog describes it, domains already resolved to their base type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTypeInfo {
    /// OID of the base type.
    pub oid: u32,
    /// `pg_type.typname` of the base type (extension types such as `citext` are matched by it).
    pub typname: String,
    /// `pg_type.typtype`: `b` base, `e` enum, `c` composite, `r` range, `m` multirange,
    /// `p` pseudo (`d` does not occur: domains are resolved).
    pub typtype: char,
    /// `pg_type.typcategory` (`A` for arrays).
    pub typcategory: char,
    /// The type modifier: `atttypmod`, or the one a domain imposed; `-1` when none. For an
    /// array it applies to the element.
    pub typmod: i32,
    /// `attndims`: the declared number of array dimensions (0 for non-arrays, and often for
    /// domains over arrays; PostgreSQL does not enforce it).
    pub ndims: i32,
    /// For an array type: its element type, itself resolved (an array of a domain).
    pub element: Option<Box<PgElementInfo>>,
}

/// The element type of an array column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgElementInfo {
    pub oid: u32,
    pub typname: String,
    pub typtype: char,
    pub typcategory: char,
    /// The element's type modifier (`numeric(10,2)[]` → that of `numeric(10,2)`).
    pub typmod: i32,
    /// The delimiter between elements in the array's text form (`,` except for `box`).
    pub typdelim: char,
}

/// One column as [`COLUMNS_QUERY`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgColumn {
    pub attnum: i16,
    pub name: String,
    pub type_info: PgTypeInfo,
    pub not_null: bool,
    /// 1-based position in the primary key, or else in the replica identity index.
    pub key_position: Option<u16>,
    /// The type as `format_type` prints it (`numeric(10,2)`, `public.mood`, `integer[]`).
    pub type_name: String,
}

/// The CTEs that walk `cols`' types (and their arrays' element types) down through domains
/// to their base types; a domain's typmod applies to its base. Shared by [`COLUMNS_QUERY`] and
/// [`RESULT_COLUMNS_QUERY`].
macro_rules! resolve_types {
    () => {
        r#"
-- Domains walked down to their base type; a domain's typmod applies to its base.
col_walk(start, cur, typmod) AS (
    SELECT DISTINCT atttypid, atttypid, -1 FROM cols
    UNION ALL
    SELECT w.start, t.typbasetype,
           CASE WHEN t.typtypmod <> -1 THEN t.typtypmod ELSE w.typmod END
    FROM col_walk w JOIN pg_catalog.pg_type t ON t.oid = w.cur
    WHERE t.typtype = 'd'
),
col_base AS (
    SELECT w.start, t.oid, t.typname, t.typtype, t.typcategory, t.typelem, t.typlen,
           w.typmod
    FROM col_walk w JOIN pg_catalog.pg_type t ON t.oid = w.cur
    WHERE t.typtype <> 'd'
),
-- The same for the element types of arrays (an array of a domain).
elem_walk(start, cur, typmod) AS (
    SELECT DISTINCT b.typelem, b.typelem, -1 FROM col_base b
    WHERE b.typcategory = 'A' AND b.typlen = -1 AND b.typelem <> 0
    UNION ALL
    SELECT w.start, t.typbasetype,
           CASE WHEN t.typtypmod <> -1 THEN t.typtypmod ELSE w.typmod END
    FROM elem_walk w JOIN pg_catalog.pg_type t ON t.oid = w.cur
    WHERE t.typtype = 'd'
),
elem_base AS (
    SELECT w.start, t.oid, t.typname, t.typtype, t.typcategory, t.typdelim, w.typmod
    FROM elem_walk w JOIN pg_catalog.pg_type t ON t.oid = w.cur
    WHERE t.typtype <> 'd'
)"#
    };
}

/// The final `SELECT` over `cols` and the resolved types, with `$key` as each column's
/// `key_position`.
macro_rules! select_columns {
    ($key:literal) => {
        concat!(
            r#"
SELECT c.attnum,
       c.attname::text AS name,
       b.oid AS type_oid,
       b.typname::text AS typname,
       b.typtype::text AS typtype,
       b.typcategory::text AS typcategory,
       CASE WHEN b.typmod <> -1 THEN b.typmod ELSE c.atttypmod END AS typmod,
       c.attndims::int4 AS ndims,
       c.attnotnull AS not_null,
       "#,
            $key,
            r#" AS key_position,
       c.type_name,
       e.oid AS elem_oid,
       e.typname::text AS elem_typname,
       e.typtype::text AS elem_typtype,
       e.typcategory::text AS elem_typcategory,
       CASE WHEN e.typmod <> -1 THEN e.typmod
            WHEN b.typmod <> -1 THEN b.typmod
            ELSE c.atttypmod END AS elem_typmod,
       e.typdelim::text AS elem_typdelim
FROM cols c
JOIN col_base b ON b.start = c.atttypid
LEFT JOIN elem_base e ON e.start = b.typelem
    AND b.typcategory = 'A' AND b.typlen = -1 AND b.typelem <> 0
ORDER BY c.attnum
"#
        )
    };
}

/// A table's live columns in `attnum` order, with their types resolved through domains.
///
/// `$1::oid` is the table. Each row: `attnum int2, name text, type_oid oid, typname text,
/// typtype text, typcategory text, typmod int4, ndims int4, not_null bool, key_position int4
/// (NULL when not in the key), type_name text`, and for arrays the resolved element type
/// `elem_oid oid, elem_typname text, elem_typtype text, elem_typcategory text, elem_typmod int4,
/// elem_typdelim text` (NULLs otherwise). The key is the primary key or, if there is none, the
/// replica identity index. Read rows with [`PgColumn::from_row`].
pub const COLUMNS_QUERY: &str = concat!(
    r#"
WITH RECURSIVE
cols AS (
    SELECT a.attnum, a.attname, a.atttypid, a.atttypmod, a.attndims, a.attnotnull,
           pg_catalog.format_type(a.atttypid, a.atttypmod) AS type_name
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped
),"#,
    resolve_types!(),
    r#",
key_index AS (
    SELECT i.indkey FROM pg_catalog.pg_index i
    WHERE i.indrelid = $1::oid AND (i.indisprimary OR i.indisreplident)
    ORDER BY i.indisprimary DESC
    LIMIT 1
)"#,
    select_columns!(
        "(SELECT k.ord::int4
          FROM key_index ki,
               unnest(ki.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
         WHERE k.attnum = c.attnum)"
    ),
);

/// The columns of a query's result, in order, with their types resolved as
/// [`COLUMNS_QUERY`] resolves a table's, and read with [`PgColumn::from_row`] too.
///
/// `$1::text[]` are the columns' names, `$2::oid[]` their types, `$3::int4[]` their type
/// modifiers (from the query's row description), `$4::oid[]` and `$5::int2[]` the table and
/// column each comes from (0 when it is not a table's column): a column taken from a table
/// keeps its `NOT NULL` and its array dimensions; any other is nullable, an array of one
/// dimension. No column is in a key.
pub const RESULT_COLUMNS_QUERY: &str = concat!(
    r#"
WITH RECURSIVE
cols AS (
    SELECT c.ord::int2 AS attnum, c.name AS attname, c.typ AS atttypid, c.typmod AS atttypmod,
           coalesce(a.attndims, 0)::int4 AS attndims, coalesce(a.attnotnull, false) AS attnotnull,
           pg_catalog.format_type(c.typ, nullif(c.typmod, -1)) AS type_name
    FROM unnest($1::text[], $2::oid[], $3::int4[], $4::oid[], $5::int2[])
             WITH ORDINALITY AS c(name, typ, typmod, relid, relattnum, ord)
    LEFT JOIN pg_catalog.pg_attribute a
        ON a.attrelid = c.relid AND a.attnum = c.relattnum AND c.relattnum > 0
           AND NOT a.attisdropped AND a.atttypid = c.typ
),"#,
    resolve_types!(),
    select_columns!("NULL::int4"),
);

fn first_char(s: &str) -> char {
    s.chars().next().unwrap_or('\0')
}

impl PgColumn {
    /// Reads one row of [`COLUMNS_QUERY`].
    pub fn from_row(row: &tokio_postgres::Row) -> Result<PgColumn, tokio_postgres::Error> {
        let element = match row.try_get::<_, Option<u32>>("elem_oid")? {
            Some(oid) => Some(Box::new(PgElementInfo {
                oid,
                typname: row.try_get("elem_typname")?,
                typtype: first_char(row.try_get("elem_typtype")?),
                typcategory: first_char(row.try_get("elem_typcategory")?),
                typmod: row.try_get("elem_typmod")?,
                typdelim: first_char(row.try_get("elem_typdelim")?),
            })),
            None => None,
        };
        let key_position: Option<i32> = row.try_get("key_position")?;
        Ok(PgColumn {
            attnum: row.try_get("attnum")?,
            name: row.try_get("name")?,
            type_info: PgTypeInfo {
                oid: row.try_get("type_oid")?,
                typname: row.try_get("typname")?,
                typtype: first_char(row.try_get("typtype")?),
                typcategory: first_char(row.try_get("typcategory")?),
                typmod: row.try_get("typmod")?,
                ndims: row.try_get("ndims")?,
                element,
            },
            not_null: row.try_get("not_null")?,
            key_position: key_position.and_then(|p| u16::try_from(p).ok()),
            type_name: row.try_get("type_name")?,
        })
    }
}

/// How the snapshot's SELECT must read a column so that [`decode_binary`] understands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SelectCast {
    /// The column as it is.
    None,
    /// The column's text output (as `text[]` for arrays): the kind is `Text` but the type is not
    /// a text type.
    Text,
    /// `col::numeric` (`col::numeric[]` for arrays): `money`.
    Numeric,
}

/// A column's [`ValueKind`] and how the snapshot selects it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mapping {
    pub kind: ValueKind,
    pub cast: SelectCast,
}

impl Mapping {
    /// Whether the snapshot selects the column's text output (as `text[]` for arrays).
    pub fn select_as_text(&self) -> bool {
        self.cast == SelectCast::Text
    }

    /// The expression the snapshot selects, given the column's quoted name.
    pub fn select_expr(&self, quoted_column: &str) -> String {
        let c = quoted_column;
        let array = matches!(self.kind, ValueKind::Array { .. });
        match (self.cast, array) {
            (SelectCast::None, _) => c.to_owned(),
            (SelectCast::Text, false) => {
                format!("CASE WHEN num_nulls({c}) = 0 THEN format('%s', {c}) END")
            }
            (SelectCast::Text, true) => format!("{c}::text::text[]"),
            (SelectCast::Numeric, false) => format!("{c}::numeric"),
            (SelectCast::Numeric, true) => format!("{c}::numeric[]"),
        }
    }
}

/// A scalar (non-array) type's mapping.
fn scalar_mapping(oid: u32, typname: &str, typmod: i32, money_scale: u8) -> Mapping {
    let native = |kind| Mapping {
        kind,
        cast: SelectCast::None,
    };
    let text = Mapping {
        kind: ValueKind::Text,
        cast: SelectCast::Text,
    };
    match oid {
        oid::BOOL => native(ValueKind::Bool),
        oid::INT2 => native(ValueKind::Int16),
        oid::INT4 => native(ValueKind::Int32),
        oid::INT8 => native(ValueKind::Int64),
        oid::OID | oid::XID | oid::CID => native(ValueKind::UInt32),
        oid::FLOAT4 => native(ValueKind::Float32),
        oid::FLOAT8 => native(ValueKind::Float64),
        oid::NUMERIC => match numeric_typmod(typmod) {
            Some((precision, scale)) if precision <= MAX_DECIMAL_PRECISION => {
                native(ValueKind::Decimal { precision, scale })
            }
            _ => text,
        },
        oid::MONEY => Mapping {
            kind: ValueKind::Decimal {
                precision: MONEY_PRECISION,
                scale: money_scale,
            },
            cast: SelectCast::Numeric,
        },
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME => native(ValueKind::Text),
        oid::BYTEA => native(ValueKind::Bytes),
        oid::UUID => native(ValueKind::Uuid),
        oid::DATE => native(ValueKind::Date),
        oid::TIMESTAMP => native(ValueKind::Timestamp),
        oid::TIMESTAMPTZ => native(ValueKind::TimestampTz),
        _ if typname == "citext" => native(ValueKind::Text),
        _ => text,
    }
}

/// `numeric(p, s)`'s precision and scale from its typmod; `None` without one. A negative scale
/// (PostgreSQL 15+ allows `numeric(2, -3)`) or a scale above the precision is not a decimal
/// Ferry maps, so it is `None` too.
fn numeric_typmod(typmod: i32) -> Option<(u8, u8)> {
    if typmod < 4 {
        return None;
    }
    let t = typmod - 4;
    let precision = (t >> 16) & 0xFFFF;
    // The scale is an 11-bit signed field.
    let scale = ((t & 0x7FF) ^ 1024) - 1024;
    if !(1..=1000).contains(&precision) || scale < 0 || scale > precision {
        return None;
    }
    Some((u8::try_from(precision).ok()?, u8::try_from(scale).ok()?))
}

/// Decides how a column of type `ty` is carried.
///
/// `money_scale` is the scale of the server's `money` (`SELECT scale('1'::money::numeric)`).
pub fn value_kind(ty: &PgTypeInfo, money_scale: u8) -> Mapping {
    let is_array = ty.typcategory == 'A' && !matches!(ty.oid, oid::INT2VECTOR | oid::OIDVECTOR);
    match (&ty.element, is_array) {
        (Some(elem), true) => {
            let text = Mapping {
                kind: ValueKind::Text,
                cast: SelectCast::Text,
            };
            // Elements must split on ',' in the text form, and must not be arrays themselves.
            if elem.typdelim != ',' || elem.typcategory == 'A' {
                return text;
            }
            let element = scalar_mapping(elem.oid, &elem.typname, elem.typmod, money_scale);
            let dims = u8::try_from(ty.ndims.clamp(1, 6)).unwrap_or(1);
            Mapping {
                kind: ValueKind::Array {
                    element: Box::new(element.kind),
                    dims,
                },
                cast: element.cast,
            }
        }
        _ => scalar_mapping(ty.oid, &ty.typname, ty.typmod, money_scale),
    }
}

/// Whether pgoutput's binary mode sends this column's values in the canonical binary form of
/// its kind already (see [`ferry_core::canonical`]): the binary send format of its type is the
/// kind's canonical one. Others (`money`'s cents, `jsonb`'s version byte, types carried as
/// their text output …) need pgoutput's text mode. `column.type_oid` is the base type (domains
/// resolved); arrays of these types qualify too.
pub fn binary_is_canonical(column: &ferry_core::ColumnSchema) -> bool {
    fn scalar(oid: u32, kind: &ValueKind) -> bool {
        matches!(
            (oid, kind),
            (oid::BOOL, ValueKind::Bool)
                | (oid::INT2, ValueKind::Int16)
                | (oid::INT4, ValueKind::Int32)
                | (oid::INT8, ValueKind::Int64)
                | (oid::OID | oid::XID | oid::CID, ValueKind::UInt32)
                | (oid::FLOAT4, ValueKind::Float32)
                | (oid::FLOAT8, ValueKind::Float64)
                | (oid::NUMERIC, ValueKind::Decimal { .. })
                | (
                    oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::JSON,
                    ValueKind::Text
                )
                | (oid::BYTEA, ValueKind::Bytes)
                | (oid::UUID, ValueKind::Uuid)
                | (oid::DATE, ValueKind::Date)
                | (oid::TIMESTAMP, ValueKind::Timestamp)
                | (oid::TIMESTAMPTZ, ValueKind::TimestampTz)
        )
    }
    /// The array types of the scalar types above.
    fn element_of(array_oid: u32) -> Option<u32> {
        Some(match array_oid {
            1000 => oid::BOOL,
            1005 => oid::INT2,
            1007 => oid::INT4,
            1016 => oid::INT8,
            1028 => oid::OID,
            1021 => oid::FLOAT4,
            1022 => oid::FLOAT8,
            1231 => oid::NUMERIC,
            1009 => oid::TEXT,
            1015 => oid::VARCHAR,
            1014 => oid::BPCHAR,
            1003 => oid::NAME,
            1001 => oid::BYTEA,
            2951 => oid::UUID,
            1182 => oid::DATE,
            1115 => oid::TIMESTAMP,
            1185 => oid::TIMESTAMPTZ,
            _ => return None,
        })
    }
    match &column.kind {
        ValueKind::Array { element, .. } => {
            element_of(column.type_oid).is_some_and(|e| scalar(e, element))
        }
        kind => scalar(column.type_oid, kind),
    }
}

/// Appends the canonical binary form ([`ferry_core::canonical`]) of a value of `kind` given in
/// PostgreSQL's text output, as pgoutput's text mode sends it.
pub fn text_to_canonical(
    kind: &ValueKind,
    text: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    let text = std::str::from_utf8(text).map_err(|_| DecodeError::Utf8)?;
    if *kind == ValueKind::Text {
        out.extend_from_slice(text.as_bytes());
        return Ok(());
    }
    let value = decode_text(kind, text)?;
    ferry_core::canonical::encode(kind, &value, out)
}

#[cfg(test)]
mod tests;
