//! Prometheus metrics over plain HTTP (`GET /metrics`), in the text exposition format.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `portcullis_xdp_packets_total` | `iface`, `verdict` | packets judged by the XDP filter (`iface="other"`: interfaces without their own slot) |
//! | `portcullis_xdp_bytes_total` | `iface`, `verdict` | their bytes |
//! | `portcullis_list_entries` | `list`, `kind`, `source` | entries in the store |
//! | `portcullis_reconcile_seconds` | | duration of the last start-up reconcile |
//! | `portcullis_expired_total` | | entries pruned because they expired |
//! | `portcullis_hits_untracked_packets_total` | | packets the hit counters saw but credited to no entry |
//! | `portcullis_entry_packets` | `list`, `entry` | packets the [`TOP_HITS`] most-hit entries of each list decided since the agent started (deny: dropped, allow: passed) |
//! | `portcullis_abs_*` | | the ABS feed's sync health (when configured; see [`abs`]) |
//! | `portcullis_fleet_*` | | the fleet link (when configured; see [`fleet`]) |

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::writer::{MetricsData, Writer};

/// Entries per list the hits metric names (a label per entry: a few, not the whole list).
pub const TOP_HITS: usize = 10;

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
    let _ = writeln!(
        out,
        "# HELP portcullis_hits_untracked_packets_total Packets the hit counters saw but credited to no entry (the entry table was full, or the entry went before the read).\n# TYPE portcullis_hits_untracked_packets_total counter\nportcullis_hits_untracked_packets_total {}",
        data.hits_untracked
    );
    if !data.top_hits.is_empty() {
        out.push_str("# HELP portcullis_entry_packets Packets decided by the most-hit entries of each list since the agent started (deny: dropped, allow: passed).\n# TYPE portcullis_entry_packets gauge\n");
        for (list, h) in &data.top_hits {
            let entry = label(&h.entry);
            let _ = writeln!(
                out,
                "portcullis_entry_packets{{list=\"{list}\",entry=\"{entry}\"}} {}",
                h.packets
            );
        }
    }
    if let Some(f) = &data.fleet {
        fleet(&mut out, f);
    }
    if let Some(a) = &data.abs {
        abs(&mut out, a);
    }
    out
}

/// The ABS feed's sync health: when it last worked, whether the last poll did, what it holds.
fn abs(out: &mut String, a: &crate::control::answer::AbsState) {
    let seconds = |t: Option<i64>| t.map_or(f64::NAN, |t| t as f64);
    let ok = a.last_error.is_none() && a.last_success.is_some() && a.last_success == a.last_attempt;
    gauges(
        out,
        &[
            (
                "portcullis_abs_last_success_timestamp_seconds",
                "gauge",
                "Unix time of the last good ABS poll (NaN: none yet).",
                seconds(a.last_success),
            ),
            (
                "portcullis_abs_last_poll_ok",
                "gauge",
                "1 when the last ABS poll succeeded.",
                f64::from(u8::from(ok)),
            ),
            (
                "portcullis_abs_listed",
                "gauge",
                "Items on the last good ABS list.",
                a.listed as f64,
            ),
            (
                "portcullis_abs_removals_held",
                "gauge",
                "Entries the last ABS list dropped but that are kept (a large shrink awaits confirmation).",
                a.removals_held as f64,
            ),
            (
                "portcullis_abs_poll_failures_total",
                "counter",
                "Failed ABS polls.",
                a.failures as f64,
            ),
            (
                "portcullis_abs_skipped_total",
                "counter",
                "ABS items skipped as invalid or unsafe.",
                a.skipped as f64,
            ),
            (
                "portcullis_abs_reported_total",
                "counter",
                "Detections reported to ABS.",
                a.reported as f64,
            ),
            (
                "portcullis_abs_report_dropped_total",
                "counter",
                "Detections not reported because the queue was full.",
                a.report_dropped as f64,
            ),
        ],
    );
}

/// `# HELP`, `# TYPE` and the value of each unlabelled metric.
fn gauges(out: &mut String, metrics: &[(&str, &str, &str, f64)]) {
    for (metric, kind, help, value) in metrics {
        let _ = writeln!(
            out,
            "# HELP {metric} {help}\n# TYPE {metric} {kind}\n{metric} {value}"
        );
    }
}

/// The fleet link's gauges and counters.
fn fleet(out: &mut String, f: &crate::control::answer::FleetState) {
    let lag = f.lag_ms.map_or(f64::NAN, |l| l as f64 / 1e3);
    gauges(
        out,
        &[
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
        ],
    );
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

    /// The shipped Grafana dashboard's queries.
    const DASHBOARD: &str = include_str!("../../dist/grafana/portcullis.json");

    /// Every metric name in a PromQL expression, with the labels it is grouped or filtered by.
    fn queried(expr: &str) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        let mut rest = expr;
        while let Some(at) = rest.find("portcullis_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            let mut labels = Vec::new();
            if let Some(sel) = rest.strip_prefix('{').and_then(|s| s.split_once('}')) {
                labels.extend(
                    sel.0
                        .split(',')
                        .filter_map(|m| m.split(['=', '!']).next())
                        .map(|l| l.trim().to_owned()),
                );
            }
            out.push((name, labels));
        }
        for by in expr.split("by (").skip(1) {
            let grouped: Vec<String> = by
                .split(')')
                .next()
                .unwrap_or_default()
                .split(',')
                .map(|l| l.trim().to_owned())
                .collect();
            for (_, labels) in &mut out {
                labels.extend(grouped.iter().cloned());
            }
        }
        out
    }

    #[test]
    fn every_metric_and_label_the_dashboard_queries_is_exported() {
        let mut data = MetricsData {
            stats: Default::default(),
            counts: vec![(
                crate::model::List::Deny,
                crate::model::Kind::Ip,
                "cli".into(),
                1,
            )],
            fleet: Some(Default::default()),
            abs: Some(Default::default()),
            top_hits: vec![(
                crate::model::List::Deny,
                crate::control::answer::EntryHits {
                    entry: "198.18.0.0/16".into(),
                    packets: 640,
                    bytes: 64_000,
                    last_hit: 1,
                },
            )],
            hits_untracked: 0,
        };
        data.stats.interfaces.insert(
            "eth0".into(),
            [("drop_denied".to_string(), Default::default())].into(),
        );
        data.stats.l7.insert("forwarded".into(), 1);
        let text = render(&data, &AgentMetrics::default());
        let dash: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard JSON");
        let mut exprs = Vec::new();
        for panel in dash["panels"].as_array().expect("panels") {
            for t in panel["targets"].as_array().into_iter().flatten() {
                exprs.push(t["expr"].as_str().expect("expr").to_owned());
            }
        }
        assert!(exprs.len() >= 15, "{exprs:?}");
        let mut seen = 0;
        for expr in &exprs {
            for (name, labels) in queried(expr) {
                seen += 1;
                assert!(
                    text.contains(&format!("# TYPE {name} ")),
                    "the dashboard queries {name}, which the agent does not export ({expr})"
                );
                let sample = text
                    .lines()
                    .find(|l| l.starts_with(&name) && !l.starts_with('#'))
                    .unwrap_or_default();
                for l in labels.iter().filter(|l| *l != "instance" && !l.is_empty()) {
                    assert!(
                        sample.contains(&format!("{l}=\"")),
                        "{name} has no label {l:?} ({expr}); exported: {sample}"
                    );
                }
            }
        }
        assert!(seen >= 20);
    }

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
            abs: None,
            top_hits: Vec::new(),
            hits_untracked: 0,
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
