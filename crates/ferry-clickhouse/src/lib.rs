//! The ClickHouse destination.
//!
//! - [`destination`]: the engine's destination contract, kept by ClickHouse's means;
//! - [`table`]: the tables' layout, DDL and streamed inserts; [`types`]: column types;
//! - [`load`]: one range of the initial load; [`apply`]: streamed changes as versioned rows;
//! - [`lookup`]: reading back stored values (unchanged TOAST columns);
//! - [`rowbinary`] and [`decimal`]: values in ClickHouse's RowBinary format;
//! - [`connect`]: the HTTP(S) client and the classification of ClickHouse's errors.

pub mod apply;
pub mod connect;
pub mod decimal;
pub mod destination;
pub mod load;
pub mod lookup;
pub mod rowbinary;
pub mod table;
pub mod types;

pub use destination::ClickHouseDestination;
