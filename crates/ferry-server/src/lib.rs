//! Ferry's front end: the PostgreSQL wire protocol server psql talks to, and the daemon.
//!
//! [`run`] serves a bound listener until told to shut down; the `ferry` binary (`main.rs`)
//! only reads its flags, opens the catalog and calls it. A session
//! ([`session::Session`]) parses each statement (`ferry-sql`), analyses it into a
//! [`analyze::Command`] and executes it: Ferry's statements against the catalog and the
//! peers, anything else as read-only SQL on the catalog database.

pub mod analyze;
pub mod auth;
pub mod catalog_sql;
pub mod error;
pub mod execute;
pub mod metrics;
pub mod session;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferry_catalog::Catalog;
use ferry_flow::Engine;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::auth::Credentials;
use crate::metrics::Metrics;
use crate::session::{Handlers, Session};

/// How long open sessions get to finish after shutdown is asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every session shares.
pub struct Shared {
    pub catalog: Catalog,
    pub engine: Arc<Engine>,
    pub credentials: Arc<Credentials>,
    pub metrics: Arc<Metrics>,
}

impl Shared {
    pub fn new(catalog: Catalog, user: &str, password: &str) -> Arc<Shared> {
        Arc::new(Shared {
            engine: Engine::new(catalog.clone()),
            catalog,
            credentials: Arc::new(Credentials::new(user, password)),
            metrics: Arc::new(Metrics::default()),
        })
    }
}

/// Serves PostgreSQL clients on `listener` until `shutdown` completes, then gives open
/// sessions a few seconds before closing them.
pub async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    info!(%addr, "ferry is listening for PostgreSQL clients");
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let handlers = Arc::new(Handlers {
                    session: Arc::new(Session::new(shared.clone())),
                    startup: Arc::new(auth::startup_handler(shared.credentials.clone())),
                });
                let metrics = shared.metrics.clone();
                metrics.connection_opened();
                sessions.spawn(async move {
                    debug!(%peer, "client connected");
                    if let Err(e) = pgwire::tokio::process_socket(socket, None, handlers).await {
                        debug!(%peer, error = %e, "client connection ended with an error");
                    }
                    metrics.connection_closed();
                });
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    info!(open_sessions = sessions.len(), "shutting down");
    let drain = async { while sessions.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        sessions.abort_all();
    }
    Ok(())
}

/// A shutdown signal that can be triggered once and awaited by many.
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            tx: Arc::new(watch::channel(false).0),
        }
    }
}

impl Shutdown {
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// Completes once [`Shutdown::trigger`] was called.
    pub async fn wait(&self) {
        let mut rx = self.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}
