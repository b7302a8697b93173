//! What a client connection is doing, for the limits that close it: whether it has served a
//! request yet, how many are in flight and since when it has been idle (an HTTP/2
//! connection with nothing in flight for `idle_timeout` is asked to go away), and whether
//! responses wait on the client.
//!
//! HTTP/2 flow control lets a client stop a response without blocking the socket: it opens
//! no window, answers pings, and hyper simply stops asking the response body for data. The
//! socket never stalls, so `deadline::WriteStall` cannot see it. A response body here counts
//! as *owed* from the moment it is handed to hyper, or hands hyper a piece, until hyper asks
//! for the next one; a connection with owed bodies that asked for none for `body_timeout` is
//! closed.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::upstream::{Body as ProxyBody, BoxError};

/// One connection's counters, shared by its requests and the loop that watches it.
pub(super) struct Activity {
    born: Instant,
    served: AtomicBool,
    in_flight: AtomicUsize,
    /// When a request last started or ended (ms since `born`).
    last_ms: AtomicU64,
    /// Response bodies waiting for hyper to ask for their next piece.
    owed: AtomicUsize,
    /// When hyper last asked any response body for a piece (ms since `born`).
    pulled_ms: AtomicU64,
}

impl Activity {
    /// A connection that starts now.
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            born: Instant::now(),
            served: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            owed: AtomicUsize::new(0),
            pulled_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    fn since(&self, ms: &AtomicU64) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(ms.load(Ordering::Relaxed)))
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
        self.since(&self.last_ms)
    }

    /// How long responses have waited on the client (zero when none waits).
    pub(super) fn stalled_for(&self) -> Duration {
        if self.owed.load(Ordering::Relaxed) == 0 {
            return Duration::ZERO;
        }
        self.since(&self.pulled_ms)
    }

    fn owe(&self) {
        self.owed.fetch_add(1, Ordering::Relaxed);
    }

    fn settle(&self) {
        self.owed.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request in flight on a connection; counted out (and the time noted) on drop.
pub(super) struct Busy {
    activity: Arc<Activity>,
}

impl Busy {
    /// A request starts.
    pub(super) fn new(activity: Arc<Activity>) -> Self {
        activity.served.store(true, Ordering::Relaxed);
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.last_ms.store(activity.now_ms(), Ordering::Relaxed);
        Self { activity }
    }

    /// The response body, which keeps the request in flight until it is sent or dropped.
    pub(super) fn body(self, body: ProxyBody) -> BusyBody {
        let a = &self.activity;
        a.owe();
        a.pulled_ms.store(a.now_ms(), Ordering::Relaxed);
        BusyBody {
            body,
            busy: self,
            owed: true,
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

/// A response body that keeps its request counted as in flight until it is sent or dropped,
/// and tells whether hyper still asks it for data (see the module doc).
pub(super) struct BusyBody {
    body: ProxyBody,
    busy: Busy,
    owed: bool,
}

impl Body for BusyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let a = &this.busy.activity;
        if std::mem::take(&mut this.owed) {
            a.settle();
        }
        a.pulled_ms.store(a.now_ms(), Ordering::Relaxed);
        let r = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(r, Poll::Ready(Some(Ok(_)))) {
            a.owe();
            this.owed = true;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for BusyBody {
    fn drop(&mut self) {
        if self.owed {
            self.busy.activity.settle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn body(text: &'static str) -> ProxyBody {
        http_body_util::Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|e: std::convert::Infallible| match e {})
            .boxed()
    }

    #[tokio::test]
    async fn a_body_is_owed_until_hyper_asks_again_and_settled_on_drop() {
        let a = Activity::new();
        assert!(!a.served());
        let busy = Busy::new(a.clone());
        assert!(a.served());
        assert_eq!(a.idle_for(), Duration::ZERO, "in flight");
        let mut b = busy.body(body("x"));
        assert_eq!(a.owed.load(Ordering::Relaxed), 1, "handed over");
        let f = b.frame().await.expect("frame").expect("data");
        assert!(f.is_data());
        assert_eq!(a.owed.load(Ordering::Relaxed), 1, "a piece handed over");
        assert!(b.frame().await.is_none(), "end");
        assert_eq!(a.owed.load(Ordering::Relaxed), 0, "asked again: settled");
        assert_eq!(a.stalled_for(), Duration::ZERO);
        // Never asked for data (a client that opens no window): owed until dropped.
        let b2 = Busy::new(a.clone()).body(body("y"));
        assert_eq!(a.owed.load(Ordering::Relaxed), 1);
        drop(b2);
        drop(b);
        assert_eq!(a.owed.load(Ordering::Relaxed), 0, "dropped: settled");
        assert_eq!(a.in_flight.load(Ordering::Relaxed), 0);
    }
}
