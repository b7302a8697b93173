//! What a client connection is doing, for the limits that close it: whether it has served a
//! request yet, how many are in flight and since when it has been idle (an HTTP/2
//! connection with nothing in flight for `idle_timeout` is asked to go away), and whether
//! responses wait on the client.
//!
//! HTTP/2 flow control lets a client stop a response without blocking the socket: it opens
//! no window, answers pings, and hyper simply stops asking the response body for data. The
//! socket never stalls, so `deadline::WriteStall` cannot see it. On HTTP/2 a response body
//! here is *owed* from the moment it is handed to hyper, or hands hyper a piece, until hyper
//! asks for the next one; each body keeps its own stamp, so fresh requests cannot hide an
//! old stalled one, and a connection with a body owed for `body_timeout` is closed. Pieces
//! are handed out at most 16 KiB at a time (h2's frame size), so a slow but reading client
//! has to take only that much per `body_timeout`.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::admission::StreamSlot;
use super::upstream::{Body as ProxyBody, BoxError};

/// One connection's counters, shared by its requests and the loop that watches it.
pub(super) struct Activity {
    born: Instant,
    served: AtomicBool,
    in_flight: AtomicUsize,
    /// When a request last started or ended (ms since `born`).
    last_ms: AtomicU64,
    /// HTTP/2: the owed stamps of the response bodies alive (see [`BusyBody`]).
    owed: Option<Mutex<Vec<Weak<AtomicU64>>>>,
    /// The agent is stopping: responses tell HTTP/1 clients the connection closes.
    closing: AtomicBool,
}

/// A body's stamp while hyper is asking it for data.
const NOT_OWED: u64 = u64::MAX;

/// The most a response body hands hyper at once on HTTP/2 (one h2 DATA frame).
const PIECE: usize = 16 * 1024;

impl Activity {
    /// A connection that starts now; `h2` watches its response bodies.
    pub(super) fn new(h2: bool) -> Arc<Self> {
        Arc::new(Self {
            born: Instant::now(),
            served: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            owed: h2.then(|| Mutex::new(Vec::new())),
            closing: AtomicBool::new(false),
        })
    }

    /// From now on, responses close the connection (the agent is draining).
    pub(super) fn close_after_response(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    /// Whether responses close the connection.
    pub(super) fn closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Whether a request has started on this connection.
    pub(super) fn served(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }

    /// How long nothing has been in flight (zero while something is).
    pub(super) fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = self.last_ms.load(Ordering::Relaxed);
        Duration::from_millis(self.now_ms().saturating_sub(last))
    }

    /// How long the longest-waiting response body has waited on the client (zero when none
    /// waits); forgets bodies that are gone.
    pub(super) fn stalled_for(&self) -> Duration {
        let Some(owed) = &self.owed else {
            return Duration::ZERO;
        };
        let mut bodies = owed.lock().unwrap_or_else(PoisonError::into_inner);
        bodies.retain(|w| w.strong_count() > 0);
        let oldest = bodies
            .iter()
            .filter_map(Weak::upgrade)
            .map(|s| s.load(Ordering::Relaxed))
            .min()
            .unwrap_or(NOT_OWED);
        if oldest == NOT_OWED {
            return Duration::ZERO;
        }
        Duration::from_millis(self.now_ms().saturating_sub(oldest))
    }
}

/// One request in flight on a connection; counted out (and the time noted) on drop.
pub(super) struct Busy {
    activity: Arc<Activity>,
    /// The client slot a request beyond the connection's first holds.
    _slot: Option<StreamSlot>,
}

impl Busy {
    /// Whether the response should close the connection (see [`Activity::closing`]).
    pub(super) fn closing(&self) -> bool {
        self.activity.closing()
    }

    /// A request starts; `slot` is asked for one of the client's slots when another request
    /// is in flight on the connection already. `None` when there is none left.
    pub(super) fn new(
        activity: Arc<Activity>,
        slot: impl FnOnce() -> Option<StreamSlot>,
    ) -> Option<Self> {
        activity.served.store(true, Ordering::Relaxed);
        let first = activity.in_flight.fetch_add(1, Ordering::Relaxed) == 0;
        activity.last_ms.store(activity.now_ms(), Ordering::Relaxed);
        let mut busy = Self {
            activity,
            _slot: None,
        };
        if !first {
            // Dropping `busy` counts the request out again.
            busy._slot = Some(slot()?);
        }
        Some(busy)
    }

