//! Checkpoints on their own thread: copying the WAL back into the database file (and its
//! fsync) took ~15% of the list writer's time during bulk imports. A second connection does
//! it beside the writer, which then only appends to the WAL and commits.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// How often the checkpointer looks for committed frames to copy back.
const EVERY: Duration = Duration::from_millis(50);

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
        let (stop, stopped) = mpsc::channel::<()>();
        let conn = match Connection::open(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("no checkpoint thread ({e}); the list writer checkpoints itself");
                return Self {
                    stop: None,
                    thread: None,
                };
            }
        };
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || {
                let _ = conn.busy_timeout(Duration::from_secs(5));
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(EVERY) {
                    // PASSIVE: copies what no one needs from the WAL, never waits for the writer.
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::debug!("checkpoint: {e}");
                    }
                }
            })
            .map_err(|e| {
                tracing::warn!("no checkpoint thread ({e}); the list writer checkpoints itself")
            })
            .ok();
        Self {
            stop: Some(stop),
            thread,
        }
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
