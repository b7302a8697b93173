//! Checkpoints on their own thread: copying the WAL back into the database file (and its
//! fsync) took ~15% of the list writer's time during bulk imports. A second connection does
//! it beside the writer, which then only appends to the WAL and commits.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// How often the checkpointer looks while the WAL keeps growing.
const BUSY: Duration = Duration::from_millis(50);

/// How often it looks once the WAL stopped changing (the database is idle).
const IDLE: Duration = Duration::from_secs(1);

/// WAL size (pages) past which the writer checkpoints itself, should this thread fall behind
/// or be gone: a backstop, not the usual path.
pub(super) const WRITER_BACKSTOP_PAGES: i64 = 65_536;

/// The checkpointer thread; dropping this stops it.
pub(super) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path` (already open in WAL mode). Without a
    /// thread (it could not start), the writer's own backstop checkpoints remain.
    pub(super) fn start(path: &Path) -> Self {
        let none = |e: &dyn std::fmt::Display| {
            tracing::warn!("no checkpoint thread ({e}); the list writer checkpoints itself");
            Self {
                stop: None,
                thread: None,
            }
        };
        let conn = match Connection::open(path) {
            Ok(c) => c,
            Err(e) => return none(&e),
        };
        // A checkpoint syncs the database file before the WAL may be reused.
        if let Err(e) = conn.pragma_update(None, "synchronous", "FULL") {
            return none(&e);
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || run(&conn, &stopped));
        match spawned {
            Ok(thread) => Self {
                stop: Some(stop),
                thread: Some(thread),
            },
            Err(e) => none(&e),
        }
    }
}

/// Checkpoints until told to stop: PASSIVE (copies what no reader needs, never waits for the
/// writer); often while the WAL grows, so a copy-back lands in the writer's gap between two
/// import batches and the WAL restarts; once a second after a pass that found it unchanged.
fn run(conn: &Connection, stopped: &mpsc::Receiver<()>) {
    let (mut wait, mut last) = (BUSY, -1);
    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
        // (busy, frames in the WAL, frames copied back)
        let frames = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
        wait = match frames {
            Ok(n) if n != last => {
                last = n;
                BUSY
            }
            Ok(_) => IDLE,
            Err(e) => {
                tracing::debug!("checkpoint: {e}");
                IDLE
            }
        };
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
