//! The agent's side of the control socket: one task per connection, each request handed to
//! the list writer ([`crate::writer`]) and answered in order, the next one read and parsed
//! while the writer works.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

use super::proto::{MAX_REQUEST, PROTOCOL_VERSION, Request, Response};
use crate::service::PreparedImport;
use crate::writer::Writer;

/// Fails when another agent answers on `path` (checked first thing at start, and again by
/// [`bind`]).
pub fn ensure_no_agent(path: &Path) -> anyhow::Result<()> {
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("another agent is already listening on {}", path.display());
    }
    Ok(())
}

/// Binds the control socket with mode 0660 (group `group` if given), replacing a stale file
/// but refusing to steal the socket of a running agent.
pub fn bind(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // The agent's umask is 077; the group must be able to reach the socket inside.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    ensure_no_agent(path)?;
    if path.exists() {
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(group) = group {
        let gid = group_id(group)
            .with_context(|| format!("control socket group {group:?} does not exist"))?;
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("chown {} to group {group}", path.display()))?;
    }
    Ok(listener)
}

/// The id of group `name`, if it exists.
pub fn group_id(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: valid C string; getgrnam returns a pointer to static storage or null.
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    // SAFETY: checked for null.
    (!g.is_null()).then(|| unsafe { (*g).gr_gid })
}

/// Accepts connections until `shutdown` flips.
pub async fn serve(
    listener: UnixListener,
    writer: Writer,
    group: Option<u32>,
    reload: Option<mpsc::Sender<ReloadAsk>>,
    shutdown: watch::Receiver<bool>,
) {
    let stop = shutdown.clone();
    crate::listen::accept_until(listener, shutdown, "control socket", |stream| {
        if !peer_allowed(&stream, group) {
            tracing::warn!(peer = ?stream.peer_cred().ok(), "control connection refused");
            tokio::spawn(refuse(stream));
            return;
        }
        let root = peer_is_root(&stream);
        let writer = writer.clone();
        let reload = reload.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            // An idle client must not keep the writer (and the shutdown) waiting.
            tokio::select! {
                r = connection(stream, writer, reload, root) => if let Err(e) = r {
                    tracing::debug!("control connection ended: {e}");
                },
                _ = stop.changed() => {}
            }
        });
    })
    .await;
}

/// Answers a refused peer's first request with the reason (reading it first, so the client
/// sees the answer rather than a broken pipe), then hangs up.
async fn refuse(stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut sink = Vec::new();
    let mut limited = BufReader::new(read).take(MAX_REQUEST as u64);
    let first = limited.read_until(b'\n', &mut sink);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), first).await;
    let r = Response::err(
        "not allowed: the control socket is for root, the agent's user and its group",
    );
    let _ = write.write_all(&answer(&r)).await;
}

/// Whether the peer is root or the agent's own user (who may have the agent read and write
/// files: backup, restore).
fn peer_is_root(stream: &UnixStream) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    stream
        .peer_cred()
        .is_ok_and(|c| c.uid() == 0 || c.uid() == me)
}

/// Who may talk to the agent: root, the agent's own user, and members of the socket's group
/// (primary or supplementary, as the kernel recorded them at connect). The socket's mode
/// already says so; this holds even if someone widens the mode.
fn peer_allowed(stream: &UnixStream, group: Option<u32>) -> bool {
    if peer_is_root(stream) {
        return true;
    }
    let Ok(cred) = stream.peer_cred() else {
        return false;
    };
    let Some(g) = group else {
        return false;
    };
    cred.gid() == g || peer_groups(stream).is_some_and(|groups| groups.contains(&g))
}

