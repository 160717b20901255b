//! Execution of commands that change Ferry's state.

use std::sync::Arc;

use ferry_catalog::{Catalog, StoredPeer};
use ferry_core::mirror::MirrorSpec;
use ferry_core::peer::PeerConfig;
use ferry_core::qrep::QuerySpec;
use ferry_flow::{CreateMirror, CreateQueryMirror, Engine, FlowError};
use tracing::info;

use crate::error::{code, ClientError};

/// What a command did, for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The command tag (`CREATE PEER`).
    pub tag: &'static str,
    /// A notice to show, e.g. for `IF NOT EXISTS` when the thing exists.
    pub notice: Option<String>,
}

impl Outcome {
    pub fn done(tag: &'static str) -> Self {
        Outcome { tag, notice: None }
    }

    fn skipped(tag: &'static str, notice: String) -> Self {
        Outcome {
            tag,
            notice: Some(notice),
        }
    }
}

/// Checks the peer answers, then stores it. Nothing is stored when anything fails.
pub async fn create_peer(
    catalog: &Catalog,
    name: &str,
    if_not_exists: bool,
    config: &PeerConfig,
) -> Result<Outcome, ClientError> {
    const TAG: &str = "CREATE PEER";
    let exists = || {
        ClientError::new(
            code::DUPLICATE_OBJECT,
            format!("peer \"{name}\" already exists"),
        )
    };
    if catalog.peer(name).await?.is_some() {
        if if_not_exists {
            return Ok(Outcome::skipped(
                TAG,
                format!("peer \"{name}\" already exists, skipping"),
            ));
        }
        return Err(exists());
    }
    check_peer(config).await.map_err(|mut e| {
        e.message = format!("cannot create peer \"{name}\": {}", e.message);
        e
    })?;
    if !catalog.insert_peer(name, config).await? {
        // Created by someone else since the check above.
        if if_not_exists {
            return Ok(Outcome::skipped(
                TAG,
                format!("peer \"{name}\" already exists, skipping"),
            ));
        }
        return Err(exists());
    }
    info!(peer = %name, kind = %config.kind(), "peer created");
    Ok(Outcome::done(TAG))
}

/// Connects to a peer as `CREATE PEER` does.
pub async fn check_peer(config: &PeerConfig) -> Result<(), ClientError> {
    match config {
        PeerConfig::Postgres(c) => ferry_postgres::connect::check_peer(c)
            .await
            .map_err(ClientError::from),
        PeerConfig::Clickhouse(c) => ferry_clickhouse::connect::check_peer(c)
            .await
            .map_err(ClientError::from),
    }
}

/// Removes a peer no mirror uses.
pub async fn drop_peer(
    catalog: &Catalog,
    name: &str,
    if_exists: bool,
) -> Result<Outcome, ClientError> {
    const TAG: &str = "DROP PEER";
    let Some(peer) = catalog.peer(name).await? else {
        if if_exists {
            return Ok(Outcome::skipped(
                TAG,
                format!("peer \"{name}\" does not exist, skipping"),
            ));
        }
        return Err(ClientError::new(
            code::UNDEFINED_OBJECT,
            format!("peer \"{name}\" does not exist"),
        ));
    };
    let users = catalog.mirrors_using_peer(peer.id).await?;
    if !users.is_empty() {
        return Err(in_use(name, &users));
    }
    match catalog.delete_peer(name).await {
        Ok(_) => {}
        // A mirror created since the check above: the foreign key refuses the delete.
        Err(e) if e.sqlstate() == Some("23503") => {
            let users = catalog.mirrors_using_peer(peer.id).await?;
            return Err(in_use(name, &users));
        }
        Err(e) => return Err(e.into()),
    }
    info!(peer = %name, "peer dropped");
    Ok(Outcome::done(TAG))
}

fn in_use(name: &str, mirrors: &[String]) -> ClientError {
    ClientError::new(
        code::DEPENDENT_OBJECTS_STILL_EXIST,
        format!(
            "cannot drop peer \"{name}\" because mirrors use it: {}",
            mirrors.join(", ")
        ),
    )
    .with_hint("Drop those mirrors first.")
}

