//! The daemon's monitor: every few seconds, whatever state each mirror is in, the figures an
//! operator alerts on.
//!
//! A mirror's stream only knows what it has received, and only while it runs: a paused or
//! failed mirror, one that is loading, retrying against an unreachable destination, or whose
//! stream is slow, would otherwise show figures frozen at their last value exactly when they
//! matter. So the figures come from a timer of their own, independent of the stream:
//!
//! 1. **The source's own view.** For each source peer, on one connection kept between turns,
//!    one statement reads `pg_current_wal_lsn()` and the mirrors' slots in
//!    `pg_replication_slots` (`restart_lsn`: the WAL the server keeps for the slot;
//!    `confirmed_flush_lsn`; `wal_status`; `safe_wal_size`). A source that does not answer
//!    within [`SAMPLE_TIMEOUT`] is recorded as unreachable, with the reason; the last figures
//!    read stay, and `source_checked_at` says how old they are.
//! 2. **The stream's view** ([`crate::progress`]): the position applied, the commit time of
//!    the oldest change received and not applied, the time up to which every change is
//!    applied, rows applied per table.
//! 3. **Warnings**, evaluated here on every turn: the slot is further behind the source than
//!    `max_slot_lag_bytes` (`current − confirmed_flush_lsn`: what the mirror has not
//!    confirmed; `restart_lsn` trails it by up to the oldest transaction running, or the 15 s
//!    between the server's snapshots of them, however fast the mirror), the source is unreachable, the slot is
//!    gone or lost (`wal_status = lost`) or at risk (`unreserved`), the mirror has been
//!    retrying after an error for more than one turn. Each is a row with a start and an end
//!    (`mirror_warnings`), so that none replaces another.
//!
//! Everything goes to the catalog (`ferry.mirror_monitor`, `ferry.table_monitor`), from which
//! the views and the Prometheus metrics are computed, so they agree.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ferry_catalog::{Catalog, MonitoredMirror, SlotSample, Warning};
use ferry_core::mirror::{MirrorSpec, MirrorState};
use ferry_core::peer::PostgresConfig;
use ferry_postgres::publication::{self, SlotStatus};
use tokio::sync::watch;
use tokio_postgres::Client;
use tracing::{debug, info, warn};

use crate::progress::MirrorProgress;
use crate::FlowError;

/// How often the figures are taken.
pub const MONITOR_EVERY: Duration = Duration::from_secs(5);
/// How long a source gets to answer.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(4);

/// The kinds of warning the monitor decides about.
const SLOT_KINDS: [&str; 3] = ["slot_lag", "slot_lost", "slot_at_risk"];
const ALL_KINDS: [&str; 5] = [
    "slot_lag",
    "slot_lost",
    "slot_at_risk",
    "source_unreachable",
    "retrying",
];

/// The mirrors' progress, by mirror id, shared with the engine.
pub(crate) type Registry = Arc<Mutex<HashMap<i64, Arc<MirrorProgress>>>>;

/// A source connection kept between turns.
struct Source {
    cfg: PostgresConfig,
    client: Option<Client>,
}

/// Runs until `stop` turns true (or its sender is gone).
pub(crate) async fn run(catalog: Catalog, registry: Registry, mut stop: watch::Receiver<bool>) {
    let mut sources: HashMap<i64, Source> = HashMap::new();
    let mut ticker = tokio::time::interval(MONITOR_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = crate::stopped(&mut stop) => return,
        }
        if let Err(e) = turn(&catalog, &registry, &mut sources).await {
            debug!(error = %e, "the monitor could not take this turn's figures");
        }
    }
}

