//! Turning a mirror's peers into a source configuration and a destination: the one place
//! that names the destination crates.

use std::sync::Arc;

use ferry_catalog::StoredPeer;
use ferry_core::destination::{Destination, MirrorContext};
use ferry_core::mirror::{MirrorOptions, Unrepresentable};
use ferry_core::peer::{PeerConfig, PostgresConfig};

use crate::FlowError;

/// The source's settings, checked to be a PostgreSQL peer.
pub fn source_config(peer: &StoredPeer) -> Result<PostgresConfig, FlowError> {
    match &peer.config {
        PeerConfig::Postgres(c) => Ok(c.clone()),
        other => Err(FlowError::invalid(
            "42809",
            format!(
                "peer \"{}\" is a {} peer; a mirror's source must be a POSTGRES peer",
                peer.name,
                other.kind()
            ),
        )),
    }
}

/// The mirror a destination is built for: a destination that keeps state of its own (a
/// position, loaded ranges) keeps it per mirror. The id is the mirror's catalog id, unknown
/// while `CREATE MIRROR` checks and creates tables.
pub struct MirrorRef<'a> {
    pub name: &'a str,
    pub id: Option<i64>,
    pub options: &'a MirrorOptions,
}

/// The destination a peer stands for, for one mirror.
pub fn destination(
    peer: &StoredPeer,
    mirror: &MirrorRef<'_>,
) -> Result<Arc<dyn Destination>, FlowError> {
    build(
        peer,
        mirror.name,
        mirror.id,
        mirror.options.unrepresentable_values,
        ferry_pgdest::PgOptions {
            initial_load: mirror.options.do_initial_copy,
            key_during_load: mirror.options.primary_key_during_load,
        },
    )
}

/// [`destination`], for a query mirror (whose options are not a [`MirrorOptions`]).
pub fn destination_for(
    peer: &StoredPeer,
    mirror: &str,
    id: Option<i64>,
    unrepresentable: Unrepresentable,
) -> Result<Arc<dyn Destination>, FlowError> {
    build(
        peer,
        mirror,
        id,
        unrepresentable,
        ferry_pgdest::PgOptions {
            initial_load: true,
            key_during_load: false,
        },
    )
}

fn build(
    peer: &StoredPeer,
    mirror: &str,
    id: Option<i64>,
    unrepresentable: Unrepresentable,
    pg: ferry_pgdest::PgOptions,
) -> Result<Arc<dyn Destination>, FlowError> {
    match &peer.config {
        PeerConfig::Clickhouse(c) => Ok(Arc::new(ferry_clickhouse::ClickHouseDestination::new(
            c,
            MirrorContext {
                mirror: mirror.to_owned(),
                unrepresentable,
            },
        )?)),
        PeerConfig::Postgres(c) => Ok(Arc::new(ferry_pgdest::PgDestination::new(
            c,
            ferry_pgdest::MirrorId {
                name: mirror.to_owned(),
                id,
            },
            pg,
        ))),
    }
}
