//! The ABS feed: mirror the attack list of the behavioural-analytics engine into the deny list
//! (source `abs`), and report the checker's detections back.
//!
//! # What the agent sends and accepts
//!
//! Poll: `GET {url}/v4/abs/attacklist?earlier_date=D&later_date=D&status=active` (dates as
//! `YYYY-MM-DDTHH:MM`, UTC, from `window` ago to a minute ahead) with headers
//! `x-abs-ak: <access key>` and `x-abs-sk: <secret key>` (`x-abs-ak-ru`/`x-abs-sk-ru` with
//! `restricted_keys`). With several URLs (ABS nodes), a poll starts at the node that answered
//! last and fails over to the next ones in turn. Expected answer (200, JSON, at most
//! `max_body_bytes`), the list in its envelope or bare (`{"ips": [...], ...}`):
//!
//! ```json
//! {"attacklist": {
//!    "ips": ["203.0.113.7", "198.51.100.0/24", {"value": "192.0.2.1", "ttl": 3600}],
//!    "cookies": {"JSESSIONID": ["abc", {"value": "def", "ttl": 600}]},
//!    "oauth_tokens": ["eyJ..."],
//!    "api_keys": ["k1", {"name": "X-API-Key", "value": "k2"}],
//!    "usernames": ["mallory"]
//! }}
//! ```
//!
//! Every item is a string or an object with `value` and optional `ttl` (seconds) and `name`
//! (cookie / API-key name). Lists may be absent. Unknown keys are logged and counted, and the
//! known ones applied; items under them, and items of no known shape, are unreadable. Invalid items (a malformed IP, an oversized token) and items that would
//! block everyone or this host are skipped and counted. A failed poll — connection refused,
//! timeout, non-200, truncated or invalid JSON, a body over the limit — changes nothing: the
//! last good list stays enforced and the poll is retried with exponential back-off and jitter.
//!
//! Mirror semantics: the `abs` rows of the deny list become exactly the items of the latest
//! good list, applied as a diff (adds, then removals), never by clearing and refilling. An
//! identifier ABS stops listing loses only its `abs` row: if an operator or the checker also
//! listed it, it stays denied. The allow list still wins. Removals wait while the answer held
//! unreadable items, and a shrink by more than `max_shrink` waits one poll for confirmation
//! (`service::Removals`).
//!
//! Report (with `report = true`; no ABS serves this, it is for an adapter of the operator's):
//! `POST {url}/v4/abs/detections` with the same headers and
//! `{"detections":[{"kind":"ip","value":"198.51.100.9","reason":"decoy on API shop","time":1796...}]}`
//! (secrets as their `sha256:` digests), batched every few seconds from a bounded queue that
//! drops the oldest when ABS is away for long.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

use crate::writer::Writer;

mod list;
mod tls;

pub use crate::config::AbsConfig;
pub use crate::control::proto::AbsItem;
pub use crate::service::AbsState;
pub use list::{AttackList, parse_attacklist, read_attacklist};

/// Parses an answer's body as it arrives, on a blocking thread fed chunk by chunk: the
/// document is never held whole, only its items (at most `max_items`). More than `limit`
/// bytes is [`AbsError::TooLarge`] unless the parser refused the document first.
async fn stream_attacklist<B>(
    mut body: B,
    limit: usize,
    max_items: usize,
) -> Result<AttackList, AbsError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let parser =
        tokio::task::spawn_blocking(move || read_attacklist(ChunkReader::new(rx), max_items));
    let mut read = 0usize;
    let mut failed = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                failed = Some(AbsError::Http(e.to_string()));
                break;
            }
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        read += data.len();
        if read > limit {
            failed = Some(AbsError::TooLarge(limit));
            break;
        }
        if tx.send(data).await.is_err() {
            break; // the parser stopped: its error says why
        }
    }
    drop(tx);
    let parsed = parser
        .await
        .map_err(|e| AbsError::Parse(format!("the parser stopped: {e}")))?;
    match failed {
        Some(e) => Err(e),
        None => parsed,
    }
}

/// A blocking `Read` over the chunks the fetch hands on (end of input when it stops).
struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl ChunkReader {
    fn new(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
        Self {
            rx,
            chunk: Bytes::new(),
        }
    }
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(c) => self.chunk = c,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        bytes::Buf::advance(&mut self.chunk, n);
        Ok(n)
    }
}

