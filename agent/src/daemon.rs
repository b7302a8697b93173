//! `portcullis agent`: load and attach the filter, reconcile the kernel with the store, serve
//! the control API and metrics, prune expired entries, log sampled drops, and on SIGTERM
//! leave enforcement in place (the link and maps stay pinned).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::watch;

use crate::config::{Config, Mode, XdpMode, parse_duration};
use crate::kernel::{self, AttachMode, Filter, LoadOptions};
use crate::metrics::{self, AgentMetrics};
use crate::service::Service;
use crate::store::Store;

/// Raises RLIMIT_MEMLOCK for kernels that still charge BPF maps to it (harmless elsewhere),
/// and the soft RLIMIT_NOFILE to its hard limit (the checker holds a descriptor per
/// connection; 1024 would let a few idle clients starve it).
fn raise_limits() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to an initialised rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
    let mut files = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer; then a valid pointer to the limit read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut files) == 0 && files.rlim_cur < files.rlim_max
        {
            files.rlim_cur = files.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &files);
        }
    }
}

/// Tells systemd (`Type=notify`) that the agent is ready, if it is watching.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec();
    let res = if bytes.first() == Some(&b'@') {
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])
            .and_then(|a| sock.send_to_addr(b"READY=1", &a))
    } else {
        sock.send_to(b"READY=1", &path)
    };
    if let Err(e) = res {
        tracing::warn!("sd_notify READY failed: {e}");
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(config: Config) -> anyhow::Result<()> {
    // One worker per core: the L7 checker is the hot path when it runs.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("portcullis")
        .build()
        .context("starting the runtime")?;
    rt.block_on(run_async(config))
}

async fn run_async(config: Config) -> anyhow::Result<()> {
    raise_limits();
    // Everything the agent creates is private by default: the database (digests of secrets,
    // the lists), its WAL, and the control socket from the moment it exists (bind then
    // widens it to 0660 for the group, never the other way round).
    // SAFETY: umask(2) has no preconditions.
    unsafe { libc::umask(0o077) };
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state directory {}", config.state_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", config.state_dir.display()))?;
    }
    let store = Store::open(&config.db_path())
        .with_context(|| format!("opening {}", config.db_path().display()))?;
    for suffix in ["", "-wal", "-shm"] {
        use std::os::unix::fs::PermissionsExt as _;
        let mut p = config.db_path().into_os_string();
        p.push(suffix);
        // Databases written by older versions may be world-readable.
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
    }
    kernel::ensure_bpffs().context("mounting bpffs")?;
    let filter = Filter::load(&LoadOptions {
        pin_dir: Some(config.pin_dir.clone()),
        capacity: config.capacity.into(),
        ..LoadOptions::default()
    })
    .context("loading the XDP filter")?;
    let mode = match config.mode {
        Mode::Enforce => portcullis_common::mode::ENFORCE,
        Mode::Monitor => portcullis_common::mode::MONITOR,
    };
    let cfg = portcullis_common::Config {
        mode,
        sample_mask: config.drop_sample_every - 1,
        ..filter.config()?
    };
    filter.set_config(cfg)?;
    let mut service =
        Service::new(config.clone(), store, Some(filter)).context("loading the lists")?;

    // The store is the list of record: make the (possibly reused) pinned maps equal to it
    // before the program is (re)attached, so enforcement never regresses.
    let t = Instant::now();
    let (written, removed) = service
        .reconcile()
        .context("reconciling kernel maps with the store")?;
    let agent_metrics = Arc::new(AgentMetrics::default());
    agent_metrics
        .reconcile_micros
        .store(t.elapsed().as_micros() as u64, Ordering::Relaxed);
    tracing::info!(written, removed, elapsed = ?t.elapsed(), "kernel maps reconciled with the store");
    let pruned = service.prune()?;
    agent_metrics
        .expired
        .fetch_add(pruned.len() as u64, Ordering::Relaxed);

    let mut attached = Vec::new();
    if let Some(filter) = service.filter_mut() {
        for iface in &config.interfaces {
            let mode = match config.xdp_mode {
                XdpMode::Native => AttachMode::Native,
                XdpMode::Generic => AttachMode::Generic,
            };
            let a = filter
                .attach(iface, mode)
                .with_context(|| format!("attaching XDP to {iface}"))?;
            if let Some(reason) = &a.fell_back {
                tracing::warn!(
                    iface,
                    "native XDP refused ({reason}); attached in generic mode, which is slower"
                );
            }
            tracing::info!(iface, mode = ?a.mode, reused_pinned_link = a.reused_link, "XDP filter attached");
            attached.push(a);
        }
    }
    service.set_attached(attached);

    // The L7 checker, when a listener is configured.
    let checker_parts = if config.checker.enabled() {
        let registry = Arc::new(crate::checker::ApiRegistry::load(
            config.checker.api_dir.clone(),
        ));
        let stats = Arc::new(crate::checker::L7Stats::default());
        service.set_checker(registry.clone(), stats.clone());
        let tls = if config.checker.https.is_empty() {
            None
        } else {
            Some(Arc::new(
                crate::checker::tls::Tls::load(&config.checker.tls_cert, &config.checker.tls_key)
                    .context("loading the checker's TLS certificate")?,
            ))
        };
        Some((registry, stats, tls))
    } else {
        None
    };
    let abs = if config.abs.url.is_empty() {
        None
    } else {
        let state = Arc::new(Mutex::new(crate::abs::AbsState::default()));
        let abs =
            crate::abs::Abs::new(config.abs.clone(), state).context("setting up the ABS feed")?;
        service.set_abs(abs.clone());
        Some(abs)
    };
    let lists = service.lists();
    let service = Arc::new(Mutex::new(service));
    let (stop_tx, stop_rx) = watch::channel(false);
    let control = crate::control::server::bind(&config.socket, config.socket_group.as_deref())?;
    let group = config
        .socket_group
        .as_deref()
        .and_then(crate::control::server::group_id);
    let mut tasks = vec![tokio::spawn(crate::control::server::serve(
        control,
        service.clone(),
        group,
        stop_rx.clone(),
    ))];
    if !config.metrics.is_empty() {
        let listener = tokio::net::TcpListener::bind(&config.metrics)
            .await
            .with_context(|| format!("binding metrics on {}", config.metrics))?;
        tasks.push(tokio::spawn(metrics::serve(
            listener,
            service.clone(),
            agent_metrics.clone(),
            stop_rx.clone(),
        )));
    }
    let mut tls_handle = None;
    let mut registry_handle = None;
    let mut checker_threads = Vec::new();
    if let Some((registry, stats, tls)) = checker_parts {
        let proxy = crate::checker::proxy::Proxy::new(
            registry.clone(),
            lists,
            service.clone(),
            stats,
            config.checker.clone(),
        )?;
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let https = tls
            .clone()
            .filter(|_| !config.checker.https.is_empty())
            .map(|t| (config.checker.https.clone(), t));
        let http = (!config.checker.http.is_empty()).then(|| config.checker.http.clone());
        checker_threads =
            crate::checker::listen::spawn_workers(workers, https, http, &proxy, &stop_rx)
                .context("starting the L7 checker")?;
        tracing::info!(https = %config.checker.https, http = %config.checker.http, workers, apis = registry.apis().len(), "L7 checker listening");
        tokio::spawn(proxy.clone().health_loop(stop_rx.clone()));
        tls_handle = tls;
        registry_handle = Some(registry);
    }
    if let Some(abs) = abs {
        tracing::info!(url = %config.abs.url, poll = %config.abs.poll, "ABS feed on");
        tasks.push(tokio::spawn(abs.run(service.clone(), stop_rx.clone())));
    }
    tracing::info!(socket = %config.socket.display(), metrics = %config.metrics, "agent ready");
    notify_ready();

    let prune_every =
        Duration::from_secs(parse_duration(&config.prune_interval).map_err(anyhow::Error::msg)?);
    let mut prune_tick = tokio::time::interval(prune_every);
    let mut events_tick = tokio::time::interval(Duration::from_secs(1));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut tls_tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the TLS certificate and the API definitions");
                if let Some(t) = &tls_handle && let Err(e) = t.reload() {
                    tracing::error!("TLS reload failed, keeping the old certificate: {e:#}");
                }
                if let Some(r) = &registry_handle {
                    r.reload();
                }
            }
            _ = tls_tick.tick() => {
                if let Some(t) = &tls_handle {
                    t.reload_if_changed();
                }
            }
            _ = prune_tick.tick() => {
                let service = service.clone();
                let pruned = tokio::task::spawn_blocking(move || match service.lock() {
                    Ok(mut s) => Some(s.prune()),
                    Err(_) => None,
                })
                .await;
                match pruned {
                    Ok(Some(Ok(gone))) => { agent_metrics.expired.fetch_add(gone.len() as u64, Ordering::Relaxed); }
                    Ok(Some(Err(e))) => tracing::warn!("pruning expired entries failed: {e}"),
                    _ => tracing::error!("pruning task failed"),
                }
            }
            _ = events_tick.tick() => {
                if let Ok(mut s) = service.lock()
                    && let Some(f) = s.filter_mut()
                    && let Ok(events) = f.drain_events()
                {
                    for e in events {
                        let addr = if e.family == portcullis_common::family::V4 {
                            std::net::IpAddr::from([e.addr[0], e.addr[1], e.addr[2], e.addr[3]])
                        } else {
                            std::net::IpAddr::from(e.addr)
                        };
                        let verdict = if e.verdict == portcullis_common::counter::DROP_DENIED { "dropped" } else { "would drop (monitor)" };
                        tracing::info!(source = %addr, ifindex = e.ifindex, vlan = e.vlan, "sampled packet {verdict}");
                    }
                }
            }
        }
    }
    tracing::info!(
        "shutting down; XDP enforcement stays in place (use `portcullis detach` to remove it)"
    );
    let _ = stop_tx.send(true);
    let drain = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within 5 s");
    }
    drop(checker_threads);
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}
