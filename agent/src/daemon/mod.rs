//! `portcullis agent`: load and attach the filter, reconcile the kernel with the store, start
//! the list writer, serve the control API, metrics and the L7 checker, prune expired entries,
//! log sampled drops, and on SIGTERM drain and leave enforcement in place (the link and maps
//! stay pinned).
//!
//! One shutdown path: stop accepting, give connections and queued list commands
//! `shutdown_grace` to finish, join the workers, then let the writer finish what it holds.

mod checker;
mod drop_log;
mod notify;
mod reload;
mod setup;

pub use reload::ConfigSource;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::activation::Passed;
use crate::config::{Config, parse_duration};
use crate::infrastructure;
use crate::metrics::{self, AgentMetrics};
use crate::service::Service;
use crate::writer::Writer;

/// Runs the agent until SIGTERM or SIGINT; SIGHUP and `portcullis reload` read the
/// configuration again from `source`.
pub fn run(config: Config, source: ConfigSource) -> anyhow::Result<()> {
    // SAFETY: the runtime is not built yet; nothing before it started a thread.
    let (passed, warnings) = unsafe { Passed::from_env() };
    for w in warnings {
        tracing::warn!("socket activation: {w}");
    }
    setup::tune_allocator();
    // One worker per core: the L7 checker is the hot path when it runs.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("portcullis")
        .build()
        .context("starting the runtime")?;
    let result = rt.block_on(run_async(config, passed, source));
    // Whatever is still running (a worker stuck past the grace) must not hold the exit.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn run_async(config: Config, mut passed: Passed, source: ConfigSource) -> anyhow::Result<()> {
    let notify = Arc::new(notify::Notify::from_env());
    notify.status("starting: loading the XDP filter");
    setup::raise_limits();
    // Before anything is opened or attached: the socket unit and the configuration agree.
    passed.check(&[
        ("checker.https", &config.checker.https),
        ("checker.http", &config.checker.http),
        ("metrics", &config.metrics),
    ])?;
    // Before any listener exists: a second agent started by mistake must not share the
    // checker's ports (SO_REUSEPORT) with the running one, even for a moment.
    crate::control::server::ensure_no_agent(&config.socket)?;
    // The lock first: opening the store may migrate it, which one agent alone must do.
    let _lock = setup::lock_state(&config)?;
    let store = setup::open_store(&config)?;
    let filter = setup::load_filter(&config)?;
    let mut service =
        Service::new(config.clone(), store, Some(filter)).context("loading the lists")?;
    let agent_metrics = Arc::new(AgentMetrics::default());
    notify.status("starting: making the kernel maps equal to the store, then attaching");
    setup::reconcile_and_attach(&mut service, &config, &agent_metrics)?;
    // Until the agent is ready, a failure takes the filter off the interfaces it put it on.
    let mut undo = setup::UndoAttach {
        pin_dir: config.pin_dir.clone(),
        ifaces: service.fresh_interfaces(),
    };
    let checker = checker::Prepared::new(&mut service, &config)?;
    let abs = setup::abs_feed(&mut service, &config)?;
    if config.fleet.enabled()
        && let Err(e) = crate::fleet::check(&config.fleet)
    {
        // Enforcement must not wait for a secret that appears later (a mount, a template):
        // the fleet shows `unreachable` until it reads.
        tracing::error!("fleet: {e}; local enforcement goes on, the fleet link retries");
    }
    let fleet = config.fleet.enabled().then(|| {
        let shared = crate::fleet::shared(&config.fleet);
        service.set_fleet(shared.clone());
        shared
    });
    let lists = service.lists();
    let board = service.board();
    let (writer, writer_thread) = Writer::spawn(service).context("starting the list writer")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    // The control socket comes last: once it answers, every listener is bound.
    let checker = checker
        .map(|c| c.start(lists, &writer, &config, &mut passed, &stop_rx, &board))
        .transpose()?;
    let rest = serve_rest(&config, &writer, &board, &mut passed, &stop_rx).await?;
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
    let mut tasks = serve_control_and_metrics(
        &config,
        &writer,
        &agent_metrics,
        &mut passed,
        reload_tx,
        &stop_rx,
    )
    .await?;
    tasks.extend(rest);
    debug_assert!(passed.unused().is_empty(), "checked at the start");
    if abs.is_some() {
        tracing::info!(url = %config.abs.url, poll = %config.abs.poll, "ABS feed on");
    }
    let abs = reload::AbsTask::start(abs, &writer);
    let fleet = reload::FleetTask::start(&config.fleet, fleet, &writer);
    tracing::info!(socket = %config.socket.display(), metrics = %config.metrics, "agent ready");
    notify.send("READY=1");
    notify.status(&ready_status(&config, &board));
    undo.ifaces.clear();

    let reloads = reload::Reloads::new(
        reload::Reloader::new(source, config.clone()),
        abs,
        fleet,
        writer.clone(),
        checker.as_ref().map(checker::Running::files),
        notify.clone(),
    );
    let running = Running {
        writer: &writer,
        checker: checker.as_ref(),
        agent_metrics: &agent_metrics,
        notify: &notify,
        reloads: &reloads,
    };
    run_until_signal(running, reload_rx).await?;

    notify.send("STOPPING=1");
    notify.status("stopping: draining connections; XDP enforcement stays in place");
    tracing::info!(
        "shutting down; XDP enforcement stays in place (use `portcullis detach` to remove it)"
    );
    let grace = Duration::from_secs(parse_duration(&config.shutdown_grace).unwrap_or(5));
    let deadline = Instant::now() + grace;
    let _ = stop_tx.send(true);
    reloads.stop(grace / 2).await;
    // Commands already queued are applied until the deadline; new ones are refused.
    writer.close(deadline);
    let drain = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!("some connections did not finish within {grace:?}");
    }
    let mut threads = checker
        .map(checker::Running::into_threads)
        .unwrap_or_default();
    drop(writer);
    threads.push(writer_thread);
    join_threads(threads, deadline).await;
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}