/// Why a poll failed; the last good list stays.
#[derive(Debug, thiserror::Error)]
pub enum AbsError {
    /// Network, TLS or HTTP failure.
    #[error("ABS request failed: {0}")]
    Http(String),
    /// Not 200.
    #[error("ABS answered HTTP {0}")]
    Status(u16),
    /// Over the size limit.
    #[error("ABS answer larger than {0} bytes")]
    TooLarge(usize),
    /// Timed out.
    #[error("ABS did not answer within {0:?}")]
    Timeout(Duration),
    /// Not the expected JSON.
    #[error("ABS answer is not a valid attack list: {0}")]
    Parse(String),
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// The feed: client, credentials, state, report queue.
pub struct Abs {
    cfg: AbsConfig,
    /// The ABS nodes, tried in turn.
    urls: Vec<String>,
    /// The node that answered last: polls start there.
    current: std::sync::atomic::AtomicUsize,
    secret: String,
    client: HttpsClient,
    timeout: Duration,
    poll: Duration,
    /// How far back the query reaches, seconds.
    window: u64,
    /// Shared with the service for `status`.
    pub state: Arc<Mutex<AbsState>>,
    queue: Mutex<VecDeque<serde_json::Value>>,
}

impl Abs {
    /// Builds the client (reads the secret key and the CA file).
    pub fn new(cfg: AbsConfig, state: Arc<Mutex<AbsState>>) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context as _;
        let secret = std::fs::read_to_string(&cfg.secret_key_file)
            .with_context(|| {
                format!(
                    "reading the ABS secret key file {}",
                    cfg.secret_key_file.display()
                )
            })?
            .trim()
            .to_owned();
        let tls = tls::client_config(&cfg)?;
        if cfg.restricted_keys {
            tracing::warn!(
                "abs.restricted_keys is on: ABS gives its restricted user obfuscated identifiers, which match no real client; the mirrored list will block nobody"
            );
        }
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let timeout = Duration::from_secs(
            crate::config::parse_duration(&cfg.timeout).map_err(anyhow::Error::msg)?,
        );
        let poll = Duration::from_secs(
            crate::config::parse_duration(&cfg.poll).map_err(anyhow::Error::msg)?,
        );
        let window = crate::config::parse_duration(&cfg.window).map_err(anyhow::Error::msg)?;
        let urls = cfg.urls();
        if let Ok(mut s) = state.lock() {
            s.url = urls.first().cloned().unwrap_or_default();
        }
        Ok(Arc::new(Self {
            cfg,
            urls,
            current: std::sync::atomic::AtomicUsize::new(0),
            secret,
            client,
            timeout,
            poll,
            window,
            state,
            queue: Mutex::new(VecDeque::new()),
        }))
    }