/// One turn: every mirror's figures and warnings.
async fn turn(
    catalog: &Catalog,
    registry: &Registry,
    sources: &mut HashMap<i64, Source>,
) -> Result<(), FlowError> {
    let mirrors = catalog.monitored_mirrors().await?;
    // The stream's figures first: what is applied is then never ahead of the source's WAL
    // end read after it, and the lag in bytes errs on the high side, never the low.
    let mut figures: HashMap<i64, _> = HashMap::new();
    for m in &mirrors {
        let progress = registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&m.id)
            .cloned();
        let stream = progress.as_ref().map(|p| p.figures()).unwrap_or_default();
        figures.insert(m.id, (progress, stream));
    }
    // Mirrors whose slot may hold WAL, by source peer.
    let mut by_peer: HashMap<i64, Vec<&MonitoredMirror>> = HashMap::new();
    for m in &mirrors {
        if has_slot(m) {
            by_peer.entry(m.source_peer).or_default().push(m);
        }
    }
    sources.retain(|peer, _| by_peer.contains_key(peer));
    for &peer in by_peer.keys() {
        let cfg = match catalog.peer_by_id(peer).await? {
            Some(p) => crate::peers::source_config(&p)?,
            None => continue,
        };
        let source = sources.entry(peer).or_insert_with(|| Source {
            cfg: cfg.clone(),
            client: None,
        });
        if source.cfg != cfg {
            *source = Source { cfg, client: None };
        }
    }
    // Every source at once, each bounded in time.
    let samples = futures::future::join_all(by_peer.iter().filter_map(|(peer, list)| {
        let source = sources.remove(peer)?;
        let slots: Vec<String> = list.iter().filter_map(|m| m.slot_name.clone()).collect();
        Some(async move {
            let (source, result) = sample(source, &slots).await;
            (*peer, source, result)
        })
    }))
    .await;
    let mut read: HashMap<i64, Result<(ferry_core::Lsn, Vec<SlotStatus>), String>> = HashMap::new();
    for (peer, source, result) in samples {
        sources.insert(peer, source);
        read.insert(peer, result);
    }

    for m in &mirrors {
        let Some((progress, (stream, tables))) = figures.remove(&m.id) else {
            continue;
        };
        if !has_slot(m) {
            end_all(catalog, m).await?;
            continue;
        }
        let sampled = match read.get(&m.source_peer) {
            Some(Ok((lsn, slots))) => Ok(SlotSample {
                source_lsn: *lsn,
                slot: slots
                    .iter()
                    .find(|s| Some(&s.name) == m.slot_name.as_ref())
                    .cloned(),
            }),
            Some(Err(e)) => Err(e.clone()),
            None => Err("the source peer is missing from the catalog".to_owned()),
        };
        catalog
            .record_figures(
                m.id,
                sampled.as_ref().map_err(|e| e.as_str()),
                &stream,
                &tables,
            )
            .await?;
        let mut decided: Vec<&str> = vec!["source_unreachable", "retrying"];
        let mut active = Vec::new();
        match &sampled {
            Ok(sample) => {
                decided.extend(SLOT_KINDS);
                active.extend(slot_warnings(m, sample));
            }
            Err(e) => active.push(Warning {
                kind: "source_unreachable",
                message: format!("the source cannot be reached to read the slot: {e}"),
                hint: Some(
                    "The slot figures in mirror_status are the last ones read (source_checked_at says when)."
                        .into(),
                ),
            }),
        }
        if let Some((error, since)) = progress.as_ref().and_then(|p| p.retry_reason()) {
            let lasted = SystemTime::now()
                .duration_since(since)
                .unwrap_or(Duration::ZERO);
            if lasted >= MONITOR_EVERY {
                active.push(Warning {
                    kind: "retrying",
                    message: format!(
                        "the mirror has been retrying for {}s after a transient error: {error}",
                        lasted.as_secs()
                    ),
                    hint: Some("See the daemon's log; the mirror goes on by itself once the server is back.".into()),
                });
            }
        }
        let (started, ended) = catalog.sync_warnings(m.id, &decided, &active).await?;
        for kind in started {
            let message = active
                .iter()
                .find(|w| w.kind == kind)
                .map(|w| w.message.as_str())
                .unwrap_or_default();
            warn!(mirror = %m.name, kind = %kind, message = %message, "warning");
        }
        for kind in ended {
            info!(mirror = %m.name, kind = %kind, "warning ended");
        }
    }
    Ok(())
}

/// Whether the mirror has a slot that may hold WAL.
fn has_slot(m: &MonitoredMirror) -> bool {
    m.slot_name.is_some()
        && matches!(
            m.state,
            MirrorState::Snapshot
                | MirrorState::Running
                | MirrorState::Paused
                | MirrorState::Failed
        )
}

