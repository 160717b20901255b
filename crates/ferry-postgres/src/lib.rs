//! ferry-postgres
pub mod connect;
