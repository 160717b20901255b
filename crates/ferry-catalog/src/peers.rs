//! Peers in the catalog.

use ferry_core::peer::{PeerConfig, PeerKind};
use tokio_postgres::Row;

use crate::{Catalog, CatalogError};

/// A peer as stored, its password opened.
#[derive(Debug, Clone)]
pub struct StoredPeer {
    pub id: i64,
    pub name: String,
    pub config: PeerConfig,
}

impl Catalog {
    /// Stores a new peer. Returns `false` (and stores nothing) when one of that name exists.
    pub async fn insert_peer(&self, name: &str, config: &PeerConfig) -> Result<bool, CatalogError> {
        let secret = match config.password() {
            "" => None,
            pw => Some(self.key().seal(pw.as_bytes())?),
        };
        let client = self.client().await?;
        let n = client
            .execute(
                "INSERT INTO ferry.peers (name, type, options, secret) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO NOTHING",
                &[&name, &config.kind().as_str(), &config.to_json(), &secret],
            )
            .await?;
        Ok(n == 1)
    }

    /// The peer of that name, if any.
    pub async fn peer(&self, name: &str) -> Result<Option<StoredPeer>, CatalogError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id, name, type, options, secret FROM ferry.peers WHERE name = $1",
                &[&name],
            )
            .await?;
        row.map(|r| self.peer_from_row(&r)).transpose()
    }

    fn peer_from_row(&self, row: &Row) -> Result<StoredPeer, CatalogError> {
        let name: String = row.get(1);
        let kind_text: String = row.get(2);
        let kind = PeerKind::from_catalog(&kind_text).ok_or_else(|| {
            CatalogError::Corrupt(format!("peer {name:?} has unknown type {kind_text:?}"))
        })?;
        let options: serde_json::Value = row.get(3);
        let mut config = PeerConfig::from_json(kind, options).map_err(|e| {
            CatalogError::Corrupt(format!("peer {name:?} has unreadable options: {e}"))
        })?;
        let secret: Option<Vec<u8>> = row.get(4);
        if let Some(sealed) = secret {
            let plain = self.key().open(&sealed)?;
            let pw = String::from_utf8(plain).map_err(|_| {
                CatalogError::Corrupt(format!("peer {name:?} has a password that is not UTF-8"))
            })?;
            config.set_password(pw);
        }
        Ok(StoredPeer {
            id: row.get(0),
            name,
            config,
        })
    }

    /// Names of the mirrors that use a peer, as source or destination.
    pub async fn mirrors_using_peer(&self, peer_id: i64) -> Result<Vec<String>, CatalogError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT name FROM ferry.mirrors WHERE source_peer = $1 OR destination_peer = $1 ORDER BY name",
                &[&peer_id],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Deletes a peer. Returns `false` when there was none of that name.
    ///
    /// A peer still used by a mirror is refused by the catalog's foreign keys, which the
    /// caller sees as an error of kind `InvalidInput`; check [`Catalog::mirrors_using_peer`]
    /// first for a friendlier message.
    pub async fn delete_peer(&self, name: &str) -> Result<bool, CatalogError> {
        let client = self.client().await?;
        let n = client
            .execute("DELETE FROM ferry.peers WHERE name = $1", &[&name])
            .await?;
        Ok(n == 1)
    }
}

impl Catalog {
    /// The peer with this id, if any.
    pub async fn peer_by_id(&self, id: i64) -> Result<Option<StoredPeer>, CatalogError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id, name, type, options, secret FROM ferry.peers WHERE id = $1",
                &[&id],
            )
            .await?;
        row.map(|r| self.peer_from_row(&r)).transpose()
    }
}