    fn request(
        &self,
        base: &str,
        method: http::Method,
        path: &str,
        body: Bytes,
    ) -> Result<http::Request<Full<Bytes>>, AbsError> {
        let (ak, sk) = if self.cfg.restricted_keys {
            ("x-abs-ak-ru", "x-abs-sk-ru")
        } else {
            ("x-abs-ak", "x-abs-sk")
        };
        http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", base.trim_end_matches('/')))
            .header(ak, &self.cfg.access_key)
            .header(sk, &self.secret)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| AbsError::Http(e.to_string()))
    }

    /// The node polls and reports go to now.
    fn current(&self) -> (usize, &str) {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed) % self.urls.len().max(1);
        (i, self.urls.get(i).map_or("", String::as_str))
    }

    /// Fetches the attack list from the node that answered last, failing over to the next
    /// nodes in turn; the one that answers becomes the node polled first.
    pub async fn fetch(&self) -> Result<AttackList, AbsError> {
        let (start, _) = self.current();
        let n = self.urls.len().max(1);
        let mut failed = None;
        for k in 0..n {
            let i = (start + k) % n;
            let url = self.urls.get(i).map_or("", String::as_str);
            match self.fetch_from(url).await {
                Ok(list) => {
                    if i != start {
                        tracing::warn!(url, "ABS fail-over: polling this node from now on");
                        self.current.store(i, std::sync::atomic::Ordering::Relaxed);
                        if let Ok(mut s) = self.state.lock() {
                            s.url = url.to_owned();
                        }
                    }
                    return Ok(list);
                }
                Err(e) => {
                    if n > 1 {
                        tracing::warn!(url, "ABS node failed ({e}); trying the next");
                    }
                    failed = Some(e);
                }
            }
        }
        Err(failed.unwrap_or_else(|| AbsError::Http("no ABS URL".into())))
    }

    /// Fetches and parses the attack list once from `base`, as it arrives (see
    /// [`stream_attacklist`]).
    async fn fetch_from(&self, base: &str) -> Result<AttackList, AbsError> {
        let req = self.request(
            base,
            http::Method::GET,
            &attacklist_path(crate::service::unix_now(), self.window),
            Bytes::new(),
        )?;
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| AbsError::Http(format!("{e:#}")))?;
            if resp.status() != http::StatusCode::OK {
                return Err(AbsError::Status(resp.status().as_u16()));
            }
            stream_attacklist(
                resp.into_body(),
                self.cfg.max_body_bytes,
                self.cfg.max_items,
            )
            .await
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| AbsError::Timeout(self.timeout))?
    }

    /// Queues a detection for reporting (drops the oldest when full).
    pub fn queue_detection(&self, detection: serde_json::Value) {
        if !self.cfg.report {
            return;
        }
        if let Ok(mut q) = self.queue.lock() {
            if q.len() >= self.cfg.report_queue.max(1) {
                q.pop_front();
                if let Ok(mut s) = self.state.lock() {
                    s.report_dropped += 1;
                }
            }
            q.push_back(detection);
            if let Ok(mut s) = self.state.lock() {
                s.report_queued = q.len();
            }
        }
    }

    async fn report_once(&self) -> Result<usize, AbsError> {
        let batch: Vec<serde_json::Value> = match self.queue.lock() {
            Ok(q) => q.iter().take(1000).cloned().collect(),
            Err(_) => return Ok(0),
        };
        if batch.is_empty() {
            return Ok(0);
        }
        let body = serde_json::to_vec(&serde_json::json!({ "detections": batch }))
            .map_err(|e| AbsError::Parse(e.to_string()))?;
        let req = self.request(
            self.current().1,
            http::Method::POST,
            "/v4/abs/detections",
            body.into(),
        )?;
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| AbsError::Timeout(self.timeout))?
            .map_err(|e| AbsError::Http(format!("{e:#}")))?;
        if !resp.status().is_success() {
            return Err(AbsError::Status(resp.status().as_u16()));
        }
        let n = batch.len();
        if let Ok(mut q) = self.queue.lock() {
            for _ in 0..n.min(q.len()) {
                q.pop_front();
            }
            if let Ok(mut s) = self.state.lock() {
                s.report_queued = q.len();
                s.reported += n as u64;
            }
        }
        Ok(n)
    }

    /// Polls ABS and mirrors the list until `shutdown`; retries failures with exponential
    /// back-off and jitter (capped at the poll interval).
    pub async fn run(self: Arc<Self>, writer: Writer, mut shutdown: watch::Receiver<bool>) {
        let mut failures = 0u32;
        // The shrink the last poll held back: the next one that asks for it confirms it.
        let mut shrink_pending: Option<u64> = None;
        loop {
            let now = crate::service::unix_now();
            let result = self.fetch().await;
            let wait = match result {
                Ok(list) => {
                    failures = 0;
                    let n = list.items.len();
                    let unknown = list.unknown.clone();
                    let unreadable = list.unreadable;
                    let removals = crate::service::Removals {
                        whole: unreadable == 0,
                        max_shrink: self.cfg.max_shrink,
                        confirms: shrink_pending,
                    };
                    let applied = writer.abs_mirror(list.items, removals).await;
                    let mut st = self.state.lock().ok();
                    match applied {
                        Ok(report) if report.off => {
                            tracing::debug!(
                                listed = n,
                                "ABS blocking is off (portcullis switch abs on): list fetched, nothing applied"
                            );
                            if let Some(s) = st.as_mut() {
                                s.last_success = Some(now);
                                s.last_error = None;
                                s.listed = n;
                            }
                        }
                        Ok(report) => {
                            if let Some(s) = st.as_mut() {
                                s.last_success = Some(now);
                                s.last_error = None;
                                s.listed = n;
                                s.skipped += report.skipped as u64;
                                s.unknown_types += unknown.len() as u64;
                                s.unreadable = unreadable;
                                s.removals_held = report.held;
                                s.shrink_held = report.shrink_held;
                            }
                            shrink_pending = report.held_digest;
                            if unreadable > 0 {
                                tracing::warn!(
                                    unreadable,
                                    kept = report.held,
                                    "ABS attack list has items Portcullis cannot read: added what it could, removed nothing"
                                );
                            }
                            if report.shrink_held {
                                tracing::warn!(
                                    held = report.held,
                                    max_shrink = self.cfg.max_shrink,
                                    "ABS attack list shrank by more than abs.max_shrink: removals wait for the next poll to confirm them"
                                );
                            }
                            if !unknown.is_empty() {
                                tracing::warn!(
                                    ?unknown,
                                    "ABS attack list has identifier types Portcullis does not know; ignored"
                                );
                            }
                            tracing::info!(
                                listed = n,
                                added = report.added,
                                removed = report.removed,
                                skipped = report.skipped,
                                "ABS attack list mirrored"
                            );
                        }
                        Err(e) => {
                            tracing::error!("applying the ABS list failed: {e}");
                            if let Some(s) = st.as_mut() {
                                s.last_error = Some(e.to_string());
                                s.failures += 1;
                            }
                        }
                    }
                    if let Some(s) = st.as_mut() {
                        s.last_attempt = Some(now);
                    }
                    self.poll
                }
                Err(e) => {
                    // Only consecutive answers confirm each other.
                    shrink_pending = None;
                    failures += 1;
                    tracing::warn!("ABS poll failed ({e}); keeping the last good list");
                    if let Ok(mut s) = self.state.lock() {
                        s.last_attempt = Some(now);
                        s.last_error = Some(e.to_string());
                        s.failures += 1;
                    }
                    backoff(failures, self.poll)
                }
            };
            if let Err(e) = self.report_once().await {
                tracing::warn!("reporting detections to ABS failed ({e}); will retry");
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// The attack-list query for a window of `window` seconds ending at `now` (Unix seconds):
/// `earlier_date` and `later_date` in ABS's format (`YYYY-MM-DDTHH:MM`, UTC). The end is a
/// minute ahead, so items listed during the current minute are in.
pub fn attacklist_path(now: i64, window: u64) -> String {
    let earlier = now.saturating_sub(i64::try_from(window).unwrap_or(i64::MAX));
    format!(
        "/v4/abs/attacklist?earlier_date={}&later_date={}&status=active",
        abs_date(earlier),
        abs_date(now.saturating_add(60))
    )
}

/// Unix seconds as `YYYY-MM-DDTHH:MM` (UTC), the civil calendar from days since 1970
/// (Howard Hinnant's algorithm); before 1970, 1970.
fn abs_date(unix: i64) -> String {
    let unix = unix.max(0);
    let (days, secs) = (unix / 86_400, unix % 86_400);
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60
    )
}

/// `min(poll, 1 s × 2^(n-1))`, scaled by a random factor in [0.5, 1).
pub fn backoff(failures: u32, poll: Duration) -> Duration {
    let base = Duration::from_secs(1u64 << failures.saturating_sub(1).min(16)).min(poll);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = 0.5 + f64::from(nanos % 1000) / 2000.0;
    base.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_window_is_in_abs_date_format() {
        // 2026-12-06T21:42:44Z and 365 days before it (2025-12-06, no leap day between).
        assert_eq!(
            attacklist_path(1_796_593_364, 365 * 86_400),
            "/v4/abs/attacklist?earlier_date=2025-12-06T21:42&later_date=2026-12-06T21:43&status=active"
        );
        assert_eq!(abs_date(0), "1970-01-01T00:00");
        assert_eq!(abs_date(951_782_400), "2000-02-29T00:00");
        assert_eq!(abs_date(-5), "1970-01-01T00:00");
        assert_eq!(
            attacklist_path(100, u64::MAX),
            "/v4/abs/attacklist?earlier_date=1970-01-01T00:00&later_date=1970-01-01T00:02&status=active"
        );
    }

    #[tokio::test]
    async fn a_list_is_parsed_as_it_arrives_and_too_much_of_it_is_refused() {
        let doc = r#"{"attacklist":{"ips":["203.0.113.7","198.51.100.0/24"]}}"#;
        let body = Full::new(Bytes::from_static(doc.as_bytes()));
        let list = stream_attacklist(body, 1 << 20, 10).await.expect("parses");
        assert_eq!(list.items.len(), 2);
        let body = Full::new(Bytes::from_static(doc.as_bytes()));
        let e = stream_attacklist(body, 16, 10)
            .await
            .expect_err("too large");
        assert!(matches!(e, AbsError::TooLarge(16)), "{e}");
        let body = Full::new(Bytes::from_static(br#"{"attacklist":{"ips":["#));
        let e = stream_attacklist(body, 1 << 20, 10)
            .await
            .expect_err("truncated");
        assert!(e.to_string().contains("EOF while parsing"), "{e}");
    }

    #[test]
    fn the_reader_joins_chunks_split_anywhere() {
        let doc = br#"{"attacklist":{"cookies":{"JSESSIONID":["abc",{"value":"def","ttl":5}]}}}"#;
        let (tx, rx) = tokio::sync::mpsc::channel(doc.len());
        for b in doc.chunks(3) {
            tx.try_send(Bytes::copy_from_slice(b)).expect("room");
        }
        drop(tx);
        let list = read_attacklist(ChunkReader::new(rx), 10).expect("parses");
        assert_eq!(list.items.len(), 2, "{:?}", list.items);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let poll = Duration::from_secs(30);
        assert!(backoff(1, poll) <= Duration::from_secs(1));
        assert!(
            backoff(4, poll) >= Duration::from_secs(4)
                && backoff(4, poll) <= Duration::from_secs(8)
        );
        assert!(backoff(20, poll) <= poll);
    }
}
