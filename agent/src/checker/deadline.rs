//! How long a request may stall once its head is in: a client dripping its body, a backend
//! that never answers or stops half-way through its answer, a client that stops reading the
//! response. Each would otherwise hold a connection slot (and a backend connection) for as
//! long as the peer likes, so a few hundred slow clients could fill `max_connections`.
//!
//! - `body_timeout`: the longest silence inside a request body (the client gets 408), inside
//!   a backend's response body (the response is cut off), and while the client does not read
//!   what is sent to it (the connection is closed).
//! - `backend_timeout`: how long a backend has to start its answer once the request is sent
//!   whole (the client gets 504). A timed-out answer does not take the server out of
//!   rotation: any client can pick a slow path on purpose; health checks judge servers.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
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

/// A body whose frames must keep coming: a gap longer than the limit ends it with
/// [`BodyStalled`]. It also tells, through [`Stalling::sent`], when it has been read to the
/// end or dropped, which is when the backend's answer deadline starts.
pub struct Stalling<B> {
    body: B,
    limit: Duration,
    /// Armed while waiting for a frame; created on the first wait only.
    timer: Option<Pin<Box<Sleep>>>,
    /// Dropped when the body is done.
    done: Option<oneshot::Sender<()>>,
}

impl<B> Stalling<B> {
    /// Wraps `body`; the receiver completes (with an error) once it is read whole or dropped.
    pub fn new(body: B, limit: Duration) -> (Self, oneshot::Receiver<()>) {
        let (done, sent) = oneshot::channel();
        let s = Self {
            body,
            limit,
            timer: None,
            done: Some(done),
        };
        (s, sent)
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
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.timer = None;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                self.done = None;
                Poll::Ready(None)
            }
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

/// Completes `backend` after the request body is sent whole (`sent`) and then `limit` has
/// passed; `None` if the deadline came first.
pub async fn answer_within<F: Future>(
    backend: F,
    sent: oneshot::Receiver<()>,
    limit: Duration,
) -> Option<F::Output> {
    let deadline = async {
        // An error is the sender dropped: the body was read whole, or never will be.
        let _ = sent.await;
        tokio::time::sleep(limit).await;
    };
    tokio::select! {
        r = backend => Some(r),
        () = deadline => None,
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
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + limit)));
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
    struct Drip(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Drip {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_goes_silent_fails_and_a_steady_one_does_not() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (mut body, sent) = Stalling::new(Drip(rx), Duration::from_secs(5));
        // Frames 4 s apart: under the limit each time.
        for _ in 0..3 {
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(4)).await;
                let _ = tx.send(Bytes::from_static(b"x")).await;
            });
            let f = body.frame().await.expect("a frame").expect("not stalled");
            assert!(f.is_data());
        }
        // Then 6 s of silence.
        let t = Instant::now();
        let err = body.frame().await.expect("an end").expect_err("stalled");
        assert!(err.is::<BodyStalled>(), "{err}");
        assert_eq!(t.elapsed(), Duration::from_secs(5));
        drop(body);
        assert!(sent.await.is_err(), "dropped counts as sent");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn the_backend_clock_starts_when_the_body_is_sent() {
        let (done, sent) = oneshot::channel::<()>();
        // The body takes 100 s to send; the backend answers 3 s after: in time (limit 5 s).
        let backend = async {
            tokio::time::sleep(Duration::from_secs(100)).await;
            drop(done);
            tokio::time::sleep(Duration::from_secs(3)).await;
            "answer"
        };
        let r = answer_within(backend, sent, Duration::from_secs(5)).await;
        assert_eq!(r, Some("answer"));
        // Sent at once, never answered: none after 5 s.
        let (done, sent) = oneshot::channel::<()>();
        drop(done);
        let t = Instant::now();
        let r = answer_within(std::future::pending::<()>(), sent, Duration::from_secs(5)).await;
        assert_eq!(r, None);
        assert_eq!(t.elapsed(), Duration::from_secs(5));
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