    /// The response body, which keeps the request in flight until it is sent or dropped.
    pub(super) fn body(self, body: ProxyBody) -> BusyBody {
        let a = &self.activity;
        let stamp = a.owed.as_ref().map(|owed| {
            let stamp = Arc::new(AtomicU64::new(a.now_ms()));
            owed.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Arc::downgrade(&stamp));
            stamp
        });
        BusyBody {
            body,
            busy: self,
            stamp,
            held: Bytes::new(),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.activity;
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
        a.last_ms.store(a.now_ms(), Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as in flight until it is sent or dropped;
/// on HTTP/2 it notes when it waits on the client and hands out small pieces (see the
/// module doc).
pub(super) struct BusyBody {
    body: ProxyBody,
    busy: Busy,
    /// HTTP/2: since when hyper owes this body a poll ([`NOT_OWED`] while it asks).
    stamp: Option<Arc<AtomicU64>>,
    /// HTTP/2: what is left of a data frame larger than [`PIECE`].
    held: Bytes,
}

impl BusyBody {
    fn piece(&mut self) -> Frame<Bytes> {
        let n = self.held.len().min(PIECE);
        Frame::data(self.held.split_to(n))
    }
}

impl Body for BusyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(stamp) = this.stamp.clone() else {
            return Pin::new(&mut this.body).poll_frame(cx);
        };
        stamp.store(NOT_OWED, Ordering::Relaxed);
        let r = if this.held.is_empty() {
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.held = data;
                        Poll::Ready(Some(Ok(this.piece())))
                    }
                    Err(trailers) => Poll::Ready(Some(Ok(trailers))),
                },
                other => other,
            }
        } else {
            Poll::Ready(Some(Ok(this.piece())))
        };
        if matches!(r, Poll::Ready(Some(Ok(_)))) {
            stamp.store(this.busy.activity.now_ms(), Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.body.size_hint();
        let held = self.held.len() as u64;
        hint.set_lower(hint.lower().saturating_add(held));
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn body(text: Vec<u8>) -> ProxyBody {
        http_body_util::Full::new(Bytes::from(text))
            .map_err(|e: std::convert::Infallible| match e {})
            .boxed()
    }

    #[tokio::test]
    async fn an_http2_body_is_owed_until_hyper_asks_again() {
        let a = Activity::new(true);
        assert!(!a.served());
        let busy = Busy::new(a.clone(), || None).expect("first");
        assert!(a.served());
        assert_eq!(a.idle_for(), Duration::ZERO, "in flight");
        // A body hyper never asks for data (a client that opens no window) ...
        let stuck = busy.body(body(b"y".to_vec()));
        // ... is not hidden by another that is read to its end meanwhile.
        std::thread::sleep(Duration::from_millis(30));
        let admission = super::super::admission::Admission::new(&Default::default(), Vec::new());
        let conn = Arc::new(admission.admit([198, 18, 0, 9].into()).expect("admitted"));
        let mut read = Busy::new(a.clone(), || conn.stream())
            .expect("second")
            .body(body(vec![b'x'; 40 * 1024]));
        let mut sizes = Vec::new();
        while let Some(f) = read.frame().await {
            sizes.push(f.expect("frame").into_data().expect("data").len());
        }
        assert_eq!(
            sizes,
            [16 * 1024, 16 * 1024, 8 * 1024],
            "handed out in pieces"
        );
        assert!(
            a.stalled_for() >= Duration::from_millis(30),
            "{:?}",
            a.stalled_for()
        );
        drop(stuck);
        assert_eq!(a.stalled_for(), Duration::ZERO, "gone: not waiting");
        drop(read);
        assert_eq!(a.in_flight.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn http1_bodies_pass_through_untouched() {
        let a = Activity::new(false);
        let mut b = Busy::new(a.clone(), || None)
            .expect("first")
            .body(body(vec![b'x'; 40 * 1024]));
        let f = b.frame().await.expect("frame").expect("data");
        assert_eq!(f.into_data().expect("data").len(), 40 * 1024);
        assert_eq!(a.stalled_for(), Duration::ZERO);
    }
}
