//! The PostgreSQL source: everything Ferry says to the database it replicates from.
//!
//! - [`connect`]: ordinary connections (TLS in [`tls`]), the session settings and the one
//!   classifier of the server's errors;
//! - [`source`]: checks and table descriptions; [`types`]: how each type is carried;
//! - [`snapshot`] and [`ctid`]: reading the initial load's ranges under one snapshot, over a
//!   [`session`] that reads COPY streams in bulk on the raw protocol;
//! - [`query`]: query mirrors' queries, their runs' snapshots and partitions;
//! - [`publication`]: the publication, dropping slots, the few look-ups the stream needs;
//! - [`replication`] and [`pgoutput`]: the replication connection and its messages;
//! - [`copy`]: decoding a binary COPY stream into values (tests and tools).

pub mod connect;
pub mod copy;
pub mod ctid;
pub mod pgoutput;
pub mod publication;
pub mod query;
pub mod replication;
pub mod session;
pub mod snapshot;
pub mod source;
pub mod tls;
pub mod types;
mod wire;

#[cfg(test)]
mod fake_server;
