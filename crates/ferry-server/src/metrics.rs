//! Prometheus metrics and health checks, served over HTTP on `--metrics-listen`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info};

use ferry_catalog::Catalog;
use ferry_flow::Engine;

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

/// What the metrics listener answers besides the front end's counters: the mirrors'
/// figures and the daemon's health.
#[derive(Clone)]
pub struct Endpoints {
    pub metrics: Arc<Metrics>,
    pub catalog: Catalog,
    pub engine: Arc<Engine>,
}

/// How long a readiness check may take before it counts as failed.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves until `shutdown` turns true:
///
/// - `GET /metrics`: Prometheus' text format, the front end's counters and the mirrors'
///   figures ([`crate::figures`]);
/// - `GET /healthz`: `200 ok` while the process serves;
/// - `GET /readyz`: `200 ready` when the catalog answers and every mirror that should run has
///   a live task (and the monitor runs); else `503` with what is wrong, one line each.
pub async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    mut shutdown: watch::Receiver<bool>,
) {
    match listener.local_addr() {
        Ok(addr) => info!(%addr, "metrics endpoint listening"),
        Err(e) => info!(error = %e, "metrics endpoint listening"),
    }
    loop {
        let (mut socket, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => { debug!(error = %e, "metrics accept failed"); continue; }
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = answer(&endpoints, &request).await;
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

/// The status line and body for a request.
async fn answer(endpoints: &Endpoints, request: &str) -> (&'static str, String) {
    if !request.starts_with("GET ") {
        return ("405 Method Not Allowed", "only GET\n".to_owned());
    }
    let target = request.split_whitespace().nth(1).unwrap_or("");
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/metrics" => {
            let mut body = endpoints.metrics.render();
            match crate::figures::render(&endpoints.catalog).await {
                Ok(m) => body.push_str(&m),
                Err(e) => debug!(error = %e, "mirror metrics unavailable"),
            }
            ("200 OK", body)
        }
        "/healthz" => ("200 OK", "ok\n".to_owned()),
        "/readyz" => match ready(endpoints).await {
            Ok(()) => ("200 OK", "ready\n".to_owned()),
            Err(problems) => (
                "503 Service Unavailable",
                problems.iter().map(|p| format!("{p}\n")).collect(),
            ),
        },
        _ => ("404 Not Found", "not found\n".to_owned()),
    }
}

async fn ready(endpoints: &Endpoints) -> Result<(), Vec<String>> {
    let check = async {
        let client = endpoints
            .catalog
            .client()
            .await
            .map_err(|e| vec![format!("the catalog cannot be reached: {e}")])?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| vec![format!("the catalog does not answer: {e}")])?;
        drop(client);
        endpoints.engine.readiness().await
    };
    match tokio::time::timeout(READY_TIMEOUT, check).await {
        Ok(r) => r,
        Err(_) => Err(vec![format!(
            "the catalog did not answer within {}s",
            READY_TIMEOUT.as_secs()
        )]),
    }
}
