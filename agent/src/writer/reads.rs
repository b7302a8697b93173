//! The list writer's reads: queries and metrics, served between writes from the same
//! thread (they see every write before them, and never a half-applied one).

use tokio::sync::{mpsc, oneshot};

use super::guarded;
use crate::control::proto::{Request, Response};
use crate::model::Kind;
use crate::service::{Service, ServiceError};

/// Data the metrics endpoint renders, read in one go.
pub struct MetricsData {
    /// Kernel and L7 counters (the `stats` answer).
    pub stats: crate::control::answer::Stats,
    /// Entries by list, kind and source.
    pub counts: Vec<(crate::model::List, Kind, String, u64)>,
    /// The fleet link, when configured.
    pub fleet: Option<crate::control::answer::FleetState>,
    /// The ABS feed, when configured.
    pub abs: Option<crate::control::answer::AbsState>,
    /// The most-hit deny and allow entries (see `crate::service::hits`).
    pub top_hits: Vec<(crate::model::List, crate::control::answer::EntryHits)>,
    /// Packets the hit counters saw but could credit to no entry.
    pub hits_untracked: u64,
}

/// A read the writer thread serves.
pub(super) enum Read {
    Control(Request, oneshot::Sender<Response>),
    Metrics(oneshot::Sender<MetricsData>),
}

pub(super) fn read(service: &Service, r: Read) {
    match r {
        Read::Control(req, tx) => {
            let resp = guarded(
                || service.query(req),
                |m| Response::err(ServiceError::Internal(m)),
            );
            let _ = tx.send(resp);
        }
        Read::Metrics(tx) => {
            let data = guarded(
                || MetricsData {
                    stats: service.stats().unwrap_or_default(),
                    counts: service.counts().unwrap_or_default(),
                    fleet: service.board().fleet(),
                    abs: service.board().abs(),
                    top_hits: [crate::model::List::Deny, crate::model::List::Allow]
                        .into_iter()
                        .flat_map(|l| {
                            service
                                .entry_hits(l, crate::metrics::TOP_HITS)
                                .into_iter()
                                .map(move |h| (l, h))
                        })
                        .collect(),
                    hits_untracked: service.hits_untracked(),
                },
                |_| MetricsData {
                    stats: Default::default(),
                    counts: Vec::new(),
                    fleet: None,
                    abs: None,
                    top_hits: Vec::new(),
                    hits_untracked: 0,
                },
            );
            let _ = tx.send(data);
        }
    }
}

/// Serves the reads waiting now, and no more (reads arriving meanwhile wait for the next
/// turn, so a flood of them cannot hold the writes back).
pub(super) fn serve_waiting_reads(service: &Service, reads: &mut mpsc::Receiver<Read>) {
    for _ in 0..reads.len() {
        match reads.try_recv() {
            Ok(r) => read(service, r),
            Err(_) => break,
        }
    }
}
