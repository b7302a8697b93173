//! Listening sockets passed by the service manager (systemd socket activation,
//! sd_listen_fds(3)): `LISTEN_PID`, `LISTEN_FDS`, descriptors from 3 on.
//!
//! A socket unit holds the checker's ports (and the metrics page's) while the agent restarts,
//! so a restart or an upgrade refuses no connection: clients wait in the socket's backlog
//! until the new agent accepts them. A configured address that was not passed is bound by the
//! agent itself, as without a socket unit.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The first descriptor the service manager passes.
const FIRST_FD: RawFd = 3;

/// More than this many passed descriptors is not a socket unit of ours.
const MAX_FDS: RawFd = 64;

/// The listening TCP sockets this process was given, by the address each listens on.
#[derive(Debug, Default)]
pub struct Passed {
    sockets: Vec<(SocketAddr, TcpListener)>,
}

impl Passed {
    /// Takes the sockets passed to this process, once: the variables are removed, so a
    /// program the agent starts later does not take them too. A descriptor that is not a
    /// listening TCP socket is closed, and said so in the returned warnings.
    ///
    /// # Safety
    /// Call it before any other thread exists: it changes the environment.
    pub unsafe fn from_env() -> (Self, Vec<String>) {
        let pid = std::env::var("LISTEN_PID").ok();
        let fds = std::env::var("LISTEN_FDS").ok();
        if pid.is_none() && fds.is_none() {
            return (Self::default(), Vec::new());
        }
        // SAFETY: the caller guarantees no other thread exists.
        unsafe {
            std::env::remove_var("LISTEN_PID");
            std::env::remove_var("LISTEN_FDS");
            std::env::remove_var("LISTEN_FDNAMES");
        }
        let ours = pid.as_deref().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
        if !ours {
            // Meant for another process (inherited through a shell): not ours to touch.
            return (Self::default(), Vec::new());
        }
        let Some(n) = fds.as_deref().and_then(|n| n.parse::<RawFd>().ok()) else {
            return (
                Self::default(),
                vec![format!(
                    "LISTEN_FDS={fds:?} is not a number; no socket taken"
                )],
            );
        };
        let mut out = Self::default();
        let mut warnings = Vec::new();
        if n > MAX_FDS {
            warnings.push(format!(
                "LISTEN_FDS={n}: only the first {MAX_FDS} descriptors are taken"
            ));
        }
        for fd in FIRST_FD..FIRST_FD + n.clamp(0, MAX_FDS) {
            match take_fd(fd) {
                Ok(pair) => out.sockets.push(pair),
                Err(why) => warnings.push(format!("passed descriptor {fd}: {why}; closed")),
            }
        }
        (out, warnings)
    }

    /// Builds the set from sockets already open (tests).
    pub fn from_listeners(listeners: Vec<TcpListener>) -> std::io::Result<Self> {
        let sockets = listeners
            .into_iter()
            .map(|l| Ok((l.local_addr()?, l)))
            .collect::<std::io::Result<_>>()?;
        Ok(Self { sockets })
    }

    /// The socket listening on `addr` (as the configuration writes it), if one was passed.
    /// Another passed socket on the same port but a different address is an error: binding
    /// `addr` beside it would fail or split the clients between two sockets.
    pub fn take(&mut self, what: &str, addr: &str) -> anyhow::Result<Option<TcpListener>> {
        if self.sockets.is_empty() {
            return Ok(None);
        }
        let want: SocketAddr = addr
            .parse()
            .map_err(|e| anyhow::anyhow!("{what}: listen address {addr:?}: {e}"))?;
        if let Some(i) = self.sockets.iter().position(|(a, _)| *a == want) {
            return Ok(Some(self.sockets.swap_remove(i).1));
        }
        if let Some((other, _)) = self.sockets.iter().find(|(a, _)| a.port() == want.port()) {
            anyhow::bail!(
                "{what} = {addr:?}, but the service manager passed a socket on {other}: make the socket unit's ListenStream= name the same address ({addr})"
            );
        }
        Ok(None)
    }

    /// Checks, before anything starts, that the passed sockets and the configured listen
    /// addresses (`(what, address)`, empty for none) agree: no passed socket with a
    /// configured port on another address, none that no address takes (its clients would be
    /// accepted by the kernel and never answered).
    pub fn check(&self, wanted: &[(&str, &str)]) -> anyhow::Result<()> {
        // One passed socket per configured address is used; a second one on the same
        // address (ReusePort=) would be left unanswered, so it counts as unused.
        let mut taken = vec![false; self.sockets.len()];
        for (what, addr) in wanted.iter().filter(|(_, a)| !a.is_empty()) {
            let want: SocketAddr = addr
                .parse()
                .map_err(|e| anyhow::anyhow!("{what}: listen address {addr:?}: {e}"))?;
            if let Some(i) = self.sockets.iter().position(|(a, _)| *a == want) {
                taken[i] = true;
            } else if let Some((other, _)) =
                self.sockets.iter().find(|(a, _)| a.port() == want.port())
            {
                anyhow::bail!(
                    "{what} = {addr:?}, but the service manager passed a socket on {other}: make the socket unit's ListenStream= name the same address ({addr})"
                );
            }
        }
        let unused: Vec<SocketAddr> = self
            .sockets
            .iter()
            .zip(&taken)
            .filter(|(_, taken)| !**taken)
            .map(|((a, _), _)| *a)
            .collect();
        if !unused.is_empty() {
            anyhow::bail!(
                "the service manager passed sockets on {unused:?} that no listener in the configuration uses (checker.https, checker.http, metrics): remove them from the socket unit's ListenStream= or configure them"
            );
        }
        Ok(())
    }