/// The `STATUS=` line of a running agent: where it enforces and what it holds.
fn ready_status(config: &Config, board: &crate::service::Board) -> String {
    let mode = match config.mode {
        crate::config::Mode::Enforce => "enforcing",
        crate::config::Mode::Monitor => "monitoring (nothing dropped)",
    };
    let ifaces = if config.interfaces.is_empty() {
        "no interface".to_string()
    } else {
        config.interfaces.join(", ")
    };
    let count = |list| {
        board
            .status()
            .lists
            .iter()
            .filter(|c| c.list == list)
            .map(|c| c.count)
            .sum::<u64>()
    };
    format!(
        "{mode} on {ifaces}; {} deny and {} allow entries",
        count(crate::model::List::Deny),
        count(crate::model::List::Allow)
    )
}

/// Binds and serves the control socket and, when configured, the metrics endpoint (on the
/// socket the service manager passed for its address, if it did).
async fn serve_control_and_metrics(
    config: &Config,
    writer: &Writer,
    agent_metrics: &Arc<AgentMetrics>,
    passed: &mut Passed,
    reload: tokio::sync::mpsc::Sender<crate::control::server::ReloadAsk>,
    stop_rx: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let control = crate::control::server::bind(&config.socket, config.socket_group.as_deref())?;
    let group = config
        .socket_group
        .as_deref()
        .and_then(crate::control::server::group_id);
    let mut tasks = vec![tokio::spawn(crate::control::server::serve(
        control,
        writer.clone(),
        group,
        Some(reload),
        stop_rx.clone(),
    ))];
    if !config.metrics.is_empty() {
        let listener = match passed.take("metrics", &config.metrics)? {
            Some(l) => {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)?
            }
            None => tokio::net::TcpListener::bind(&config.metrics)
                .await
                .with_context(|| format!("binding metrics on {}", config.metrics))?,
        };
        tasks.push(tokio::spawn(metrics::serve(
            listener,
            writer.clone(),
            agent_metrics.clone(),
            stop_rx.clone(),
        )));
    }
    Ok(tasks)
}

/// Binds and serves the management REST API when `rest.https` is set, with the checker's
/// certificates.
async fn serve_rest(
    config: &Config,
    writer: &Writer,
    board: &crate::service::Board,
    passed: &mut Passed,
    stop_rx: &watch::Receiver<bool>,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    let addr = &config.rest.https;
    if addr.is_empty() {
        return Ok(None);
    }
    let tls = Arc::new(
        crate::checker::tls::Tls::load(config.checker.tls_pairs())
            .context("loading the REST API's TLS certificate (checker.tls_cert)")?,
    );
    let listener = match passed.take("rest.https", addr)? {
        Some(l) => {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)?
        }
        None => tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the REST API on {addr}"))?,
    };
    if !board.credentials().secret_set() {
        tracing::warn!(
            "REST API on {addr} refuses every request until a secret key is set: `portcullis rest password`"
        );
    }
    let rest = crate::rest::Rest::new(
        writer.clone(),
        board.credentials().clone(),
        config.rest.clone(),
    );
    tracing::info!(%addr, "REST API listening");
    Ok(Some(tokio::spawn(rest.serve(
        listener,
        tls,
        stop_rx.clone(),
    ))))
}

/// What the signal loop works with.
struct Running<'a> {
    writer: &'a Writer,
    checker: Option<&'a checker::Running>,
    agent_metrics: &'a Arc<AgentMetrics>,
    notify: &'a notify::Notify,
    reloads: &'a reload::Reloads,
}

