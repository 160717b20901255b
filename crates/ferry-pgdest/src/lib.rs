//! PostgreSQL as a destination: the engine's [`Destination`](ferry_core::destination::Destination)
//! contract, kept by PostgreSQL's means ([`PgDestination`]).
//!
//! - **Tables** are created from the source's definition: every copied column with its exact
//!   type and collation, NOT NULL, and the primary key; user-defined types are created where
//!   missing ([`ddl`]). A table that exists is used if it is compatible; `CREATE MIRROR`
//!   checks that, every type, and the role's privileges before anything is created
//!   ([`check`]).
//! - **The initial load** asks the source for each column's own binary format
//!   ([`Wire::Native`](ferry_core::destination::Wire::Native)) and passes each range's binary
//!   COPY stream into `COPY … FROM STDIN (FORMAT binary)`, rewriting only the type OIDs that
//!   arrays and composites of user types carry ([`recode`]); each range commits with its
//!   record in `_ferry.loaded_ranges`, so a range loaded before a crash is not loaded again
//!   ([`load`], [`state`]). The primary key is built after the load (about half the cost of
//!   loading with it in place), unless the mirror asks for it during the load.
//! - **Streamed changes** land in one destination transaction per batch, with the mirror's
//!   position in `_ferry.positions` in the same transaction ([`apply`]): after a crash the
//!   engine resumes from that position, so nothing is applied twice. Each table's changes are
//!   reduced to their net effect ([`net`]), staged with binary COPY into a temporary table and
//!   applied as a set ([`stage`]).
//!
//! - **Query mirrors** (`CREATE MIRROR … FOR $$query$$`) land in a table of the query's result
//!   columns with their exact types; each partition of a run commits with its record in
//!   `_ferry.loaded_partitions`, appended, upserted by key, or loaded into a fresh table swapped
//!   in at the end ([`qrep`]).
//!
//! Crate layout: [`destination`] (the contract), [`check`], [`ddl`], [`load`], [`apply`],
//! [`net`], [`stage`], [`recode`], [`state`], [`qrep`], [`db`] (connections and look-ups).

pub mod apply;
pub mod check;
pub mod db;
pub mod ddl;
pub mod destination;
pub mod load;
pub mod net;
pub mod qrep;
pub mod recode;
pub mod stage;
pub mod state;

pub use db::MirrorId;
pub use destination::{PgDestination, PgOptions};
