//! The catalog handle and its small connection pool.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use tokio_postgres::Client;

use crate::connect::Target;
use crate::migrate::DEFAULT_READER_ROLE;
use crate::reader::{ReaderPool, ReaderSettings};
use crate::{migrate, CatalogError, MigrationReport, SecretKey};

/// Idle connections kept for reuse; more may be open while busy.
const MAX_IDLE: usize = 8;
const KEY_CHECK: &[u8] = b"ferry secret key check";

/// The catalog: a pool of connections to its database and the key that seals secrets.
/// Cloning is cheap; clones share the pool.
#[derive(Clone)]
pub struct Catalog {
    inner: Arc<Inner>,
}

struct Inner {
    target: Arc<Target>,
    key: SecretKey,
    idle: Mutex<Vec<Client>>,
    reader_role: String,
    server_version: String,
}

/// How [`Catalog::open_with`] sets the catalog up.
#[derive(Debug, Clone)]
pub struct CatalogOptions {
    /// The role clients' SQL runs as; created (NOLOGIN) when missing.
    pub reader_role: String,
}

impl Default for CatalogOptions {
    fn default() -> Self {
        CatalogOptions {
            reader_role: DEFAULT_READER_ROLE.to_owned(),
        }
    }
}

impl Catalog {
    /// Connects, applies pending migrations and checks that `key` is the catalog's key.
    pub async fn open(
        url: &str,
        key: SecretKey,
    ) -> Result<(Catalog, MigrationReport), CatalogError> {
        Self::open_with(url, key, CatalogOptions::default()).await
    }

    /// [`Catalog::open`], with the reader role chosen. The URL may carry `sslmode` and
    /// `sslrootcert`, as a PostgreSQL peer's options do.
    pub async fn open_with(
        url: &str,
        key: SecretKey,
        options: CatalogOptions,
    ) -> Result<(Catalog, MigrationReport), CatalogError> {
        let target = Arc::new(Target::parse(url)?);
        let mut client = target.connect().await?;
        let report = migrate::migrate(&mut client, &options.reader_role).await?;
        let server_version: String = client
            .query_one("SELECT current_setting('server_version')", &[])
            .await?
            .get(0);
        let catalog = Catalog {
            inner: Arc::new(Inner {
                target,
                key,
                idle: Mutex::new(Vec::new()),
                reader_role: options.reader_role,
                server_version,
            }),
        };
        catalog.check_key(&client).await?;
        catalog.put_back(client);
        Ok((catalog, report))
    }

    /// The catalog server's version, as PostgreSQL reports it (`15.4`).
    pub fn server_version(&self) -> &str {
        &self.inner.server_version
    }

    /// A pool of restricted connections for clients' SQL ([`ReaderPool`]); each call makes
    /// a pool of its own.
    pub fn reader_pool(&self, settings: ReaderSettings) -> ReaderPool {
        ReaderPool::new(self.inner.target.clone(), &self.inner.reader_role, settings)
    }

    /// The key that seals secrets.
    pub fn key(&self) -> &SecretKey {
        &self.inner.key
    }

    /// Opens a new connection of its own to the catalog database (not pooled).
    pub async fn connect(&self) -> Result<Client, CatalogError> {
        self.inner.target.connect().await
    }

    /// A pooled connection; it goes back to the pool when dropped.
    pub async fn client(&self) -> Result<PooledClient, CatalogError> {
        let reused = {
            let mut idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
            let mut found = None;
            while let Some(c) = idle.pop() {
                if !c.is_closed() {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        let client = match reused {
            Some(c) => c,
            None => self.connect().await?,
        };
        Ok(PooledClient {
            client: Some(client),
            catalog: self.clone(),
        })
    }

    fn put_back(&self, client: Client) {
        if client.is_closed() {
            return;
        }
        let mut idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(client);
        }
    }

    async fn check_key(&self, client: &Client) -> Result<(), CatalogError> {
        let sealed = self.key().seal(KEY_CHECK)?;
        client
            .execute(
                "INSERT INTO ferry.settings (name, value) VALUES ('key_check', $1) ON CONFLICT (name) DO NOTHING",
                &[&sealed],
            )
            .await?;
        let row = client
            .query_one(
                "SELECT value FROM ferry.settings WHERE name = 'key_check'",
                &[],
            )
            .await?;
        let stored: Vec<u8> = row.get(0);
        match self.key().open(&stored) {
            Ok(plain) if plain == KEY_CHECK => Ok(()),
            _ => Err(CatalogError::Secret(
                "the secret key is not the one this catalog was created with; start Ferry with the original key".into(),
            )),
        }
    }
}

/// A connection borrowed from the pool.
pub struct PooledClient {
    client: Option<Client>,
    catalog: Catalog,
}

impl Deref for PooledClient {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("client present until drop")
    }
}

impl DerefMut for PooledClient {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("client present until drop")
    }
}

impl Drop for PooledClient {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            self.catalog.put_back(c);
        }
    }
}