    /// Addresses passed that no listener took (the socket unit names more than the
    /// configuration uses): clients there would wait for ever, so the agent refuses to
    /// start.
    pub fn unused(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|(a, _)| *a).collect()
    }
}

/// The addresses of the sockets passed to this process, read without taking them (the
/// start checks run before the agent takes them): an address passed is bound already,
/// perhaps with `FreeBind=` to an address that is not up yet.
pub fn passed_addresses() -> Vec<SocketAddr> {
    let var = |k| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok());
    if var("LISTEN_PID") != Some(std::process::id()) {
        return Vec::new();
    }
    let n = var("LISTEN_FDS").unwrap_or(0).min(MAX_FDS as u32) as RawFd;
    (FIRST_FD..FIRST_FD + n)
        .filter_map(|fd| {
            // SAFETY: F_GETFD only reads the descriptor's flags.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return None;
            }
            // SAFETY: the descriptor is open; ManuallyDrop never closes it, and it is only
            // read (getsockname).
            let l = std::mem::ManuallyDrop::new(unsafe { TcpListener::from_raw_fd(fd) });
            l.local_addr().ok()
        })
        .collect()
}

/// Adopts descriptor `fd` if it is a listening TCP socket (closing it otherwise).
fn take_fd(fd: RawFd) -> Result<(SocketAddr, TcpListener), String> {
    // SAFETY: F_GETFD only reads the descriptor's flags; a closed one answers EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err("not open".into());
    }
    // SAFETY: the descriptor is open and was passed to this process to own (sd_listen_fds).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: setting FD_CLOEXEC on an open descriptor we own.
    unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    let int = |opt| {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are valid for the size given.
        let r = unsafe {
            libc::getsockopt(
                owned.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&raw mut v).cast(),
                &raw mut len,
            )
        };
        (r == 0).then_some(v)
    };
    if int(libc::SO_TYPE) != Some(libc::SOCK_STREAM) {
        return Err("not a stream socket".into());
    }
    if int(libc::SO_ACCEPTCONN) != Some(1) {
        return Err("not listening".into());
    }
    let listener = TcpListener::from(owned);
    let addr = listener
        .local_addr()
        .map_err(|e| format!("not a TCP socket ({e})"))?;
    Ok((addr, listener))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_by_address_and_refuses_a_different_address_on_the_same_port() {
        let a = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = a.local_addr().expect("addr").port();
        let b = TcpListener::bind("127.0.0.1:0").expect("bind");
        let b_addr = b.local_addr().expect("addr");
        let mut passed = Passed::from_listeners(vec![a, b]).expect("passed");
        let took = passed
            .take("checker.https", &format!("127.0.0.1:{port}"))
            .expect("no error")
            .expect("taken");
        assert_eq!(took.local_addr().expect("addr").port(), port);
        // Taken once.
        assert!(
            passed
                .take("checker.https", &format!("127.0.0.1:{port}"))
                .expect("no error")
                .is_none()
        );
        let e = passed
            .take("checker.http", &format!("0.0.0.0:{}", b_addr.port()))
            .expect_err("same port, other address");
        assert!(e.to_string().contains("ListenStream="), "{e}");
        assert_eq!(passed.unused(), vec![b_addr]);
        assert!(passed.take("metrics", "not an address").is_err());
        // Checked before anything starts: the same two mistakes, and a socket nothing takes.
        let b_port = format!("127.0.0.1:{}", b_addr.port());
        assert!(
            passed
                .check(&[("checker.http", &b_port), ("metrics", "")])
                .is_ok()
        );
        let e = passed
            .check(&[("checker.http", &format!("0.0.0.0:{}", b_addr.port()))])
            .expect_err("same port, other address");
        assert!(e.to_string().contains("ListenStream="), "{e}");
        let e = passed
            .check(&[("checker.https", "127.0.0.1:1")])
            .expect_err("a passed socket nothing takes");
        assert!(e.to_string().contains("no listener"), "{e}");
    }

    #[test]
    fn a_descriptor_that_is_not_a_listening_socket_is_refused() {
        let file = std::fs::File::open("/proc/self/status").expect("open");
        let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
        assert!(take_fd(fd).is_err());
        let idle = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let fd = std::os::fd::IntoRawFd::into_raw_fd(idle);
        assert!(take_fd(fd).is_err());
    }
}
