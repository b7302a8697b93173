//! WebSocket APIs (`protocol: "ws"`): an HTTP/1.1 upgrade request is judged like any other
//! request (lists, decoys, patterns, rates), then forwarded with its `Upgrade` headers; when
//! the server answers a valid WebSocket 101 (its `Sec-WebSocket-Accept` matching the
//! request's key: anything else would let the client speak raw HTTP to the server past every
//! check), both connections are handed over to a tunnel that copies bytes both ways. The
//! tunnel holds the client's connection ticket and the server's place, so connection limits
//! and `server_connection_quota` count it for as long as it is open, and
//! `bytes_in_threshold` / `bytes_out_threshold` close it once either direction carries more
//! than its rate. It closes when either side closes, after `idle` without a byte either way,
//! and when the agent stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha1::{Digest as _, Sha1};

use http::{HeaderMap, HeaderValue, Method, Request, Version, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Whether `req` asks to become a WebSocket (RFC 6455 §4.1: an HTTP/1.1 GET with
/// `Upgrade: websocket`, `Connection: upgrade`, one `Sec-WebSocket-Key` and version 13).
pub fn requested<B>(req: &Request<B>) -> bool {
    let one = |name: &str| {
        let mut v = req.headers().get_all(name).iter();
        v.next().is_some() && v.next().is_none()
    };
    let has = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && has(header::UPGRADE, "websocket")
        && has(header::CONNECTION, "upgrade")
        && one("sec-websocket-key")
        && req
            .headers()
            .get("sec-websocket-version")
            .is_some_and(|v| v.as_bytes() == b"13")
}

/// Whether `response` is the server accepting the WebSocket `request` asked for: 101 with
/// `Upgrade: websocket` and the `Sec-WebSocket-Accept` derived from the request's key.
pub fn accepted(key: Option<&HeaderValue>, response: &HeaderMap) -> bool {
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let Some(key) = key else {
        return false;
    };
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    let want = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    response
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && response
            .get("sec-websocket-accept")
            .is_some_and(|v| v.as_bytes() == want.as_bytes())
}

/// Puts back the hop-by-hop headers an upgrade needs (after they were all removed).
pub fn ask_upgrade(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// Byte rates a tunnel may carry, `(bytes, per seconds)` each way; `None`: no limit.
#[derive(Clone, Copy, Debug, Default)]
pub struct Thresholds {
    /// Client to server (`bytes_in_threshold`).
    pub bytes_in: Option<(u32, u64)>,
    /// Server to client (`bytes_out_threshold`).
    pub bytes_out: Option<(u32, u64)>,
}

/// How a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// A side closed, or a connection failed.
    Closed,
    /// A direction went past its threshold.
    OverThreshold,
}

/// Copies between the upgraded client and server connections until one side closes or a
/// threshold is passed; `hold` (the connection ticket, the server's place) is kept until
/// then.
pub async fn tunnel<H: Send>(
    client: OnUpgrade,
    server: OnUpgrade,
    limits: Thresholds,
    idle: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    hold: H,
) -> Ended {
    let _hold = hold;
    let (Ok(client), Ok(server)) = tokio::join!(client, server) else {
        return Ended::Closed;
    };
    let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
    let (server_read, server_write) = tokio::io::split(TokioIo::new(server));
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let quiet = async {
        loop {
            let since = start
                .elapsed()
                .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
            if since >= idle {
                return Ended::Closed;
            }
            tokio::time::sleep(idle - since).await;
        }
    };
    tokio::select! {
        e = pump(client_read, server_write, limits.bytes_in, (start, &last)) => e,
        e = pump(server_read, client_write, limits.bytes_out, (start, &last)) => e,
        e = quiet => e,
        _ = stop.wait_for(|s| *s) => Ended::Closed,
    }
}

/// One direction: read, count against `limit`, write and flush (a WebSocket frame must not
/// wait in a buffer), until the end or the limit.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    limit: Option<(u32, u64)>,
    (start, last): (Instant, &AtomicU64),
) -> Ended {
    let mut buf = vec![0u8; 8 << 10];
    let mut window = (Instant::now(), 0u64);
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return Ended::Closed;
            }
            Ok(n) => n,
        };
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        if let Some((most, per)) = limit {
            if window.0.elapsed() >= Duration::from_secs(per) {
                window = (Instant::now(), 0);
            }
            window.1 += n as u64;
            if window.1 > u64::from(most) {
                return Ended::OverThreshold;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
            return Ended::Closed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_http11_get_with_both_headers_asks_to_upgrade() {
        let req = |method: Method, version: Version, upgrade: &str, connection: &str| {
            Request::builder()
                .method(method)
                .version(version)
                .header(header::UPGRADE, upgrade)
                .header(header::CONNECTION, connection)
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
                .header("sec-websocket-version", "13")
                .body(())
                .expect("request")
        };
        assert!(requested(&req(
            Method::GET,
            Version::HTTP_11,
            "WebSocket",
            "keep-alive, Upgrade"
        )));
        assert!(!requested(&req(
            Method::POST,
            Version::HTTP_11,
            "websocket",
            "upgrade"
        )));
        assert!(!requested(&req(
            Method::GET,
            Version::HTTP_10,
            "websocket",
            "upgrade"
        )));
        assert!(!requested(&req(
            Method::GET,
            Version::HTTP_11,
            "h2c",
            "upgrade"
        )));
        assert!(!requested(&req(
            Method::GET,
            Version::HTTP_11,
            "websocket",
            "close"
        )));
    }

    #[test]
    fn only_the_accept_derived_from_the_key_opens_a_tunnel() {
        let mut req = HeaderMap::new();
        req.insert(
            "sec-websocket-key",
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        let mut resp = HeaderMap::new();
        resp.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        // RFC 6455 §1.3's example.
        resp.insert(
            "sec-websocket-accept",
            HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        );
        assert!(accepted(req.get("sec-websocket-key"), &resp));
        resp.insert(
            "sec-websocket-accept",
            HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        );
        assert!(!accepted(req.get("sec-websocket-key"), &resp));
        assert!(!accepted(None, &resp));
    }

    #[tokio::test]
    async fn a_direction_past_its_threshold_ends_the_copy() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let (c, mut d) = tokio::io::duplex(1 << 16);
        let last = Box::leak(Box::new(AtomicU64::new(0)));
        let copy = tokio::spawn(pump(b, c, Some((100, 60)), (Instant::now(), last)));
        a.write_all(&[1; 60]).await.expect("write");
        let mut got = [0u8; 60];
        d.read_exact(&mut got).await.expect("copied");
        a.write_all(&[1; 60]).await.expect("write");
        assert_eq!(copy.await.expect("pump"), Ended::OverThreshold);
        let mut rest = Vec::new();
        let _ = d.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "nothing past the threshold was copied");
    }
}
