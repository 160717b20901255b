//! Prometheus metrics, served as text on `--metrics-listen`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::analyze::Command;

/// Counters of the front end.
#[derive(Debug, Default)]
pub struct Metrics {
    connections_total: AtomicU64,
    connections_active: AtomicU64,
    statements_ferry: AtomicU64,
    statements_catalog: AtomicU64,
}

impl Metrics {
    pub fn connection_opened(&self) {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.connections_active.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_active.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn statement(&self, command: &Command) {
        let c = match command {
            Command::Catalog { .. } | Command::Transaction { .. } => &self.statements_catalog,
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
        out
    }
}

/// Serves `GET /metrics` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
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
                ("200 OK", metrics.render())
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
