//! How long a request may stall once its head is in: a client dripping its body, a backend
//! that never answers or stops half-way through its answer, a client that stops reading the
//! response. Each would otherwise hold a connection slot (and a backend connection) for as
//! long as the peer likes, so a few hundred slow clients could fill `max_connections`.
//!
//! - `body_timeout`: the longest silence inside a request body (the client gets 408) and
//!   while the client does not read what is sent to it (the connection is closed).
//! - `backend_timeout`: the longest a backend may go without asking for a piece of the
//!   request or, once it has it whole, without starting its answer (the client gets 504),
//!   and the longest silence inside its response body (the response is cut off), as nginx's
//!   `proxy_read_timeout`. It is at least `body_timeout` (the configuration checks it), so a
//!   client slow to send its body is answered 408 by the body's timer first. A timed-out
//!   answer does not take the server out of rotation: any client can pick a
//!   slow path on purpose; health checks judge servers.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::CheckerConfig;
use super::upstream::BoxError;

/// The two stall limits, parsed once.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// Longest silence inside a body, either direction, or while the client does not read.
    pub body: Duration,
    /// Longest wait for a backend's response head after the request was sent whole.
    pub backend: Duration,
}

impl Deadlines {
    /// From `checker.body_timeout` and `checker.backend_timeout`.
    pub fn from_config(cfg: &CheckerConfig) -> Result<Self, String> {
        let secs = |t: &str| crate::config::parse_duration(t).map(Duration::from_secs);
        Ok(Self {
            body: secs(&cfg.body_timeout)?,
            backend: secs(&cfg.backend_timeout)?,
        })
    }
}

/// A body went silent for longer than `body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("no body data for {0:?}")]
pub struct BodyStalled(pub Duration);

/// When the backend side of a forwarded request last asked for a piece of its body (or the
/// request started). hyper asks only while the backend connection takes data.
#[derive(Clone)]
pub struct Progress(Arc<ProgressState>);

struct ProgressState {
    base: Instant,
    last_ms: AtomicU64,
    /// The last ask found no data: the client's turn, which the body's own timer judges.
    client_turn: AtomicBool,
}

/// How much later than the body's timer the backend's fires when both run from the same
/// ask, so a slow client is answered 408 rather than 504. Bounded: if data came but hyper
/// could not ask again (the backend stopped reading), the backend's clock ends this late.
const CLIENT_FIRST: Duration = Duration::from_secs(1);

impl Progress {
    /// A request that starts now.
    pub fn start() -> Self {
        Self(Arc::new(ProgressState {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            client_turn: AtomicBool::new(false),
        }))
    }