/// The peer's supplementary groups when it connected (`SO_PEERGROUPS`, Linux 4.13). Unlike
/// `/proc/PID/status`, this cannot be read off another process that got the peer's PID
/// after it exited (the socket may live on in a child).
fn peer_groups(stream: &UnixStream) -> Option<Vec<libc::gid_t>> {
    use std::os::fd::AsRawFd as _;
    const GID: usize = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = (groups.len() * GID) as libc::socklen_t;
        // SAFETY: a valid socket, and a buffer of `len` bytes that outlives the call.
        let r = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / GID;
        if r == 0 {
            groups.truncate(needed);
            return Some(groups);
        }
        // Too small: the kernel said how much it needs (at most NGROUPS_MAX, 65 536).
        let too_small = std::io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE);
        if !too_small || needed <= groups.len() || needed > 65_536 {
            return None;
        }
        groups.resize(needed, 0);
    }
}

/// A request read off a connection, made ready for the writer.
enum Incoming {
    /// For the writer.
    Request(Request),
    /// An import batch, parsed ahead while the writer applies the one before it, and whether
    /// it continues the import before it.
    Import(PreparedImport, bool),
    /// Answered without the writer (unreadable, not allowed).
    Refused(Response),
    /// Answered, then the connection ends (a request too long to frame).
    Last(Response),
}

/// One connection: requests are read and parsed one ahead of the writer (a client that sends
/// its next import batch before reading the last answer keeps both cores busy) and answered
/// in order.
async fn connection(
    stream: UnixStream,
    writer: Writer,
    reload: Option<mpsc::Sender<ReloadAsk>>,
    root: bool,
) -> std::io::Result<()> {
    let (read, write) = stream.into_split();
    // One parsed request waits while the writer works on another: a connection holds at most
    // three requests however far ahead the client writes (one being read, one queued, one
    // applied); a prepared import batch weighs more than its text (each line's request and
    // digest), and the request size (MAX_REQUEST) and line count (MAX_IMPORT_LINES) cap it.
    let (tx, rx) = mpsc::channel(1);
    tokio::try_join!(
        read_requests(read, root, tx),
        answer_requests(rx, writer, reload, write)
    )?;
    Ok(())
}

/// Reads and parses requests until the client hangs up, one ahead of [`answer_requests`].
async fn read_requests(
    read: OwnedReadHalf,
    root: bool,
    tx: mpsc::Sender<Incoming>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_REQUEST as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let incoming = if line.last() != Some(&b'\n') && n >= MAX_REQUEST {
            // Too long: answer and hang up, the rest of the stream is unframed.
            Incoming::Last(Response::err(format!(
                "request larger than {MAX_REQUEST} bytes"
            )))
        } else {
            parse(&mut line, root).await
        };
        let last = matches!(incoming, Incoming::Last(_));
        if tx.send(incoming).await.is_err() || last {
            return Ok(());
        }
    }
}

/// Why a continuing import batch is not applied.
const AFTER_FAILED_IMPORT: &str = "not applied: the import batch before it on this connection failed (the batches before that one stay applied); send the next import without \"continues\" to start a new one";

/// Hands requests to the writer in order and writes their answers.
async fn answer_requests(
    mut rx: mpsc::Receiver<Incoming>,
    writer: Writer,
    reload: Option<mpsc::Sender<ReloadAsk>>,
    mut write: OwnedWriteHalf,
) -> std::io::Result<()> {
    // A client that sent batches ahead must not have the ones behind a failed batch applied:
    // a continuing batch is skipped when the request before it failed (or was refused: it
    // may have been a batch). Any other request ends the import.
    let mut last_failed = false;
    while let Some(incoming) = rx.recv().await {
        let (response, last) = match incoming {
            Incoming::Import(_, true) if last_failed => (Response::err(AFTER_FAILED_IMPORT), false),
            Incoming::Import(batch, _) => {
                let r = writer.import(batch).await;
                last_failed = !r.ok;
                (r, false)
            }
            Incoming::Request(Request::Events) => {
                if writer.event_watchers() >= MAX_WATCHERS {
                    let busy = Response::err(format!(
                        "{MAX_WATCHERS} event streams are open already; close one first"
                    ));
                    write.write_all(&answer(&busy)).await?;
                    return Ok(());
                }
                let (events, _watching) = writer.watch_events();
                let ok = Response::ok(serde_json::json!({ "streaming": true }));
                write.write_all(&answer(&ok)).await?;
                return stream_events(events, rx, write).await;
            }
            Incoming::Request(Request::Reload) => {
                last_failed = false;
                (ask_reload(reload.as_ref()).await, false)
            }
            Incoming::Request(req) => {
                last_failed = false;
                (writer.control(req).await, false)
            }
            Incoming::Refused(r) => {
                last_failed = true;
                (r, false)
            }
            Incoming::Last(r) => (r, true),
        };
        write.write_all(&answer(&response)).await?;
        if last {
            break;
        }
    }
    Ok(())
}

