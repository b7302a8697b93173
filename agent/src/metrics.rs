//! Prometheus metrics over plain HTTP (`GET /metrics`), in the text exposition format.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `portcullis_xdp_packets_total` | `iface`, `verdict` | packets judged by the XDP filter (`iface="other"`: interfaces without their own slot) |
//! | `portcullis_xdp_bytes_total` | `iface`, `verdict` | their bytes |
//! | `portcullis_list_entries` | `list`, `kind`, `source` | entries in the store |
//! | `portcullis_reconcile_seconds` | | duration of the last start-up reconcile |
//! | `portcullis_expired_total` | | entries pruned because they expired |

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::writer::{MetricsData, Writer};

/// Agent-side gauges and counters not kept by the kernel or the store.
#[derive(Default)]
pub struct AgentMetrics {
    /// Last reconcile, microseconds.
    pub reconcile_micros: AtomicU64,
    /// Entries pruned on expiry.
    pub expired: AtomicU64,
}

/// A label value as the exposition format needs it: `\\`, `"` and newlines escaped (an
/// interface name or an import's source may hold any of them).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders every metric.
pub fn render(data: &MetricsData, agent: &AgentMetrics) -> String {
    let mut out = String::new();
    if !data.stats.interfaces.is_empty() {
        for (metric, help, bytes) in [
            (
                "portcullis_xdp_packets_total",
                "Packets judged by the XDP filter, by interface and verdict.",
                false,
            ),
            (
                "portcullis_xdp_bytes_total",
                "Bytes judged by the XDP filter, by interface and verdict.",
                true,
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for (iface, verdicts) in &data.stats.interfaces {
                for (verdict, c) in verdicts {
                    let n = if bytes { c.bytes } else { c.packets };
                    let (iface, verdict) = (label(iface), label(verdict));
                    let _ = writeln!(
                        out,
                        "{metric}{{iface=\"{iface}\",verdict=\"{verdict}\"}} {n}"
                    );
                }
            }
        }
    }
    if !data.stats.l7.is_empty() {
        out.push_str("# HELP portcullis_l7_requests_total Requests seen by the L7 checker, by outcome (detection_escalated and detection_over_budget count detections, also counted under their attack).\n# TYPE portcullis_l7_requests_total counter\n");
        for (outcome, v) in &data.stats.l7 {
            let outcome = label(outcome);
            let _ = writeln!(
                out,
                "portcullis_l7_requests_total{{outcome=\"{outcome}\"}} {v}"
            );
        }
    }
    out.push_str("# HELP portcullis_list_entries Entries on the allow and deny lists.\n# TYPE portcullis_list_entries gauge\n");
    for (list, kind, source, n) in &data.counts {
        let source = label(source);
        let _ = writeln!(
            out,
            "portcullis_list_entries{{list=\"{list}\",kind=\"{kind}\",source=\"{source}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP portcullis_reconcile_seconds Duration of the last kernel reconcile.\n# TYPE portcullis_reconcile_seconds gauge\nportcullis_reconcile_seconds {:.6}",
        agent.reconcile_micros.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "# HELP portcullis_expired_total Entries removed because they expired.\n# TYPE portcullis_expired_total counter\nportcullis_expired_total {}",
        agent.expired.load(Ordering::Relaxed)
    );
    if let Some(f) = &data.fleet {
        fleet(&mut out, f);
    }
    out
}

/// The fleet link's gauges and counters.
fn fleet(out: &mut String, f: &crate::control::answer::FleetState) {
    let lag = f.lag_ms.map_or(f64::NAN, |l| l as f64 / 1e3);
    for (metric, kind, help, value) in [
        (
            "portcullis_fleet_in_sync",
            "gauge",
            "1 while the agent follows the fleet's log.",
            f64::from(u8::from(f.state == "in sync")),
        ),
        (
            "portcullis_fleet_lag_seconds",
            "gauge",
            "Time from a record being logged to it being applied here (last batch).",
            lag,
        ),
        (
            "portcullis_fleet_queued",
            "gauge",
            "Local changes waiting to be published.",
            f.queued as f64,
        ),
        (
            "portcullis_fleet_published_total",
            "counter",
            "Local changes published.",
            f.published as f64,
        ),
        (
            "portcullis_fleet_applied_total",
            "counter",
            "Fleet log records applied.",
            f.applied as f64,
        ),
        (
            "portcullis_fleet_skipped_total",
            "counter",
            "Fleet records skipped as malformed.",
            f.skipped as f64,
        ),
        (
            "portcullis_fleet_refused_total",
            "counter",
            "Fleet records this host's safety rules refused.",
            f.refused as f64,
        ),
        (
            "portcullis_fleet_resyncs_total",
            "counter",
            "Snapshot loads.",
            f.resyncs as f64,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {metric} {help}\n# TYPE {metric} {kind}\n{metric} {value}"
        );
    }
}

/// Serves `/metrics` until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    writer: Writer,
    agent: Arc<AgentMetrics>,
    shutdown: watch::Receiver<bool>,
) {
    crate::listen::accept_until(listener, shutdown, "metrics", |mut stream| {
        let writer = writer.clone();
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await;
            let Ok(Ok(n)) = read else { return };
            let head = String::from_utf8_lossy(&buf[..n]);
            let reply = if head.starts_with("GET /metrics ") || head.starts_with("GET /metrics?") {
                let body = writer.metrics().await.map(|d| render(&d, &agent)).unwrap_or_default();
                format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
            } else {
                "HTTP/1.1 404 Not Found\r\ncontent-length: 10\r\nconnection: close\r\n\r\nnot found\n".to_string()
            };
            let _ = stream.write_all(reply.as_bytes()).await;
        });
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_label_values_stay_inside_their_quotes() {
        let mut data = MetricsData {
            stats: Default::default(),
            counts: vec![(
                crate::model::List::Deny,
                crate::model::Kind::Ip,
                "feed\"} 1e9\nportcullis_fake 1".into(),
                2,
            )],
            fleet: None,
        };
        let evil = "x\"} 1e9\n".to_string();
        data.stats.interfaces.insert(
            evil,
            [("drop_denied".to_string(), Default::default())].into(),
        );
        let text = render(&data, &AgentMetrics::default());
        assert!(
            !text.lines().any(|l| l.starts_with("portcullis_fake")),
            "{text}"
        );
        assert!(text.contains(r#"iface="x\"} 1e9\n""#), "{text}");
        assert!(
            text.contains(r#"source="feed\"} 1e9\nportcullis_fake 1"} 2"#),
            "{text}"
        );
    }
}
