//! Prometheus metrics, served as text on `--metrics-listen`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info};

use ferry_catalog::Catalog;

use crate::analyze::Command;

/// Counters of the front end.
#[derive(Debug, Default)]
pub struct Metrics {
    connections_total: AtomicU64,
    connections_active: AtomicU64,
    statements_ferry: AtomicU64,
    statements_catalog: AtomicU64,
    login_failures: AtomicU64,
    refused_sessions: AtomicU64,
    refused_throttled: AtomicU64,
    refused_connections: AtomicU64,
    protocol_violations: AtomicU64,
    cancel_requests: AtomicU64,
}

impl Metrics {
    pub fn connection_opened(&self) {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.connections_active.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_active.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn login_failed(&self) {
        self.login_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection refused before login: `too_many_sessions`, `too_many_connections` or
    /// `failed_logins`.
    pub fn refused(&self, reason: &str) {
        let c = match reason {
            "too_many_sessions" => &self.refused_sessions,
            "too_many_connections" => &self.refused_connections,
            _ => &self.refused_throttled,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn protocol_violation(&self) {
        self.protocol_violations.fetch_add(1, Ordering::Relaxed);
    }

    pub fn cancel_request(&self, _reached_a_session: bool) {
        self.cancel_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn connections_active(&self) -> u64 {
        self.connections_active.load(Ordering::Relaxed)
    }

    pub fn statement(&self, command: &Command) {
        let c = match command {
            Command::Catalog { .. } | Command::Local { .. } => &self.statements_catalog,
            _ => &self.statements_ferry,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        metric(
            "ferry_up",
            "gauge",
            "Whether the daemon is serving.",
            &[("", 1)],
        );
        metric(
            "ferry_connections_total",
            "counter",
            "Client connections accepted.",
            &[("", self.connections_total.load(Ordering::Relaxed))],
        );
        metric(
            "ferry_connections_active",
            "gauge",
            "Client connections open now.",
            &[("", self.connections_active.load(Ordering::Relaxed))],
        );
        metric(
            "ferry_statements_total",
            "counter",
            "Statements run, by kind.",
            &[
                (
                    "{kind=\"ferry\"}",
                    self.statements_ferry.load(Ordering::Relaxed),
                ),
                (
                    "{kind=\"catalog\"}",
                    self.statements_catalog.load(Ordering::Relaxed),
                ),
            ],
        );
        metric(
            "ferry_login_failures_total",
            "counter",
            "Logins refused for a wrong password or an unknown user.",
            &[("", self.login_failures.load(Ordering::Relaxed))],
        );
        metric(
            "ferry_connections_refused_total",
            "counter",
            "Connections refused before login, by reason.",
            &[
                (
                    "{reason=\"too_many_sessions\"}",
                    self.refused_sessions.load(Ordering::Relaxed),
                ),
                (
                    "{reason=\"too_many_connections\"}",
                    self.refused_connections.load(Ordering::Relaxed),
                ),
                (
                    "{reason=\"failed_logins\"}",
                    self.refused_throttled.load(Ordering::Relaxed),
                ),
            ],
        );
        metric(
            "ferry_protocol_violations_total",
            "counter",
            "Connections closed for a malformed message.",
            &[("", self.protocol_violations.load(Ordering::Relaxed))],
        );
        metric(
            "ferry_cancel_requests_total",
            "counter",
            "Cancel requests received.",
            &[("", self.cancel_requests.load(Ordering::Relaxed))],
        );
        out
    }
}

/// Serves `GET /metrics` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    catalog: Catalog,
    mut shutdown: watch::Receiver<bool>,
) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    info!(addr = ?addr, "metrics endpoint listening");
    loop {
        let (mut socket, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => { debug!(error = %e, "metrics accept failed"); continue; }
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let metrics = metrics.clone();
        let catalog = catalog.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = match tokio::time::timeout(
                std::time::Duration::from_secs(5),
                socket.read(&mut buf),
            )
            .await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = if request.starts_with("GET ")
                && (path == "/metrics" || path.starts_with("/metrics?"))
            {
                let mut body = metrics.render();
                match mirror_metrics(&catalog).await {
                    Ok(m) => body.push_str(&m),
                    Err(e) => debug!(error = %e, "mirror metrics unavailable"),
                }
                ("200 OK", body)
            } else {
                ("404 Not Found", "not found\n".to_owned())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

/// The mirrors' figures, read from the catalog at each scrape (`mirror_status`).
async fn mirror_metrics(catalog: &Catalog) -> Result<String, ferry_catalog::CatalogError> {
    let client = catalog.client().await?;
    let rows = client
        .query(
            "SELECT mirror, state, rows_copied::float8, rows_inserted::float8, rows_updated::float8,
                    rows_deleted::float8, coalesce(slot_lag_bytes, 0)::float8, coalesce(lag_seconds, 0)::float8,
                    coalesce(confirmed_lsn - '0/0', 0)::float8,
                    coalesce(extract(epoch FROM last_batch_at), 0)::float8
             FROM public.mirror_status ORDER BY mirror",
            &[],
        )
        .await?;
    // (name, type, help, column of the query; MAX: the state label)
    let series: [(&str, &str, &str, usize); 7] = [
        (
            "ferry_mirror_rows_copied",
            "gauge",
            "Rows copied by the initial load.",
            2,
        ),
        (
            "ferry_mirror_rows_applied_total",
            "counter",
            "Changes applied, by kind.",
            3,
        ),
        (
            "ferry_mirror_slot_lag_bytes",
            "gauge",
            "WAL the slot retains beyond the confirmed position.",
            6,
        ),
        (
            "ferry_mirror_lag_seconds",
            "gauge",
            "Source commit to ClickHouse, for the last batch.",
            7,
        ),
        (
            "ferry_mirror_confirmed_lsn",
            "gauge",
            "The confirmed LSN, as a byte position.",
            8,
        ),
        (
            "ferry_mirror_last_batch_timestamp_seconds",
            "gauge",
            "When the last batch was written.",
            9,
        ),
        (
            "ferry_mirror_up",
            "gauge",
            "1 for each mirror, labelled with its state.",
            usize::MAX,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, col) in &series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for r in &rows {
            let mirror = label(r.get(0));
            match *col {
                usize::MAX => {
                    let state: String = r.get(1);
                    let _ = writeln!(out, "{name}{{mirror=\"{mirror}\",state=\"{state}\"}} 1");
                }
                3 => {
                    for (kind, c) in [("insert", 3), ("update", 4), ("delete", 5)] {
                        let v: f64 = r.get(c);
                        let _ = writeln!(out, "{name}{{mirror=\"{mirror}\",kind=\"{kind}\"}} {v}");
                    }
                }
                c => {
                    let v: f64 = r.get(c);
                    let _ = writeln!(out, "{name}{{mirror=\"{mirror}\"}} {v}");
                }
            }
        }
    }
    query_mirror_metrics(&client, &mut out).await?;
    Ok(out)
}

/// A label's value in Prometheus' text format.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Query mirrors' runs: how many, the last one's rows, duration and time, and when the next
/// is due.
async fn query_mirror_metrics(
    client: &tokio_postgres::Client,
    out: &mut String,
) -> Result<(), ferry_catalog::CatalogError> {
    let rows = client
        .query(
            "SELECT m.name, q.runs::float8, coalesce(q.last_run_rows, 0)::float8,
                    coalesce((SELECT extract(epoch FROM r.finished_at - r.started_at)
                              FROM ferry.qrep_run r WHERE r.mirror_id = m.id AND r.state = 'done'
                              ORDER BY r.run_no DESC LIMIT 1), 0)::float8,
                    coalesce(extract(epoch FROM q.last_run_at), 0)::float8,
                    coalesce(extract(epoch FROM q.next_run_at), 0)::float8
             FROM ferry.mirrors m JOIN ferry.qrep_mirror q ON q.mirror_id = m.id
             ORDER BY m.name",
            &[],
        )
        .await?;
    let series: [(&str, &str, &str); 5] = [
        (
            "ferry_mirror_query_runs_total",
            "counter",
            "Runs a query mirror started.",
        ),
        (
            "ferry_mirror_query_last_run_rows",
            "gauge",
            "Rows the last finished run copied.",
        ),
        (
            "ferry_mirror_query_last_run_duration_seconds",
            "gauge",
            "How long the last finished run took.",
        ),
        (
            "ferry_mirror_query_last_run_timestamp_seconds",
            "gauge",
            "When the last run finished.",
        ),
        (
            "ferry_mirror_query_next_run_timestamp_seconds",
            "gauge",
            "When the next run is due (0: now).",
        ),
    ];
    for (i, (name, kind, help)) in series.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for r in &rows {
            let mirror = label(r.get(0));
            let v: f64 = r.get(i + 1);
            let _ = writeln!(out, "{name}{{mirror=\"{mirror}\"}} {v}");
        }
    }
    Ok(())
}