impl From<FlowError> for ClientError {
    fn from(e: FlowError) -> Self {
        let mut c = ClientError::new(&e.sqlstate, e.message);
        c.hint = e.hint;
        c
    }
}

async fn existing_peer(catalog: &Catalog, name: &str) -> Result<StoredPeer, ClientError> {
    catalog.peer(name).await?.ok_or_else(|| {
        ClientError::new(
            code::UNDEFINED_OBJECT,
            format!("peer \"{name}\" does not exist"),
        )
    })
}

/// Checks and sets a mirror up; the initial load then runs in the background.
pub async fn create_mirror(
    catalog: &Catalog,
    engine: &Arc<Engine>,
    name: &str,
    if_not_exists: bool,
    source: &str,
    destination: &str,
    spec: MirrorSpec,
) -> Result<Outcome, ClientError> {
    let (source, destination) = mirror_peers(catalog, source, destination).await?;
    let req = CreateMirror {
        name: name.to_owned(),
        if_not_exists,
        source,
        destination,
        spec,
    };
    Ok(mirror_created(engine.create_mirror(req).await?, name))
}

/// Checks and sets a query mirror up; its runs then go on in the background.
pub async fn create_query_mirror(
    catalog: &Catalog,
    engine: &Arc<Engine>,
    name: &str,
    if_not_exists: bool,
    source: &str,
    destination: &str,
    spec: QuerySpec,
) -> Result<Outcome, ClientError> {
    let (source, destination) = mirror_peers(catalog, source, destination).await?;
    let req = CreateQueryMirror {
        name: name.to_owned(),
        if_not_exists,
        source,
        destination,
        spec,
    };
    Ok(mirror_created(engine.create_query_mirror(req).await?, name))
}

async fn mirror_peers(
    catalog: &Catalog,
    source: &str,
    destination: &str,
) -> Result<(StoredPeer, StoredPeer), ClientError> {
    Ok((
        existing_peer(catalog, source).await?,
        existing_peer(catalog, destination).await?,
    ))
}

/// `CREATE MIRROR`'s answer: done, or skipped (`IF NOT EXISTS` and the mirror exists).
fn mirror_created(created: bool, name: &str) -> Outcome {
    const TAG: &str = "CREATE MIRROR";
    if created {
        Outcome::done(TAG)
    } else {
        Outcome::skipped(TAG, format!("mirror \"{name}\" already exists, skipping"))
    }
}

/// A query mirror's next run, now.
pub async fn execute_mirror(engine: &Engine, name: &str) -> Result<Outcome, ClientError> {
    engine.execute_mirror(name).await?;
    Ok(Outcome::done("EXECUTE MIRROR"))
}

pub async fn drop_mirror(
    engine: &Engine,
    name: &str,
    if_exists: bool,
) -> Result<Outcome, ClientError> {
    const TAG: &str = "DROP MIRROR";
    if engine.drop_mirror(name, if_exists).await? {
        Ok(Outcome::done(TAG))
    } else {
        Ok(Outcome::skipped(
            TAG,
            format!("mirror \"{name}\" does not exist, skipping"),
        ))
    }
}

pub async fn pause_mirror(engine: &Engine, name: &str) -> Result<Outcome, ClientError> {
    engine.pause_mirror(name).await?;
    Ok(Outcome::done("PAUSE MIRROR"))
}

pub async fn resume_mirror(engine: &Arc<Engine>, name: &str) -> Result<Outcome, ClientError> {
    engine.resume_mirror(name).await?;
    Ok(Outcome::done("RESUME MIRROR"))
}

pub async fn alter_mirror(
    engine: &Arc<Engine>,
    name: &str,
    change: ferry_core::mirror::MirrorChange,
) -> Result<Outcome, ClientError> {
    engine.alter_mirror(name, change).await?;
    Ok(Outcome::done("ALTER MIRROR"))
}

pub async fn resync_mirror(
    engine: &Arc<Engine>,
    name: &str,
    tables: &[ferry_core::TableName],
) -> Result<Outcome, ClientError> {
    if tables.is_empty() {
        engine.resync_mirror(name).await?;
    } else {
        engine.resync_tables(name, tables).await?;
    }
    Ok(Outcome::done("RESYNC MIRROR"))
}
