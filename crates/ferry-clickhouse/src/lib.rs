//! ferry-clickhouse
pub mod connect;
