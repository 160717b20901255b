//! The ClickHouse destination.
//!
//! - [`destination`]: the engine's destination contract, kept by ClickHouse's means;
//! - [`table`]: the tables' layout, DDL and streamed inserts; [`types`]: column types;
//!   [`layout`]: the sort key, partitioning, settings and column types a mirror chooses;
//! - [`load`]: one range of the initial load; [`apply`]: streamed changes as versioned rows;
//! - [`qrep`]: query mirrors' tables and partitions;
//! - [`lookup`]: reading back stored values (unchanged TOAST columns);
//! - [`identity`]: tables without a key, as multisets;
//! - [`transcode`]: canonical binary fields straight into ClickHouse's formats;
//!   [`rowbinary`] and [`decimal`]: values in RowBinary; both write each value through `cell`
//!   under one policy for values ClickHouse cannot hold ([`unrepresentable`]);
//! - [`native`]: rows gathered into ClickHouse's columnar `Native` blocks;
//! - [`connect`]: the HTTP(S) client and the classification of ClickHouse's errors.

pub mod apply;
mod cell;
pub mod connect;
pub mod decimal;
pub mod destination;
pub mod identity;
pub mod layout;
pub mod load;
pub mod lookup;
mod multiset;
pub mod native;
pub mod qrep;
pub mod rowbinary;
pub mod table;
pub mod transcode;
pub mod types;
pub mod unrepresentable;

pub use destination::ClickHouseDestination;
