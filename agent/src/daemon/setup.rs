//! Start-up steps: process limits, the private state directory, the filter loaded and
//! reconciled with the store, and the interfaces attached.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::Context as _;

use crate::config::{Config, Mode};
use crate::kernel::{self, Filter, LoadOptions};
use crate::metrics::AgentMetrics;
use crate::service::Service;
use crate::store::Store;

/// Fixes glibc's allocator thresholds. Left dynamic, they rise after the first large free
/// (up to 32 MiB for mapping a buffer on its own, 64 MiB for trimming), after which a worker
/// thread's arena never shrinks: a bulk import's transient buffers stayed resident, ~40 bytes
/// per imported IP entry. Fixed, buffers of 8 MiB or more (hash tables, a batch's vectors) are
/// mapped and unmapped on their own, smaller ones are reused from the arenas (a lower
/// threshold cost imports ~10% in page faults), and an arena gives memory back once 1 MiB at
/// its top is free.
pub(super) fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
    }
}

/// Raises RLIMIT_MEMLOCK for kernels that still charge BPF maps to it (harmless elsewhere),
/// and the soft RLIMIT_NOFILE to its hard limit (the checker holds a descriptor per
/// connection; 1024 would let a few idle clients starve it).
pub(super) fn raise_limits() {
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

/// Makes the state directory and the database private, then opens the store.
pub(super) fn open_store(config: &Config) -> anyhow::Result<Store> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state directory {}", config.state_dir.display()))?;
    std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", config.state_dir.display()))?;
    let store = Store::open(&config.db_path())
        .with_context(|| format!("opening {}", config.db_path().display()))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = config.db_path().into_os_string();
        p.push(suffix);
        // Databases written by older versions may be world-readable.
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
    }
    Ok(store)
}

/// Takes `agent.lock` in the state directory for the agent's life (the returned file): a
/// second agent started at the same moment on the same state fails here, before it binds
/// any listener (the control-socket check alone leaves that window open).
pub(super) fn lock_state(config: &Config) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd as _;
    // Everything the agent creates is private by default (this runs first): the lock, the
    // database (digests of secrets, the lists), its WAL, and the control socket from the
    // moment it exists (bind then widens it to 0660 for the group, never the other way
    // round).
    // SAFETY: umask(2) has no preconditions.
    unsafe { libc::umask(0o077) };
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state directory {}", config.state_dir.display()))?;
    let path = config.state_dir.join("agent.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock(2) on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::bail!(
            "another agent is running on {} (it holds {})",
            config.state_dir.display(),
            path.display()
        );
    }
    Ok(file)
}

/// Loads (or reuses the pinned) filter and sets its mode and drop sampling.
pub(super) fn load_filter(config: &Config) -> anyhow::Result<Filter> {
    kernel::ensure_bpffs().context("mounting bpffs")?;
    // Maps an upgrade or a new [capacity] cannot reuse are moved aside, not refused: the
    // links enforce on them until `reconcile_and_attach` swaps in the new program.
    Filter::set_aside_stale_maps(&config.pin_dir, config.capacity.into())
        .context("checking the pinned maps")?;
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
        count_hits: u32::from(config.hit_counters),
        ..filter.config()?
    };
    filter.set_config(cfg)?;
    Ok(filter)
}

/// Makes the (possibly reused) pinned maps equal to the store, prunes what expired while
/// the agent was down, and only then attaches: enforcement never regresses.
pub(super) fn reconcile_and_attach(
    service: &mut Service,
    config: &Config,
    metrics: &AgentMetrics,
) -> anyhow::Result<()> {
    let t = Instant::now();
    let (written, removed) = service
        .reconcile()
        .context("reconciling kernel maps with the store")?;
    metrics
        .reconcile_micros
        .store(t.elapsed().as_micros() as u64, Ordering::Relaxed);
    tracing::info!(written, removed, elapsed = ?t.elapsed(), "kernel maps reconciled with the store");
    let pruned = service.prune()?;
    metrics
        .expired
        .fetch_add(pruned.len() as u64, Ordering::Relaxed);
    if service.filter_mut().is_some() {
        service.attach(None, None).context("attaching XDP")?;
        // Every configured link now runs this program on these maps; the others follow.
        if let Some(f) = service.filter_mut() {
            f.finish_upgrade(&config.interfaces);
        }
    }
    Ok(())
}

/// Connects the ABS feed to the service, when a URL is configured.
pub(super) fn abs_feed(
    service: &mut Service,
    config: &Config,
) -> anyhow::Result<Option<Arc<crate::abs::Abs>>> {
    if config.abs.url.is_empty() {
        return Ok(None);
    }
    let state = Arc::new(std::sync::Mutex::new(crate::abs::AbsState::default()));
    let abs = crate::abs::Abs::new(config.abs.clone(), state).context("setting up the ABS feed")?;
    let feed = abs.clone();
    service.set_abs(abs.state.clone(), move |d| feed.queue_detection(d));
    Ok(Some(abs))
}

/// The interfaces a start attached afresh, detached again if the start fails before it is
/// ready (dropped with `ifaces` still set).
pub(super) struct UndoAttach {
    pub(super) pin_dir: std::path::PathBuf,
    pub(super) ifaces: Vec<String>,
}

impl Drop for UndoAttach {
    fn drop(&mut self) {
        let names: Vec<&str> = self.ifaces.iter().map(String::as_str).collect();
        crate::service::undo_fresh(Some(&self.pin_dir), &names);
    }
}
