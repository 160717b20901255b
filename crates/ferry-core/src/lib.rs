//! Types shared by every part of Ferry.
//!
//! Data flows one way through the workspace: the source (`ferry-postgres`) turns PostgreSQL's
//! wire formats into the values defined here, the engine (`ferry-flow`) moves them, and the
//! destination (`ferry-clickhouse`) encodes them for ClickHouse. Nothing in this crate knows
//! either server's protocol; it only fixes the vocabulary they share:
//!
//! - [`Lsn`]: a WAL position;
//! - [`Value`] and [`Numeric`]: one column value, lossless for every mapped PostgreSQL type;
//! - [`schema`]: tables, columns and how each PostgreSQL type is carried ([`ValueKind`]);
//! - [`peer`]: connection settings of source and destination peers;
//! - [`pgtype`]: a source column's exact PostgreSQL type, for a PostgreSQL destination;
//! - [`mirror`]: what a mirror copies and how; [`qrep`]: what a query mirror runs;
//! - [`ident`]: the one place identifiers are quoted for either server;
//! - [`error`]: the error kinds that decide what is retried;
//! - [`binary_copy`]: framing PostgreSQL's binary COPY stream into rows of borrowed fields;
//! - [`pg_binary`]: reading binary `numeric`s and arrays in place, for the source and the
//!   destination alike.

pub mod binary_copy;
pub mod canonical;
pub mod change;
pub mod destination;
pub mod error;
pub mod ident;
pub mod layout;
pub mod lsn;
pub mod mirror;
pub mod peer;
pub mod pg_binary;
pub mod pgtype;
pub mod qrep;
pub mod schema;
pub mod tls;
pub mod value;

pub use error::{Error, ErrorKind};
pub use lsn::Lsn;
pub use schema::{ColumnSchema, TableName, TableSchema, ValueKind};
pub use value::{civil_from_days, days_from_civil, Numeric, Value};
