//! The connections clients' SQL runs on: few, shared, and unable to do more than read.
//!
//! Statements a Ferry login sends that are not Ferry's own run against the catalog
//! database. Each runs in a [`ReadTransaction`] taken from a [`ReaderPool`] of at most
//! `connections` connections, shared by every session; a session waits at most the
//! statement timeout for one. The transaction is `READ ONLY`, runs as the reader role
//! (`SET LOCAL ROLE`: a role that may read the views in `public` and nothing of Ferry's
//! own, see [`crate::migrate`]), has a `statement_timeout`, and fixes the settings
//! that change how SQL is read or values are shown. It ends with `ROLLBACK` and the
//! release of any advisory lock, the one thing a read can leave behind; only then does
//! the connection go back to the pool. A transaction dropped before it finished (its
//! client gave up, or was cancelled) has its query cancelled on the server and its
//! connection closed, so nothing it started runs on or returns to the pool.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::ident::pg_ident;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::Client;

use crate::connect::Target;
use crate::CatalogError;

/// How the reader pool is sized and bounded.
#[derive(Debug, Clone)]
pub struct ReaderSettings {
    /// At most this many connections, shared by all sessions.
    pub connections: usize,
    /// PostgreSQL's `statement_timeout` for each statement, and the longest wait for a
    /// free connection.
    pub statement_timeout: Duration,
}

impl Default for ReaderSettings {
    fn default() -> Self {
        ReaderSettings {
            connections: 4,
            statement_timeout: Duration::from_secs(30),
        }
    }
}

/// Why no transaction could be started.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    /// Every connection stayed busy for as long as a statement may take.
    #[error("all {connections} catalog connections for clients' SQL stayed busy for {}s", waited.as_secs())]
    Busy {
        connections: usize,
        waited: Duration,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// The pool; cloning is cheap and clones share it.
#[derive(Clone)]
pub struct ReaderPool {
    inner: Arc<Inner>,
}

struct Inner {
    target: Arc<Target>,
    /// The statements that open each transaction.
    begin: String,
    idle: Mutex<Vec<Client>>,
    slots: Arc<Semaphore>,
    settings: ReaderSettings,
    /// Cancels of interrupted transactions still on their way to the server.
    cancelling: AtomicUsize,
    cancelled: Notify,
}

impl fmt::Debug for ReaderPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReaderPool")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl ReaderPool {
    pub(crate) fn new(target: Arc<Target>, role: &str, settings: ReaderSettings) -> ReaderPool {
        let timeout_ms = settings.statement_timeout.as_millis().max(1);
        // Every value here is Ferry's own, the role quoted as an identifier.
        let begin = format!(
            "BEGIN READ ONLY;
             SET LOCAL ROLE {role};
             SET LOCAL statement_timeout = {timeout_ms};
             SET LOCAL idle_in_transaction_session_timeout = {timeout_ms};
             SET LOCAL search_path = public;
             SET LOCAL standard_conforming_strings = on;
             SET LOCAL TimeZone = 'UTC';
             SET LOCAL DateStyle = 'ISO, MDY';
             SET LOCAL IntervalStyle = 'postgres';
             SELECT 1",
            role = pg_ident(role),
        );
        let connections = settings.connections.max(1);
        ReaderPool {
            inner: Arc::new(Inner {
                target,
                begin,
                idle: Mutex::new(Vec::new()),
                slots: Arc::new(Semaphore::new(connections)),
                settings: ReaderSettings {
                    connections,
                    ..settings
                },
                cancelling: AtomicUsize::new(0),
                cancelled: Notify::new(),
            }),
        }
    }

    /// The pool's settings.
    pub fn settings(&self) -> &ReaderSettings {
        &self.inner.settings
    }

    /// Waits until the cancels of interrupted transactions have reached the server: at
    /// shutdown, so that no query of a client is left running on the catalog.
    pub async fn settle(&self) {
        loop {
            let done = self.inner.cancelled.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.inner.cancelling.load(Ordering::SeqCst) == 0 {
                return;
            }
            done.await;
        }
    }

    /// Takes a connection (waiting at most the statement timeout) and opens the
    /// restricted transaction on it.
    pub async fn begin(&self) -> Result<ReadTransaction, ReaderError> {
        let inner = &self.inner;
        let wait = inner.settings.statement_timeout;
        let permit = match tokio::time::timeout(wait, inner.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            // The semaphore is never closed; a timeout is the only way here.
            _ => {
                return Err(ReaderError::Busy {
                    connections: inner.settings.connections,
                    waited: wait,
                })
            }
        };
        let reused = {
            let mut idle = inner.idle.lock().unwrap_or_else(|p| p.into_inner());
            std::iter::from_fn(|| idle.pop()).find(|c| !c.is_closed())
        };
        let client = match reused {
            Some(c) => c,
            None => inner.target.connect().await?,
        };
        client
            .batch_execute(&inner.begin)
            .await
            .map_err(CatalogError::from)?;
        Ok(ReadTransaction {
            client: Some(client),
            permit: Some(permit),
            pool: inner.clone(),
        })
    }
}

/// A restricted transaction on a pooled connection: use it as a [`Client`], then
/// [`ReadTransaction::finish`] it. Dropping it unfinished cancels and discards.
pub struct ReadTransaction {
    client: Option<Client>,
    /// Held until the connection is back in the pool or closed.
    permit: Option<OwnedSemaphorePermit>,
    pool: Arc<Inner>,
}

impl Deref for ReadTransaction {
    type Target = Client;

    fn deref(&self) -> &Client {
        // Only `finish` and `drop` take the client, and both consume the transaction.
        self.client.as_ref().expect("client present until finished")
    }
}

impl ReadTransaction {
    /// Rolls back, releases advisory locks and returns the connection to the pool; a
    /// connection where that fails is closed instead.
    pub async fn finish(mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if client
            .batch_execute("ROLLBACK; SELECT pg_advisory_unlock_all()")
            .await
            .is_ok()
        {
            let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.push(client);
        }
    }
}

impl Drop for ReadTransaction {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        // Interrupted: whatever runs is cancelled, and the connection is closed after.
        let token = client.cancel_token();
        let pool = self.pool.clone();
        let permit = self.permit.take();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            pool.cancelling.fetch_add(1, Ordering::SeqCst);
            runtime.spawn(async move {
                pool.target.cancel(token).await;
                drop(client);
                drop(permit);
                pool.cancelling.fetch_sub(1, Ordering::SeqCst);
                pool.cancelled.notify_waiters();
            });
        }
    }
}
