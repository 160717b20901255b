//! The PostgreSQL source: type mapping and value decoding ([`types`]) and the binary COPY
//! decoder of the snapshot path ([`copy`]).

pub mod connect;
pub mod copy;
pub mod ctid;
pub mod pgoutput;
pub mod replication;
pub mod source;
pub mod tls;
pub mod types;