    fn moved(&self) {
        let s = &self.0;
        s.last_ms
            .store(s.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// When it last moved.
    fn last(&self) -> Instant {
        self.0.base + Duration::from_millis(self.0.last_ms.load(Ordering::Relaxed))
    }
}

/// A body whose frames must keep coming while it is read: a gap longer than the limit ends
/// it with [`BodyStalled`]. A request body also notes its [`Progress`].
pub struct Stalling<B> {
    body: B,
    limit: Duration,
    /// Armed while waiting for a frame; created on the first wait only.
    timer: Option<Pin<Box<Sleep>>>,
    progress: Option<Progress>,
}

impl<B> Stalling<B> {
    /// Wraps a response body.
    pub fn new(body: B, limit: Duration) -> Self {
        Self {
            body,
            limit,
            timer: None,
            progress: None,
        }
    }

    /// Wraps a request body whose reads move `progress`.
    pub fn tracked(body: B, limit: Duration, progress: Progress) -> Self {
        Self {
            progress: Some(progress),
            ..Self::new(body, limit)
        }
    }
}

impl<B> Body for Stalling<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.body).poll_frame(cx);
        if let Some(p) = &self.progress {
            p.moved();
            p.0.client_turn.store(r.is_pending(), Ordering::Relaxed);
        }
        match r {
            Poll::Ready(Some(Ok(frame))) => {
                // Empty DATA frames (h2 lets a client send them) are not progress.
                if frame.data_ref().is_none_or(|d| !d.is_empty()) {
                    self.timer = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled(limit))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Completes `backend` unless it goes `limit` without moving (see [`Progress`]): `None`
/// then.
pub async fn answer_within<F: Future>(
    backend: F,
    progress: &Progress,
    limit: Duration,
) -> Option<F::Output> {
    tokio::pin!(backend);
    let mut due = progress.last() + limit;
    loop {
        tokio::select! {
            r = &mut backend => return Some(r),
            () = tokio::time::sleep_until(due) => {
                due = progress.last() + limit;
                if progress.0.client_turn.load(Ordering::Relaxed) {
                    due += CLIENT_FIRST;
                }
                if due <= Instant::now() {
                    return None;
                }
            }
        }
    }
}

/// A client connection whose writes may stay blocked (the client not reading) for at most
/// `limit`; then they fail and hyper closes the connection.
pub struct WriteStall<I> {
    io: I,
    limit: Duration,
    since: Option<Pin<Box<Sleep>>>,
}

impl<I> WriteStall<I> {
    /// Wraps a client connection.
    pub fn new(io: I, limit: Duration) -> Self {
        Self {
            io,
            limit,
            since: None,
        }
    }

    fn check<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.since = None;
            return r;
        }
        let limit = self.limit;
        let since = self
            .since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match since.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteStall<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteStall<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.check(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.check(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.check(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        self.check(r, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tokio::io::AsyncWriteExt as _;

    /// A body whose frames come from a channel.
    type Drip = http_body_util::channel::Channel<Bytes, BoxError>;

    #[tokio::test(start_paused = true)]
    async fn a_body_that_goes_silent_fails_and_a_steady_one_does_not() {
        let (tx, rx) = Drip::new(4);
        let tx = Arc::new(tokio::sync::Mutex::new(tx));
        let mut body = Stalling::new(rx, Duration::from_secs(5));
        // Frames 4 s apart: under the limit each time.
        for _ in 0..3 {
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(4)).await;
                let _ = tx.lock().await.send_data(Bytes::from_static(b"x")).await;
            });
            let f = body.frame().await.expect("a frame").expect("not stalled");
            assert!(f.is_data());
        }
        // Then 6 s of silence.
        let t = Instant::now();
        let err = body.frame().await.expect("an end").expect_err("stalled");
        assert!(err.is::<BodyStalled>(), "{err}");
        assert_eq!(t.elapsed(), Duration::from_secs(5));
        drop(tx);
    }

    /// A request body sent by a client in frames `gap` apart.
    fn dripped(frames: usize, gap: Duration, progress: &Progress) -> Stalling<Drip> {
        let (mut tx, rx) = Drip::new(1);
        tokio::spawn(async move {
            for _ in 0..frames {
                tokio::time::sleep(gap).await;
                let _ = tx.send_data(Bytes::from_static(b"x")).await;
            }
        });
        Stalling::tracked(rx, Duration::from_secs(30), progress.clone())
    }

    #[tokio::test(start_paused = true)]
    async fn the_backend_clock_runs_from_its_last_ask() {
        let limit = Duration::from_secs(5);
        // A body sent over 12 s, read as it comes, answered 3 s after its end: in time.
        let p = Progress::start();
        let body = dripped(3, Duration::from_secs(4), &p);
        let backend = async move {
            let _ = body.collect().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            "answer"
        };
        assert_eq!(answer_within(backend, &p, limit).await, Some("answer"));

        // A backend that takes nothing: out after the limit.
        let p = Progress::start();
        let t = Instant::now();
        let r = answer_within(std::future::pending::<()>(), &p, limit).await;
        assert_eq!((r, t.elapsed()), (None, limit));

        // A backend that takes the first piece (at 1 s), then stops asking: out 5 s later.
        let p = Progress::start();
        let mut body = dripped(3, Duration::from_secs(1), &p);
        let t = Instant::now();
        let backend = async move {
            let _ = body.frame().await;
            std::future::pending::<()>().await;
        };
        let r = answer_within(backend, &p, limit).await;
        assert_eq!((r, t.elapsed()), (None, Duration::from_secs(6)));
    }

    #[tokio::test(start_paused = true)]
    async fn writes_to_a_client_that_does_not_read_fail_after_the_limit() {
        // A 64 KiB pipe nobody reads from.
        let (a, _b) = tokio::io::duplex(64 * 1024);
        let mut w = WriteStall::new(a, Duration::from_secs(5));
        let t = Instant::now();
        let chunk = vec![0u8; 16 * 1024];
        let err = loop {
            if let Err(e) = w.write_all(&chunk).await {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t.elapsed(), Duration::from_secs(5));
    }
}
