//! The accept loop the agent's own listeners share (the control socket, the metrics page):
//! one place for stopping on shutdown and for backing off when accepting fails.

use std::io;
use std::time::Duration;

use tokio::sync::watch;

/// A listener whose connections [`accept_until`] hands out.
pub trait Listener {
    /// One accepted connection.
    type Stream;
    /// Waits for the next connection.
    fn accept_one(&self) -> impl Future<Output = io::Result<Self::Stream>>;
}

impl Listener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_one(&self) -> io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_one(&self) -> io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// Hands each connection `listener` accepts to `handle` until `shutdown` flips. A failed
/// accept (EMFILE: out of descriptors) backs off for 100 ms instead of spinning; the open
/// connections will close.
pub async fn accept_until<L: Listener>(
    listener: L,
    mut shutdown: watch::Receiver<bool>,
    what: &str,
    mut handle: impl FnMut(L::Stream),
) {
    loop {
        tokio::select! {
            accepted = listener.accept_one() => match accepted {
                Ok(stream) => handle(stream),
                Err(e) => {
                    tracing::warn!("{what}: accept failed: {e} (backing off)");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

/// The body length an HTTP request declares (`Content-Length`), if it does: a body over a
/// limit is refused on it, before a `100 Continue` invites the body.
pub fn declared_length<B>(req: &http::Request<B>) -> Option<u64> {
    req.headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}
