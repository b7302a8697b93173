//! The one list writer: a thread that alone writes the store (SQLite) and the kernel maps (the
//! checker only reads the kernel maps' twin, through a lock the writer takes per chunk).
//!
//! The control server, the checker's detections, the ABS feed and the daemon's timers send it
//! typed commands over bounded channels and await typed replies; nothing else holds the
//! agent's state, so no lock is held across I/O and no async worker blocks on SQLite or a
//! syscall. `status` never waits for it: it is read from the status board
//! ([`crate::service::Board`]) the writer updates before each answer, so it answers at once
//! even while a million-line import holds the writer. Other reads (`list`, `stats`, the
//! metrics' kernel counters, API definitions) have their own channel; each write is followed by at most the reads already queued, so neither
//! side can starve the other.
//! A command that panics is answered with an error, the kernel and the checker's lists are
//! brought back in line with the store, and the writer goes on; repeated panics, or a failed
//! recovery, stop the agent so that systemd restarts it and the start-up reconcile applies.
//! Every applied change is published on a broadcast stream ([`Writer::subscribe`]).
//!
//! At shutdown the daemon calls [`Writer::close`]: the queues close, the commands already
//! queued are applied until the deadline, and the rest are answered "stopped".

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::control::proto::AbsItem;
use crate::control::proto::{Request, Response};
use crate::infrastructure::Reading;
use crate::model::{Cidr, Entry};
pub use crate::service::Detection;
use std::sync::Arc;

use crate::service::{
    Added, Board, Change, FleetCommand, FleetReply, MirrorReport, PreparedImport, Removals,
    Service, ServiceError,
};
use portcullis_common::DropEvent;

mod reads;

pub use reads::MetricsData;
use reads::{Read, read, serve_waiting_reads};

/// An open event stream, counted until dropped.
pub struct Watching(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How many commands may wait for the writer before senders wait too (back-pressure).
const QUEUE: usize = 256;
/// This many panics within [`PANIC_WINDOW`] and the writer stops the agent (a restart
/// reconciles the kernel with the store from scratch).
const PANIC_LIMIT: usize = 5;
/// See [`PANIC_LIMIT`].
const PANIC_WINDOW: Duration = Duration::from_secs(60);

enum Write {
    Control(Request, oneshot::Sender<Response>),
    Import(PreparedImport, oneshot::Sender<Response>),
    Detect(Detection, oneshot::Sender<Result<Added, ServiceError>>),
    AbsMirror(
        Vec<AbsItem>,
        Removals,
        oneshot::Sender<Result<MirrorReport, ServiceError>>,
    ),
    Prune(oneshot::Sender<Result<Vec<Entry>, ServiceError>>),
    Protect(Reading, oneshot::Sender<()>),
    DrainEvents(oneshot::Sender<Vec<(DropEvent, Option<Cidr>)>>),
    CheckLinks(oneshot::Sender<Vec<String>>),
    Reconfigure(
        Box<crate::config::Config>,
        oneshot::Sender<Result<Vec<String>, ServiceError>>,
    ),
    SetAbs(Option<AbsLink>, oneshot::Sender<()>),
    SetFleet(
        Box<crate::fleet::FleetConfig>,
        Option<Arc<crate::fleet::Shared>>,
        oneshot::Sender<()>,
    ),
    Fleet(
        FleetCommand,
        oneshot::Sender<Result<FleetReply, ServiceError>>,
    ),
    #[cfg(test)]
    Panic(oneshot::Sender<Result<(), ServiceError>>),
}

/// A (re)connected ABS feed: its state for `status`, and where detections are reported.
pub type AbsLink = (
    Arc<std::sync::Mutex<crate::control::answer::AbsState>>,
    Box<dyn Fn(serde_json::Value) + Send>,
);

/// A handle on the list writer; cheap to clone. The writer stops when every handle is gone.
#[derive(Clone)]
pub struct Writer {
    writes: mpsc::Sender<Write>,
    reads: mpsc::Sender<Read>,
    changes: broadcast::Sender<Change>,
    /// The live event stream (`portcullis events`; see [`crate::events`]).
    events: broadcast::Sender<crate::events::Event>,
    /// Streams open now: one atomic load tells every checker request whether to trace.
    watchers: Arc<std::sync::atomic::AtomicUsize>,
    /// Set once, at shutdown: the deadline for the commands already queued.
    close: watch::Sender<Option<Instant>>,
    /// List sizes and fixed facts, kept by the writer, read without it.
    board: Arc<Board>,
    /// Whether the writer is making progress (for the watchdog).
    health: Arc<Health>,
}

/// The writer's heartbeat: commands finished, and whether one is in hand.
#[derive(Default)]
struct Health {
    done: std::sync::atomic::AtomicU64,
    busy: std::sync::atomic::AtomicBool,
}

impl Health {
    /// Runs one command, counted.
    fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        use std::sync::atomic::Ordering::Relaxed;
        self.busy.store(true, Relaxed);
        let r = f();
        self.done.fetch_add(1, Relaxed);
        self.busy.store(false, Relaxed);
        r
    }
}