/// The agent's timers and signals, until SIGTERM or SIGINT.
async fn run_until_signal(
    run: Running<'_>,
    mut asked: tokio::sync::mpsc::Receiver<crate::control::server::ReloadAsk>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let Running {
        writer,
        checker,
        agent_metrics,
        notify,
        reloads,
    } = run;
    let config = reloads.current().clone();
    let config = &config;
    // Without `WatchdogSec=` the tick never fires.
    let watchdog_every = notify.watchdog_every();
    let mut watchdog_tick = tokio::time::interval(watchdog_every.unwrap_or(Duration::MAX / 4));
    watchdog_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut writer_done = u64::MAX;
    let prune_every =
        Duration::from_secs(parse_duration(&config.prune_interval).map_err(anyhow::Error::msg)?);
    let mut prune_tick = tokio::time::interval(prune_every);
    let mut events_tick = tokio::time::interval(Duration::from_secs(1));
    let mut tls_tick = tokio::time::interval(Duration::from_secs(5));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    // One at a time each: a tick while the last one still runs is skipped.
    let mut pruning: Option<JoinHandle<()>> = None;
    let mut logging: Option<JoinHandle<()>> = None;
    let mut reading: Option<JoinHandle<()>> = None;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                reloads.start(None);
            }
            Some(answer) = asked.recv() => {
                tracing::info!("`portcullis reload`: reloading the configuration");
                reloads.start(Some(answer));
            }
            _ = tls_tick.tick() => {
                if let Some(c) = checker {
                    c.reload_tls_if_changed();
                }
            }
            // These run beside the loop (a long import must not hold the signals back), one
            // at a time each.
            _ = prune_tick.tick() => {
                if pruning.as_ref().is_none_or(JoinHandle::is_finished) {
                    pruning = Some(tokio::spawn(prune(writer.clone(), agent_metrics.clone())));
                }
                // Apart from pruning: a DNS outage may hold a reading for a while.
                if reading.as_ref().is_none_or(JoinHandle::is_finished) {
                    let servers = checker.map(checker::Running::server_hosts).unwrap_or_default();
                    let (abs_url, redis) = {
                        let now = reloads.current();
                        (now.abs.url.clone(), now.fleet.redis_host())
                    };
                    let names = infrastructure::names(
                        &abs_url,
                        servers.iter().map(String::as_str).chain(redis.as_deref()),
                    );
                    reading = Some(tokio::spawn(read_host(writer.clone(), names)));
                }
            },
            // Petted while the list writer is idle or finishing commands: one wedged in a
            // command gets the agent restarted (from the store) instead of silently ignoring
            // list changes; a long queue it works through does not.
            _ = watchdog_tick.tick(), if watchdog_every.is_some() => {
                if writer.progressing(&mut writer_done) {
                    notify.send("WATCHDOG=1");
                } else {
                    tracing::warn!("the list writer has been in one command for a watchdog interval");
                }
            }
            _ = events_tick.tick() => if logging.as_ref().is_none_or(JoinHandle::is_finished) {
                let every = reloads.current().drop_sample_every;
                logging = Some(tokio::spawn(watch_kernel(writer.clone(), every)));
            },
        }
    }
}

/// Reads again what the safety rules protect (the host's addresses change: DHCP, a new
/// resolver, DNS answers) and hands it to the writer.
async fn read_host(writer: Writer, names: Vec<String>) {
    // Name lookups block: off the async workers, and off the writer.
    if let Ok(reading) = tokio::task::spawn_blocking(move || infrastructure::read(&names)).await {
        writer.protect(reading).await;
    }
}

/// Removes expired entries (through the writer) and counts them.
async fn prune(writer: Writer, agent_metrics: Arc<AgentMetrics>) {
    match writer.prune().await {
        Ok(gone) => {
            agent_metrics
                .expired
                .fetch_add(gone.len() as u64, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!("pruning expired entries failed: {e}"),
    }
}

/// Logs the kernel's sampled drop events (see [`drop_log`]) and hands them to whoever
/// watches the event stream, and notices a filter detached outside the agent (the detach
/// itself logs it and shows in `status`).
async fn watch_kernel(writer: Writer, sample_every: u32) {
    writer.check_links().await;
    let stream = writer.events_if_watched();
    let drained = writer.drain_events().await;
    if let Some(stream) = stream {
        // One name lookup per interface and second, not per sample.
        let mut names = std::collections::HashMap::new();
        for (e, matched) in &drained {
            let iface = names
                .entry(e.ifindex)
                .or_insert_with(|| crate::events::iface_name(e.ifindex))
                .clone();
            let _ = stream.send(crate::events::drop_event(
                e,
                iface,
                matched.as_ref(),
                sample_every,
            ));
        }
    }
    let events: Vec<_> = drained.into_iter().map(|(e, _)| e).collect();
    drop_log::log(&events, sample_every);
}

/// Joins worker threads until `deadline`; threads still busy then are left to the exit.
async fn join_threads(threads: Vec<std::thread::JoinHandle<()>>, deadline: Instant) {
    let join = tokio::task::spawn_blocking(move || {
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    });
    let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
    if tokio::time::timeout(left, join).await.is_err() {
        tracing::warn!("some workers did not finish in time; exiting anyway");
    }
}
