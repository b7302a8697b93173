//! systemd's readiness protocol (`sd_notify(3)`), spoken without libsystemd: one datagram
//! per message to `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). Used for
//! `Type=notify` (`READY=1` once the maps match the store and the filter is attached),
//! `STATUS=` lines that `systemctl status` shows, `WATCHDOG=1` while the list writer answers,
//! and `STOPPING=1` on SIGTERM. Without `$NOTIFY_SOCKET` every call is a no-op.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where systemd listens, if it does.
pub(super) struct Notify {
    to: Option<(UnixDatagram, SocketAddr)>,
}

impl Notify {
    /// Reads `$NOTIFY_SOCKET`. An address that cannot be used is logged once and ignored:
    /// the agent runs the same without a service manager.
    pub(super) fn from_env() -> Self {
        let to = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec();
            let addr = if let Some(name) = bytes.strip_prefix(b"@") {
                use std::os::linux::net::SocketAddrExt as _;
                SocketAddr::from_abstract_name(name)
            } else {
                SocketAddr::from_pathname(&path)
            };
            match (UnixDatagram::unbound(), addr) {
                (Ok(sock), Ok(addr)) => Some((sock, addr)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!("NOTIFY_SOCKET={}: {e}", path.to_string_lossy());
                    None
                }
            }
        });
        Self { to }
    }

    /// Sends one message (`KEY=value` lines). Failures are logged, never fatal: systemd
    /// going away must not take enforcement down with it.
    pub(super) fn send(&self, msg: &str) {
        if let Some((sock, addr)) = &self.to
            && let Err(e) = sock.send_to_addr(msg.as_bytes(), addr)
        {
            tracing::debug!("sd_notify {msg:?} failed: {e}");
        }
    }

    /// `STATUS=`: one line for `systemctl status` (newlines would end the message's field).
    pub(super) fn status(&self, line: &str) {
        self.send(&format!("STATUS={}", line.replace('\n', " ")));
    }

    /// How often to send `WATCHDOG=1` when the unit sets `WatchdogSec=`: half the interval
    /// systemd gives (`$WATCHDOG_USEC`), as sd_watchdog_enabled(3) advises. `None` when
    /// systemd is not watching, or watches another process (`$WATCHDOG_PID`).
    pub(super) fn watchdog_every(&self) -> Option<Duration> {
        self.to.as_ref()?;
        if let Some(pid) = std::env::var_os("WATCHDOG_PID")
            && pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id())
        {
            return None;
        }
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_listening_socket_and_status_stays_one_line() {
        let dir = std::env::temp_dir().join(format!("notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("sock");
        let _ = std::fs::remove_file(&path);
        let listen = UnixDatagram::bind(&path).expect("bind");
        let n = Notify {
            to: Some((
                UnixDatagram::unbound().expect("socket"),
                SocketAddr::from_pathname(&path).expect("addr"),
            )),
        };
        n.status("two\nlines");
        n.send("READY=1");
        let mut buf = [0u8; 64];
        let got = listen.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..got], b"STATUS=two lines");
        let got = listen.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..got], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_no_watchdog_runs() {
        let n = Notify { to: None };
        n.send("READY=1");
        assert_eq!(n.watchdog_every(), None);
    }
}
