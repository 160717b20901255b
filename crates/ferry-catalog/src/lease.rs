//! One daemon per catalog: a lease held as a session-level advisory lock.
//!
//! Two daemons on one catalog would both run every mirror: both load the same tables, then
//! fight over each slot. A daemon therefore holds a lease on its catalog for as long as it
//! runs, and a second one refuses to start, saying who holds it.
//!
//! # Why an advisory lock, not a lease row
//!
//! A lease row ("held by X until T", renewed on a timer) needs the holder's and the
//! contender's clocks to agree, and a holder that stalls longer than the lease (a long GC-like
//! pause, a frozen VM) keeps running while another takes over. A session-level advisory lock
//! (`pg_try_advisory_lock` on a connection of its own) involves no clock at all: the catalog
//! server holds it exactly as long as the session lives, and releases it the moment the
//! session ends — when the daemon stops, is killed (the kernel closes its socket), or its
//! host goes away. For that last case, where no FIN ever arrives, the session sets TCP
//! keepalives of its own (10 s idle, then 3 probes 5 s apart), so the server ends it, and the
//! lock with it, within about 25 s instead of the system's two hours.
//!
//! The holder checks its session every few seconds ([`Lease::keep`]). If the session is
//! gone (the catalog restarted, the network broke), the lock went with it, so the daemon
//! takes it again at once on a new session; if another daemon holds it by then, the lease
//! is lost and the daemon must stop. Between a loss and its discovery both daemons may run
//! for one check interval; the slots fence that window, since a slot streams to one
//! connection at a time.

use std::time::Duration;

use tokio_postgres::Client;
use tracing::{info, warn};

use crate::connect::Target;
use crate::CatalogError;

/// The advisory lock's two keys: "FERR" and "YLSE" (the migration lock uses one 64-bit key,
/// which PostgreSQL keeps apart from two-key locks).
const KEY: (i32, i32) = (0x4645_5252, 0x594c_5345);
/// How long a check of the session may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The catalog's lease, held while this value lives.
pub struct Lease {
    target: Target,
    client: Client,
    /// How this daemon names itself to the catalog server (`application_name`): what a second
    /// daemon is told.
    holder: String,
}

impl Lease {
    /// Takes the lease on the catalog at `url`, waiting up to `wait` for a daemon that is
    /// stopping (or was killed) to let it go. `holder` names this daemon (host and process).
    pub async fn acquire(url: &str, holder: &str, wait: Duration) -> Result<Lease, CatalogError> {
        let target = Target::parse(url)?;
        // A token of this process, so that a session of ours the server has not dropped yet is
        // told apart from another daemon.
        let holder = format!("ferry daemon {holder} {:08x}", rand_token());
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let client = session(&target, &holder).await?;
            if try_lock(&client).await? {
                info!(holder = %holder, "holding the catalog's lease");
                return Ok(Lease {
                    target,
                    client,
                    holder,
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CatalogError::LeaseHeld {
                    holder: describe_holder(&client).await,
                });
            }
            drop(client);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Checks the lease every `every` and takes it again when its session was lost; returns
    /// only when it is lost for good: another daemon holds it.
    pub async fn keep(mut self, every: Duration) -> CatalogError {
        loop {
            tokio::time::sleep(every).await;
            let alive = tokio::time::timeout(CHECK_TIMEOUT, self.client.simple_query("SELECT 1"))
                .await
                .is_ok_and(|r| r.is_ok());
            if alive {
                continue;
            }
            warn!("the catalog session holding the lease is gone; taking the lease again");
            loop {
                match session(&self.target, &self.holder).await {
                    Ok(client) => match try_lock(&client).await {
                        Ok(true) => {
                            info!("holding the catalog's lease again");
                            self.client = client;
                            break;
                        }
                        Ok(false) => {
                            let holder = describe_holder(&client).await;
                            if holder.contains(&self.holder) {
                                // Our old session, not yet ended by the server.
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                continue;
                            }
                            return CatalogError::LeaseHeld { holder };
                        }
                        Err(e) => warn!(error = %e, "could not take the lease again; retrying"),
                    },
                    Err(e) => warn!(error = %e, "catalog unreachable; retrying the lease"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn rand_token() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

/// A session of its own, named, with TCP keepalives short enough that the server notices a
/// vanished host within about 25 s (they do nothing on a Unix-domain socket).
async fn session(target: &Target, holder: &str) -> Result<Client, CatalogError> {
    let client = target.connect().await?;
    client
        .execute(
            "SELECT set_config('application_name', $1, false)",
            &[&holder],
        )
        .await?;
    client
        .batch_execute(
            "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5;
             SET tcp_keepalives_count = 3;
             SELECT set_config('idle_session_timeout', '0', false)
             WHERE current_setting('server_version_num')::int >= 140000",
        )
        .await?;
    Ok(client)
}

async fn try_lock(client: &Client) -> Result<bool, CatalogError> {
    Ok(client
        .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&KEY.0, &KEY.1])
        .await?
        .get(0))
}

/// Who holds the lock, as the catalog server knows the session.
async fn describe_holder(client: &Client) -> String {
    let row = client
        .query_opt(
            "SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'a local socket'),
                    to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ')
             FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
               AND l.classid = $1::int8::oid AND l.objid = $2::int8::oid
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&i64::from(KEY.0), &i64::from(KEY.1)],
        )
        .await;
    match row {
        Ok(Some(r)) => {
            let pid: Option<i32> = r.get(0);
            let name: String = r.get(1);
            let from: String = r.get(2);
            let since: Option<String> = r.get(3);
            format!(
                "\"{name}\", connected from {from} since {}, catalog backend pid {}",
                since.unwrap_or_else(|| "?".into()),
                pid.map_or_else(|| "?".into(), |p| p.to_string())
            )
        }
        // Released between the two queries, or not visible to this role.
        _ => "a daemon whose session could not be described".to_owned(),
    }
}