/// Event streams open at once at most: each costs a copy and an encoding of every event.
const MAX_WATCHERS: usize = 8;

/// Writes every event, one JSON line each, until the client hangs up or sends anything.
/// A client that reads too slowly is told how many events it lost (it never makes the agent
/// buffer more than [`crate::events::BACKLOG`]).
async fn stream_events(
    mut events: tokio::sync::broadcast::Receiver<crate::events::Event>,
    mut rx: mpsc::Receiver<Incoming>,
    mut write: OwnedWriteHalf,
) -> std::io::Result<()> {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = tokio::select! {
            e = events.recv() => match e {
                Ok(e) => e,
                Err(RecvError::Lagged(n)) => crate::events::Event::Lost { events: n },
                Err(RecvError::Closed) => return Ok(()),
            },
            // EOF (or another request): the stream ends with the connection.
            _ = rx.recv() => return Ok(()),
        };
        let mut line = serde_json::to_vec(&event).map_err(std::io::Error::other)?;
        line.push(b'\n');
        write.write_all(&line).await?;
    }
}

/// A `reload` for the daemon, which owns what a reload touches besides the lists (the
/// checker, the ABS feed); it answers on the enclosed channel.
pub type ReloadAsk = tokio::sync::oneshot::Sender<Response>;

/// Hands a `reload` to the daemon and waits for its answer.
async fn ask_reload(reload: Option<&mpsc::Sender<ReloadAsk>>) -> Response {
    let Some(reload) = reload else {
        return Response::err("this agent does not reload its configuration");
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if reload.send(tx).await.is_err() {
        return Response::err("the agent is shutting down");
    }
    rx.await
        .unwrap_or_else(|_| Response::err("the agent is shutting down"))
}

/// Requests larger than this are parsed off the runtime's workers: a 250k-line import takes
/// ~100 ms to parse, and `status` must not wait behind it.
const PARSE_INLINE: usize = 64 << 10;

/// Parses one request line (taking a large one's buffer with it to a blocking thread); an
/// import batch's lines are parsed there too.
async fn parse(line: &mut Vec<u8>, root: bool) -> Incoming {
    let ready = move |bytes: &[u8]| match Request::decode(bytes) {
        Ok(req) if Request::needs_root(&req) && !root => Incoming::Refused(Response::err(
            "backup, restore, reload and events are for root: the agent reads and writes files as itself, and events show request paths",
        )),
        Ok(Request::Import {
            list,
            lines,
            defaults,
            continues,
        }) => match PreparedImport::new(list, lines, defaults) {
            Ok(batch) => Incoming::Import(batch, continues),
            Err(e) => Incoming::Refused(Response::err(e)),
        },
        Ok(req) => Incoming::Request(req),
        Err(e) => Incoming::Refused(Response::err(format!("invalid request: {e}"))),
    };
    if line.len() <= PARSE_INLINE {
        return ready(line);
    }
    let big = std::mem::take(line);
    tokio::task::spawn_blocking(move || ready(&big))
        .await
        .unwrap_or_else(|e| Incoming::Refused(Response::err(format!("parsing failed: {e}"))))
}

fn answer(r: &Response) -> Vec<u8> {
    let mut v = serde_json::to_vec(r).unwrap_or_else(|_| {
        format!(r#"{{"ok":false,"error":"unencodable answer","version":{PROTOCOL_VERSION}}}"#)
            .into_bytes()
    });
    v.push(b'\n');
    v
}
