//! The checker's access log: one JSON line per request, for ABS tooling or a SIEM (ASE feeds
//! ABS from its access logs; their format is not published, so this one is Portcullis's own,
//! documented in README). Secrets appear only as the short fingerprints of their digests.
//!
//! The request path never waits on the disk: a line goes into a bounded queue, and a line
//! that finds it full is dropped and counted (`access_log_dropped`). One thread writes the
//! queue out, flushing at least once a second, and rotates the file past `max_bytes`:
//! `access.log` → `access.log.1` → … → `access.log.<keep>`, the oldest removed.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::L7Stats;

/// Lines waiting for the writer at most.
const QUEUE: usize = 65_536;

/// One request, as logged.
#[derive(Debug, Default, Serialize)]
pub struct Record {
    /// Unix seconds, with milliseconds.
    pub ts: f64,
    /// The client's address (as the checker judged it).
    pub client: String,
    /// The API, or "" when none answers for the request.
    pub api: String,
    /// Method.
    pub method: String,
    /// The path as received (without the query), up to 1 KiB.
    pub path: String,
    /// Status answered.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// What happened: the L7 outcomes counted for this request, in order.
    pub outcomes: Vec<&'static str>,
    /// Fingerprints of the request's tokens, cookies and API keys (`sha256:1a2b3c4d…`), and
    /// its usernames, by kind.
    pub ids: std::collections::BTreeMap<&'static str, Vec<String>>,
}

/// A running access log.
pub struct AccessLog {
    tx: SyncSender<String>,
    stats: Arc<L7Stats>,
}

impl AccessLog {
    /// Opens (appends to) `path` and starts its writer thread.
    pub fn open(
        path: &Path,
        max_bytes: u64,
        keep: u32,
        stats: Arc<L7Stats>,
    ) -> std::io::Result<Arc<Self>> {
        let file = open(path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let writer = Writer {
            path: path.to_owned(),
            size: file.metadata()?.len(),
            out: BufWriter::with_capacity(64 << 10, file),
            max_bytes: max_bytes.max(4096),
            keep,
        };
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(&rx))?;
        Ok(Arc::new(Self { tx, stats }))
    }

    /// Queues `record`'s line; drops it (counted) when the writer is behind.
    pub fn record(&self, record: &Record) {
        let Ok(line) = serde_json::to_string(record) else {
            return;
        };
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.hit("access_log_dropped");
            }
        }
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

struct Writer {
    path: PathBuf,
    size: u64,
    out: BufWriter<File>,
    max_bytes: u64,
    keep: u32,
}

impl Writer {
    fn run(mut self, rx: &Receiver<String>) {
        let mut flushed = Instant::now();
        // Failures are said once a minute at most: a full disk must not flood the journal.
        let mut warned: Option<Instant> = None;
        loop {
            let got = rx.recv_timeout(Duration::from_secs(1));
            if let Ok(line) = &got
                && let Err(e) = self.write(line)
                && warned.is_none_or(|w| w.elapsed() >= Duration::from_secs(60))
            {
                warned = Some(Instant::now());
                tracing::warn!(path = %self.path.display(), "access log write failed (lines are lost until it works again): {e}");
            }
            if flushed.elapsed() >= Duration::from_secs(1) || got.is_err() {
                let _ = self.out.flush();
                flushed = Instant::now();
            }
            if matches!(got, Err(RecvTimeoutError::Disconnected)) {
                return;
            }
        }
    }

    fn write(&mut self, line: &str) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 + 1 > self.max_bytes {
            // A failed rotation goes on in the file as it is (counted from zero, so the
            // next try is a full file later): the numbered files are never shifted twice.
            let rotated = self.rotate();
            if rotated.is_err() {
                self.size = 0;
                if !self.path.exists() {
                    self.out = BufWriter::with_capacity(64 << 10, open(&self.path)?);
                }
            }
            rotated?;
        }
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.size += line.len() as u64 + 1;
        Ok(())
    }

    /// `access.log.<k>` → `.<k+1>` (the last removed), the file → `.1`, and a new file.
    /// The numbered files move only when the file itself can.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        let numbered = |k: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{k}"));
            PathBuf::from(p)
        };
        std::fs::metadata(&self.path)?;
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.keep));
            for k in (1..self.keep).rev() {
                let _ = std::fs::rename(numbered(k), numbered(k + 1));
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.out = BufWriter::with_capacity(64 << 10, open(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_written_and_rotated_keeping_the_newest() {
        let dir = std::env::temp_dir().join(format!("pc-access-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("access.log");
        let stats = Arc::new(L7Stats::default());
        let log = AccessLog::open(&path, 4096, 2, stats).expect("open");
        for i in 0..100 {
            log.record(&Record {
                status: 200,
                path: format!("/shop/{i}"),
                ..Record::default()
            });
        }
        drop(log);
        std::thread::sleep(Duration::from_millis(300));
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let newest = read(&path);
        assert!(
            newest
                .ends_with("\"/shop/99\",\"status\":200,\"bytes\":0,\"outcomes\":[],\"ids\":{}}\n"),
            "{newest}"
        );
        let one = PathBuf::from(format!("{}.1", path.display()));
        let two = PathBuf::from(format!("{}.2", path.display()));
        assert!(read(&one).len() > 3000 && read(&two).len() > 3000);
        assert!(!PathBuf::from(format!("{}.3", path.display())).exists());
        for line in newest.lines().chain(read(&one).lines()) {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            assert_eq!(v["status"], 200);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
