//! Ferry's catalog: peers, mirrors and all their state, kept in a PostgreSQL database.
//!
//! The catalog is the only state Ferry has: a daemon restarted on another machine with the
//! same catalog URL and secret key carries on where the last one stopped. [`migrate`] brings a
//! database to the current schema at start; [`Catalog`] reads and writes it; [`secret`] seals
//! peer passwords so the catalog never holds one in clear; [`reader`] runs clients' SQL on it
//! with no power but to read the views.

mod connect;
mod error;
mod lease;
pub mod migrate;
mod mirrors;
mod monitor;
mod peers;
mod pool;
mod qrep;
pub mod reader;
pub mod secret;

pub use error::CatalogError;
pub use lease::Lease;
pub use migrate::{migrate, MigrationReport};
pub use mirrors::{BatchRecord, MirrorRow, NewTable, PartitionRow, TableRow};
pub use monitor::{MonitoredMirror, SlotSample, StreamFigures, TableFigures, Warning};
pub use peers::StoredPeer;
pub use pool::{Catalog, CatalogOptions};
pub use qrep::{NewRun, QueryMirrorRow, QueryPartitionRow, QueryRunRow};
pub use reader::{ReadTransaction, ReaderError, ReaderPool, ReaderSettings};
pub use secret::SecretKey;
