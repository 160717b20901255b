//! Ferry's front end: the PostgreSQL wire protocol server psql talks to, and the daemon.
//!
//! [`run`] serves a bound listener until told to shut down; the `ferry` binary (`main.rs`)
//! only reads its flags, opens the catalog and calls it. Each connection goes through the
//! [`frontdoor`] (TLS, limits, login, and the checked reading of every message) into a
//! session ([`session::Session`]), which parses each statement (`ferry-sql`), analyses it
//! into an [`analyze::Command`] and executes it: Ferry's statements against the catalog and
//! the peers, reads the parser's allow-list passed as the reader role on the catalog
//! database, the rest answered by Ferry itself.

pub mod analyze;
pub mod catalog_sql;
pub mod error;
pub mod execute;
pub mod figures;
pub mod frontdoor;
pub mod metrics;
pub mod session;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferry_catalog::{Catalog, ReaderPool, ReaderSettings};
use ferry_flow::Engine;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::frontdoor::FrontDoor;
pub use crate::frontdoor::Limits;
use crate::metrics::Metrics;

/// How the front door is set up: the login, its limits, TLS, and the pool clients' SQL
/// runs on.
#[derive(Clone)]
pub struct Settings {
    pub user: String,
    pub password: String,
    pub limits: Limits,
    pub reader: ReaderSettings,
    /// Offered to clients that ask for TLS; without it they are told `N`.
    pub tls: Option<TlsAcceptor>,
}

impl Settings {
    /// The defaults, for this login.
    pub fn new(user: &str, password: &str) -> Settings {
        Settings {
            user: user.to_owned(),
            password: password.to_owned(),
            limits: Limits::default(),
            reader: ReaderSettings::default(),
            tls: None,
        }
    }
}

/// What every session shares.
pub struct Shared {
    pub catalog: Catalog,
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
    /// The connections clients' SQL runs on.
    pub reader: ReaderPool,
    pub front: FrontDoor,
}

impl Shared {
    /// The default settings, for this login.
    pub fn new(catalog: Catalog, user: &str, password: &str) -> Arc<Shared> {
        Self::with_settings(catalog, Settings::new(user, password))
    }

    pub fn with_settings(catalog: Catalog, settings: Settings) -> Arc<Shared> {
        Arc::new(Shared {
            engine: Engine::new(catalog.clone()),
            reader: catalog.reader_pool(settings.reader),
            front: FrontDoor::new(
                &settings.user,
                &settings.password,
                settings.limits,
                settings.tls,
            ),
            catalog,
            metrics: Arc::new(Metrics::default()),
        })
    }
}

/// Counts a connection in the gauge until dropped, however its task ends.
struct Open(Arc<Metrics>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}

/// Serves PostgreSQL clients on `listener` until `shutdown` completes; then tells every
/// session to stop (they end their statements and close) and gives them the grace period
/// before closing what is left.
pub async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    info!(%addr, tls = shared.front.tls.is_some(), "ferry is listening for PostgreSQL clients");
    let (stop, stopping) = watch::channel(false);
    let mut sessions = JoinSet::new();
    // Connections not yet logged in do not count as sessions, but are bounded too: each
    // holds a socket, and a process out of sockets could not reach its peers either.
    let connections = Arc::new(tokio::sync::Semaphore::new(
        shared.front.limits().max_connections(),
    ));
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
                let Ok(place) = connections.clone().try_acquire_owned() else {
                    shared.metrics.refused("too_many_connections");
                    debug!(%peer, "refusing a connection: too many open");
                    drop(socket);
                    continue;
                };
                let _ = socket.set_nodelay(true);
                shared.metrics.connection_opened();
                let open = Open(shared.metrics.clone());
                let shared = shared.clone();
                let stopping = stopping.clone();
                sessions.spawn(async move {
                    let _open = open;
                    let _place = place;
                    debug!(%peer, "client connected");
                    frontdoor::serve(socket, peer, shared, stopping).await;
                });
            }
            Some(done) = sessions.join_next(), if !sessions.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        warn!("a client connection's task panicked; the connection was closed");
                    }
                }
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    info!(open_sessions = sessions.len(), "shutting down");
    let _ = stop.send(true);
    let grace = shared.front.limits().shutdown_grace;
    let drain = async { while sessions.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drain).await.is_err() {
        warn!(
            left = sessions.len(),
            "closing sessions still open after the grace period"
        );
        sessions.abort_all();
        while sessions.join_next().await.is_some() {}
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_task_that_panics_is_counted_out() {
        let metrics = Arc::new(Metrics::default());
        metrics.connection_opened();
        let open = Open(metrics.clone());
        let task = tokio::spawn(async move {
            let _open = open;
            panic!("a bug in a connection task");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert_eq!(metrics.connections_active(), 0);
    }
}