/// The writer is gone (the agent is shutting down).
fn gone() -> ServiceError {
    ServiceError::Internal("the list writer has stopped".into())
}

impl Writer {
    /// Starts the writer thread with `service` (already reconciled with the kernel).
    pub fn spawn(mut service: Service) -> std::io::Result<(Self, std::thread::JoinHandle<()>)> {
        let (writes, write_rx) = mpsc::channel(QUEUE);
        let (reads, read_rx) = mpsc::channel(QUEUE);
        let (changes, _) = broadcast::channel(1024);
        let (events, _) = broadcast::channel(crate::events::BACKLOG);
        let (close, close_rx) = watch::channel(None);
        service.set_changes(changes.clone());
        let board = service.board();
        let health = Arc::new(Health::default());
        let beat = health.clone();
        let thread = std::thread::Builder::new()
            .name("list-writer".into())
            .spawn(move || run(service, write_rx, read_rx, close_rx, &beat))?;
        Ok((
            Self {
                writes,
                reads,
                changes,
                events,
                watchers: Arc::default(),
                close,
                board,
                health,
            },
            thread,
        ))
    }

    /// Stops taking commands; those already queued are applied until `deadline`, the rest
    /// are answered "stopped". The thread then ends.
    pub fn close(&self, deadline: Instant) {
        let _ = self.close.send(Some(deadline));
    }

    /// Whether the writer is idle or has finished a command since the last call (`last`
    /// holds the count between calls): the watchdog's test. A writer in one command for
    /// the whole interval fails it; a writer with a long queue it is working through does not.
    pub fn progressing(&self, last: &mut u64) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        // Busy first: a command that ends between the two reads then shows as progress.
        let busy = self.health.busy.load(Relaxed);
        let done = self.health.done.load(Relaxed);
        let ok = !busy || done != *last;
        *last = done;
        ok
    }

    /// The event stream's sender, when someone watches it (nothing is built otherwise).
    pub fn events_if_watched(&self) -> Option<broadcast::Sender<crate::events::Event>> {
        (self.event_watchers() > 0).then(|| self.events.clone())
    }

    /// Event streams open now.
    pub fn event_watchers(&self) -> usize {
        self.watchers.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every event from now on (`portcullis events`), while the [`Watching`] guard lives.
    pub fn watch_events(&self) -> (broadcast::Receiver<crate::events::Event>, Watching) {
        self.watchers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (self.events.subscribe(), Watching(self.watchers.clone()))
    }

    /// Every change applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    async fn write<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Write,
    ) -> Result<T, ServiceError> {
        let (tx, rx) = oneshot::channel();
        self.writes.send(make(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    /// Answers one control request (`status` from the board, other reads on their queue).
    pub async fn control(&self, req: Request) -> Response {
        if matches!(req, Request::Status) {
            return Response::ok(self.board.status());
        }
        if let Request::Import {
            list,
            lines,
            defaults,
            ..
        } = req
        {
            // The control server prepares batches itself, off the runtime's workers.
            return match PreparedImport::new(list, lines, defaults) {
                Ok(batch) => self.import(batch).await,
                Err(e) => Response::err(e),
            };
        }
        let (tx, rx) = oneshot::channel();
        let sent = if req.is_read() {
            self.reads.send(Read::Control(req, tx)).await.is_ok()
        } else {
            self.writes.send(Write::Control(req, tx)).await.is_ok()
        };
        if !sent {
            return Response::err(gone());
        }
        rx.await.unwrap_or_else(|_| Response::err(gone()))
    }

    /// Applies an import batch parsed ahead ([`PreparedImport`]); answers like
    /// [`Request::Import`].
    pub async fn import(&self, batch: PreparedImport) -> Response {
        self.write(|tx| Write::Import(batch, tx))
            .await
            .unwrap_or_else(Response::err)
    }

    /// Deny-lists a detection's culprit.
    pub async fn detect(&self, d: Detection) -> Result<Added, ServiceError> {
        self.write(|tx| Write::Detect(d, tx)).await?
    }

    /// Makes the `abs` rows of the deny list `items`, removing what `removals` allows.
    pub async fn abs_mirror(
        &self,
        items: Vec<AbsItem>,
        removals: Removals,
    ) -> Result<MirrorReport, ServiceError> {
        self.write(|tx| Write::AbsMirror(items, removals, tx))
            .await?
    }

    /// Removes expired entries; returns them.
    pub async fn prune(&self) -> Result<Vec<Entry>, ServiceError> {
        self.write(Write::Prune).await?
    }

    /// Hands over a new reading of the addresses the safety rules protect.
    pub async fn protect(&self, reading: Reading) {
        let _ = self.write(|tx| Write::Protect(reading, tx)).await;
    }

    /// The sampled drop events the kernel logged since the last call, each with the deny
    /// entry that covers its source.
    pub async fn drain_events(&self) -> Vec<(DropEvent, Option<Cidr>)> {
        self.write(Write::DrainEvents).await.unwrap_or_default()
    }

    /// Notices interfaces whose filter was detached outside the agent; returns their names.
    pub async fn check_links(&self) -> Vec<String> {
        self.write(Write::CheckLinks).await.unwrap_or_default()
    }

    /// Applies a reloaded configuration's live keys (see [`Service::reconfigure`]).
    pub async fn reconfigure(
        &self,
        config: crate::config::Config,
    ) -> Result<Vec<String>, ServiceError> {
        self.write(|tx| Write::Reconfigure(Box::new(config), tx))
            .await?
    }

    /// Connects the service to a (new) ABS feed, or disconnects it.
    pub async fn set_abs(&self, link: Option<AbsLink>) {
        let _ = self.write(|tx| Write::SetAbs(link, tx)).await;
    }

    /// Gives the service a reload's `[fleet]` and the new engine's state (none: fleet off).
    pub async fn set_fleet(
        &self,
        config: crate::fleet::FleetConfig,
        shared: Option<Arc<crate::fleet::Shared>>,
    ) {
        let _ = self
            .write(|tx| Write::SetFleet(Box::new(config), shared, tx))
            .await;
    }

    /// Runs a fleet engine command (see [`crate::fleet`]).
    pub async fn fleet(&self, cmd: FleetCommand) -> Result<FleetReply, ServiceError> {
        self.write(|tx| Write::Fleet(cmd, tx)).await?
    }

    /// Counters and list sizes for the metrics endpoint.
    pub async fn metrics(&self) -> Option<MetricsData> {
        let (tx, rx) = oneshot::channel();
        self.reads.send(Read::Metrics(tx)).await.ok()?;
        rx.await.ok()
    }

    #[cfg(test)]
    async fn panic(&self) -> Result<(), ServiceError> {
        self.write(Write::Panic).await?
    }
}

/// Runs `f`; a panic becomes `on_panic(message)`.
fn guarded<T>(f: impl FnOnce() -> T, on_panic: impl FnOnce(String) -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(ToString::to_string)
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            on_panic(msg)
        }
    }
}

