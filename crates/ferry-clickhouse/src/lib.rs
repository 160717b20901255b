//! The ClickHouse destination: column types for Ferry's value kinds ([`types`]) and the
//! RowBinary encoding of values ([`rowbinary`], with exact decimals in [`decimal`]).

pub mod connect;
pub mod decimal;
pub mod lookup;
pub mod rowbinary;
pub mod table;
pub mod types;