/// A mirror without a slot (being set up, completed) has nothing to warn about.
async fn end_all(catalog: &Catalog, m: &MonitoredMirror) -> Result<(), FlowError> {
    let (_, ended) = catalog.sync_warnings(m.id, &ALL_KINDS, &[]).await?;
    for kind in ended {
        info!(mirror = %m.name, kind = %kind, "warning ended");
    }
    Ok(())
}

/// The slot's warnings.
fn slot_warnings(m: &MonitoredMirror, sample: &SlotSample) -> Vec<Warning> {
    let slot_name = m.slot_name.as_deref().unwrap_or_default();
    let resync = format!(
        "The changes the slot held are gone from the source; RESYNC MIRROR {} loads every table again from a new slot.",
        m.name
    );
    let Some(slot) = &sample.slot else {
        return vec![Warning {
            kind: "slot_lost",
            message: format!("the replication slot \"{slot_name}\" does not exist on the source"),
            hint: Some(resync),
        }];
    };
    let mut out = Vec::new();
    match slot.wal_status.as_deref() {
        Some("lost") => out.push(Warning {
            kind: "slot_lost",
            message: format!(
                "the replication slot \"{slot_name}\" was invalidated (wal_status = lost)"
            ),
            hint: Some(resync),
        }),
        Some("unreserved") => out.push(Warning {
            kind: "slot_at_risk",
            message: format!(
                "the replication slot \"{slot_name}\" retains more WAL than max_slot_wal_keep_size allows (wal_status = unreserved): the next checkpoint may invalidate it"
            ),
            hint: Some("Resume or fix the mirror so that it catches up, or raise max_slot_wal_keep_size on the source.".into()),
        }),
        _ => {}
    }
    let limit = serde_json::from_value::<MirrorSpec>(m.spec.clone())
        .ok()
        .and_then(|s| s.options.max_slot_lag_bytes);
    if let (Some(limit), Some(confirmed)) = (limit, slot.confirmed_flush_lsn) {
        let lag = sample.source_lsn.0.saturating_sub(confirmed.0);
        if lag > limit {
            let held = slot
                .restart_lsn
                .map_or(lag, |r| sample.source_lsn.0.saturating_sub(r.0));
            out.push(Warning {
                kind: "slot_lag",
                message: format!(
                    "the replication slot is {lag} bytes of WAL behind the source, more than max_slot_lag_bytes ({limit}); it makes the source keep {held} bytes"
                ),
                hint: Some(
                    "The mirror is behind (paused, failed, or its destination slow or unreachable: see its state and the daemon's log); the source keeps WAL until it catches up."
                        .into(),
                ),
            });
        }
    }
    out
}

/// Reads the source's WAL end and slots, connecting when needed; a connection that failed
/// is dropped, to be opened again next turn.
async fn sample(
    mut source: Source,
    slots: &[String],
) -> (Source, Result<(ferry_core::Lsn, Vec<SlotStatus>), String>) {
    let attempt = tokio::time::timeout(SAMPLE_TIMEOUT, async {
        let client = match source.client.take().filter(|c| !c.is_closed()) {
            Some(c) => c,
            None => {
                let c = ferry_postgres::connect::connect(&source.cfg, "ferry monitor")
                    .await
                    .map_err(|e| e.to_string())?;
                // A statement that hangs must not hold the connection past the next turn.
                c.batch_execute("SET statement_timeout = '4s'")
                    .await
                    .map_err(|e| e.to_string())?;
                c
            }
        };
        let result = publication::sample_slots(&client, &source.cfg, slots)
            .await
            .map_err(|e| e.to_string());
        Ok::<_, String>((client, result))
    })
    .await;
    match attempt {
        Ok(Ok((client, result))) => {
            if result.is_ok() {
                source.client = Some(client);
            }
            (source, result)
        }
        Ok(Err(e)) => (source, Err(e)),
        Err(_) => {
            let message = format!(
                "no answer from PostgreSQL at {}:{} within {}s",
                source.cfg.host,
                source.cfg.port,
                SAMPLE_TIMEOUT.as_secs()
            );
            (source, Err(message))
        }
    }
}