fn run(
    mut service: Service,
    mut writes: mpsc::Receiver<Write>,
    mut reads: mpsc::Receiver<Read>,
    mut close: watch::Receiver<Option<Instant>>,
    health: &Health,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("the list writer could not start: {e}");
            return;
        }
    };
    let mut panics = Panics::default();
    rt.block_on(async move {
        let deadline = loop {
            tokio::select! {
                Some(r) = reads.recv() => health.run(|| read(&service, r)),
                w = writes.recv() => match w {
                    Some(w) => {
                        health.run(|| write(&mut service, w, &mut panics));
                        health.run(|| serve_waiting_reads(&service, &mut reads));
                    }
                    None => return,
                },
                changed = close.changed() => match (changed, *close.borrow()) {
                    (Ok(()), Some(deadline)) => break deadline,
                    (Ok(()), None) => {}
                    (Err(_), _) => break Instant::now(),
                },
            }
        };
        // Shutdown: apply what is already queued while time remains; dropping the rest
        // answers their callers "stopped".
        writes.close();
        reads.close();
        while Instant::now() < deadline {
            match writes.try_recv() {
                Ok(w) => write(&mut service, w, &mut panics),
                Err(_) => break,
            }
        }
    });
    // A writer that is gone (or never ran) makes no progress: the watchdog stops petting.
    health
        .busy
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::debug!("list writer stopped");
}

/// Recent panics, to tell a bug hit once from a writer that can no longer make progress.
#[derive(Default)]
struct Panics(Vec<Instant>);

impl Panics {
    /// Records one; stops the agent when there were too many lately.
    fn record(&mut self) {
        let now = Instant::now();
        self.0.retain(|t| now.duration_since(*t) < PANIC_WINDOW);
        self.0.push(now);
        if self.0.len() >= PANIC_LIMIT {
            tracing::error!(
                "{PANIC_LIMIT} list commands panicked within {PANIC_WINDOW:?}; stopping the agent so that it restarts from the store (XDP enforcement stays in place)"
            );
            std::process::exit(70);
        }
    }
}

