//! Tables and columns as Ferry sees them, and how each column's values are carried.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ident::pg_qualified;

/// A schema-qualified PostgreSQL table name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        TableName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// The name quoted for PostgreSQL.
    pub fn quoted(&self) -> String {
        pg_qualified(&self.schema, &self.name)
    }
}

impl fmt::Display for TableName {
    /// `schema.name` as a person reads it (unquoted; use [`TableName::quoted`] in SQL).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// How the values of one column travel from PostgreSQL to the destination.
///
/// The source decides the kind from the column's PostgreSQL type (see the mapping table in the
/// README); the destination derives its column type from it. Types that have no lossless
/// native counterpart travel as [`ValueKind::Text`] in PostgreSQL's own text form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ValueKind {
    Bool,
    Int16,
    Int32,
    Int64,
    /// `oid`, `xid` and other unsigned 32-bit types.
    UInt32,
    Float32,
    Float64,
    /// `numeric(p, s)` with `p <= 76`, and `money` (scale from the source's `lc_monetary`).
    Decimal {
        precision: u8,
        scale: u8,
    },
    /// Any text form: text types, JSON, unconstrained numeric, and every type without a
    /// native counterpart (intervals, network addresses, ranges, geometry …).
    Text,
    /// `bytea`.
    Bytes,
    Uuid,
    Date,
    Timestamp,
    TimestampTz,
    /// A PostgreSQL array with a fixed number of dimensions (`attndims`, at least 1).
    Array {
        element: Box<ValueKind>,
        dims: u8,
    },
}

/// One column of a replicated table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnSchema {
    pub name: String,
    /// The column's type OID (a domain's base type already resolved).
    pub type_oid: u32,
    /// The type as PostgreSQL prints it (`format_type`), for messages and status.
    pub type_name: String,
    pub kind: ValueKind,
    /// Whether the source allows NULL here.
    pub nullable: bool,
    /// Position in the primary key (or replica identity), 1-based; `None` when not part of it.
    pub key_position: Option<u16>,
    /// The column's exact type at the source, for a destination that recreates it; `None` in
    /// descriptions made before Ferry kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_type: Option<crate::pgtype::PgType>,
}

/// A replicated table: its name, OID and the columns Ferry copies, in the source's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    pub name: TableName,
    pub oid: u32,
    pub columns: Vec<ColumnSchema>,
}

impl TableSchema {
    /// The key columns in key order.
    pub fn key_columns(&self) -> Vec<&ColumnSchema> {
        let mut keys: Vec<&ColumnSchema> = self
            .columns
            .iter()
            .filter(|c| c.key_position.is_some())
            .collect();
        keys.sort_by_key(|c| c.key_position);
        keys
    }
}
