//! What the access log and the event stream need to know of a request while it is decided:
//! its outcomes, API, client and identifiers, noted through a task-local set only while a log
//! is written or someone watches the events, and the guard that writes the line (and sends
//! the event) when the response is done (or the client gone).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::checker::access_log::{AccessLog, Record};
use crate::checker::lists::RequestIdents;

tokio::task_local! {
    /// What the request in hand was counted as, by which API, and for whom (for the access
    /// log; set only while one is written).
    pub(super) static TRACE: Arc<std::sync::Mutex<Trace>>;
}

/// The request's [`TRACE`], to note in.
pub(super) fn trace(f: impl FnOnce(&mut Trace)) {
    let _ = TRACE.try_with(|t| f(&mut t.lock().unwrap_or_else(std::sync::PoisonError::into_inner)));
}

/// See [`TRACE`].
#[derive(Default)]
pub(super) struct Trace {
    pub(super) outcomes: Vec<&'static str>,
    pub(super) api: String,
    pub(super) client: Option<IpAddr>,
    pub(super) ids: BTreeMap<&'static str, Vec<String>>,
    /// The identifier found on the deny list (as the debug log names it).
    pub(super) matched: Option<String>,
    /// A sideband question's own request (method, path), which the event shows instead of
    /// the gateway's `POST /ase/request`.
    pub(super) asked: Option<(String, String)>,
}

/// The outcome of a pattern violation (`pattern::violation`'s reason).
pub(super) fn pattern_outcome(reason: &str) -> &'static str {
    match reason {
        "invalid-method" => "invalid_method",
        "invalid-protocol" => "invalid_protocol",
        _ => "invalid_content_type",
    }
}

/// The request's identifiers as the access log shows them: secrets by fingerprint.
pub(super) fn logged_ids(ids: &RequestIdents) -> BTreeMap<&'static str, Vec<String>> {
    let fp = |i: &crate::model::Identifier| crate::model::ident::fingerprint(&i.value);
    let mut out = BTreeMap::new();
    for (kind, values) in [
        ("cookie", ids.cookies.iter().map(fp).collect::<Vec<_>>()),
        ("token", ids.tokens.iter().map(fp).collect()),
        (
            "api_key",
            ids.api_keys.iter().map(|(named, _)| fp(named)).collect(),
        ),
        (
            "username",
            ids.usernames
                .iter()
                .map(|u| u.value.chars().take(128).collect())
                .collect(),
        ),
    ] {
        if !values.is_empty() {
            out.insert(kind, values);
        }
    }
    out
}

/// A request's access-log line, written when its response body is done or dropped — or
/// when the client goes away before the answer (status 499, as nginx logs it), so requests
/// a client cancels still leave their line.
pub(super) struct Pending {
    /// The access log, when one is written.
    pub(super) log: Option<Arc<AccessLog>>,
    /// The event stream, when someone watches it (`portcullis events`).
    pub(super) events: Option<tokio::sync::broadcast::Sender<crate::events::Event>>,
    pub(super) record: Record,
    pub(super) trace: Arc<std::sync::Mutex<Trace>>,
}

impl Pending {
    /// The line (and event) of `req` from `peer`, until its answer is made.
    pub(super) fn new<B>(
        log: Option<Arc<AccessLog>>,
        events: Option<tokio::sync::broadcast::Sender<crate::events::Event>>,
        req: &http::Request<B>,
        peer: std::net::SocketAddr,
        trace: Arc<std::sync::Mutex<Trace>>,
    ) -> Self {
        Self {
            log,
            events,
            record: Record {
                ts: crate::events::now(),
                client: peer.ip().to_canonical().to_string(),
                method: clipped(req.method().as_str(), 32),
                path: clipped(req.uri().path(), 1024),
                // Until an answer is made: the client went away first.
                status: 499,
                ..Record::default()
            },
            trace,
        }
    }
}

/// At most `n` characters of `s`.
pub(super) fn clipped(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

impl Drop for Pending {
    fn drop(&mut self) {
        let t = std::mem::take(
            &mut *self
                .trace
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if let Some(c) = t.client {
            self.record.client = c.to_string();
        }
        self.record.api = t.api;
        self.record.outcomes = t.outcomes;
        self.record.ids = t.ids;
        if let Some(events) = &self.events
            && crate::events::notable(&self.record.outcomes)
        {
            let r = &self.record;
            let (method, path) = t
                .asked
                .unwrap_or_else(|| (r.method.clone(), r.path.clone()));
            let _ = events.send(crate::events::Event::L7 {
                ts: r.ts,
                client: r.client.clone(),
                api: r.api.clone(),
                method,
                path,
                status: r.status,
                outcomes: r.outcomes.iter().map(|o| (*o).to_owned()).collect(),
                matched: t.matched,
            });
        }
        if let Some(log) = &self.log {
            log.record(&self.record);
        }
    }
}