fn write(service: &mut Service, w: Write, panics: &mut Panics) {
    let mut panicked = false;
    let bulk = is_bulk(&w);
    // Replies go out after the board and (after a panic) the lists are up to date, so a
    // `status` sent after an answer sees the change.
    let reply = execute(service, w, &mut |m: String| {
        tracing::error!("a list command panicked: {m}; recovering from the store");
        panicked = true;
        ServiceError::Internal(
            "the command failed inside the agent (logged); the lists were re-read from the store"
                .into(),
        )
    });
    if panicked {
        if let Err(e) = guarded(|| service.recover(), |m| Err(ServiceError::Internal(m))) {
            // The kernel or the checker's lists may now differ from the store: a restart
            // reconciles them from scratch.
            tracing::error!("recovering after a panic failed: {e}; stopping the agent");
            std::process::exit(70);
        }
        panics.record();
    }
    service.refresh_board();
    reply();
    if bulk {
        trim();
    }
}

/// Whether a write moves many rows (its buffers are handed back to the OS afterwards).
fn is_bulk(w: &Write) -> bool {
    matches!(
        w,
        Write::Control(
            Request::Clear { .. } | Request::AbsPush { .. } | Request::Restore { .. },
            _
        ) | Write::Import(..)
            | Write::AbsMirror(..)
            | Write::Fleet(FleetCommand::Swap { .. }, _)
    )
}

/// Runs one write command, a panic turned into an error by `on_panic`; returns the reply,
/// to be sent once the board is up to date.
fn execute(
    service: &mut Service,
    w: Write,
    on_panic: &mut dyn FnMut(String) -> ServiceError,
) -> Box<dyn FnOnce()> {
    match w {
        Write::Control(req, tx) => {
            let resp = guarded(|| service.handle(req), |m| Response::err(on_panic(m)));
            Box::new(move || drop(tx.send(resp)))
        }
        Write::Import(batch, tx) => {
            let resp = guarded(
                || {
                    service
                        .import(batch)
                        .map_or_else(Response::err, Response::ok)
                },
                |m| Response::err(on_panic(m)),
            );
            Box::new(move || drop(tx.send(resp)))
        }
        Write::Detect(d, tx) => {
            let r = guarded(|| service.detect(&d), |m| Err(on_panic(m)));
            Box::new(move || drop(tx.send(r)))
        }
        Write::AbsMirror(items, removals, tx) => {
            let r = guarded(|| service.abs_mirror(items, removals), |m| Err(on_panic(m)));
            Box::new(move || drop(tx.send(r)))
        }
        Write::Prune(tx) => {
            let r = guarded(|| service.prune(), |m| Err(on_panic(m)));
            Box::new(move || drop(tx.send(r)))
        }
        Write::Protect(reading, tx) => {
            guarded(|| service.protect(reading), |m| drop(on_panic(m)));
            Box::new(move || {
                let _ = tx.send(());
            })
        }
        Write::DrainEvents(tx) => {
            let events = guarded(
                || service.drain_drops(),
                |m| {
                    on_panic(m);
                    Vec::new()
                },
            );
            Box::new(move || drop(tx.send(events)))
        }
        Write::CheckLinks(tx) => {
            let gone = guarded(
                || service.check_links(),
                |m| {
                    on_panic(m);
                    Vec::new()
                },
            );
            Box::new(move || drop(tx.send(gone)))
        }
        Write::Reconfigure(config, tx) => {
            let r = guarded(|| service.reconfigure(&config), |m| Err(on_panic(m)));
            Box::new(move || drop(tx.send(r)))
        }
        Write::SetAbs(link, tx) => {
            match link {
                Some((state, report)) => service.set_abs(state, report),
                None => service.clear_abs(),
            }
            Box::new(move || {
                let _ = tx.send(());
            })
        }
        Write::SetFleet(config, shared, tx) => {
            service.switch_fleet(&config, shared);
            Box::new(move || {
                let _ = tx.send(());
            })
        }
        Write::Fleet(cmd, tx) => {
            let r = guarded(|| service.fleet(cmd), |m| Err(on_panic(m)));
            Box::new(move || drop(tx.send(r)))
        }
        #[cfg(test)]
        Write::Panic(tx) => {
            let r = guarded(
                || panic!("a command that panics (test)"),
                |m| Err(on_panic(m)),
            );
            Box::new(move || drop(tx.send(r)))
        }
    }
}

/// Hands a batch's buffers back to the OS: a long-running agent should not keep its import
/// high-water mark as RSS.
fn trim() {
    // SAFETY: glibc's malloc_trim has no preconditions.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0)
    };
}

#[cfg(test)]
mod tests;
