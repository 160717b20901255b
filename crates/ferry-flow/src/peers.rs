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

/// The destination a peer stands for, for one mirror.
pub fn destination(
    peer: &StoredPeer,
    mirror: &str,
    options: &MirrorOptions,
) -> Result<Arc<dyn Destination>, FlowError> {
    destination_for(peer, mirror, options.unrepresentable_values)
}

/// [`destination`], for a mirror whose options are not a [`MirrorOptions`] (a query mirror's).
pub fn destination_for(
    peer: &StoredPeer,
    mirror: &str,
    unrepresentable: Unrepresentable,
) -> Result<Arc<dyn Destination>, FlowError> {
    let context = MirrorContext {
        mirror: mirror.to_owned(),
        unrepresentable,
    };
    match &peer.config {
        PeerConfig::Clickhouse(c) => Ok(Arc::new(ferry_clickhouse::ClickHouseDestination::new(
            c, context,
        )?)),
        other => Err(FlowError::invalid(
            "42809",
            format!(
                "peer \"{}\" is a {} peer, which cannot be a mirror's destination",
                peer.name,
                other.kind()
            ),
        )
        .with_hint("A mirror's destination is a CLICKHOUSE or POSTGRES peer.")),
    }
}
