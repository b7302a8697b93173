//! Reloading the configuration (SIGHUP, `portcullis reload`): the file is read again with
//! the agent's flags over it and checked as a start would check it; a file that does not
//! pass is refused with the reason and nothing changes. Otherwise what can change while the
//! agent runs does: the service's live keys ([`crate::service::LIVE_KEYS`]: interfaces, mode,
//! drop sampling, safety limits), the checker's certificate and API definitions (re-read from
//! their files), the ABS feed and the fleet link (each restarted with its new settings, or
//! stopped). Everything else that differs from what the agent started with is named as
//! needing a restart.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::checker;
use crate::abs::Abs;
use crate::config::Config;
use crate::control::answer::{AbsState, Reloaded};
use crate::writer::Writer;

/// Where a reload reads the configuration from: the file and the flags the agent was
/// started with, validated.
pub type ConfigSource = Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

/// A background task and its stop signal (`None`: not running).
type Stoppable = Option<(JoinHandle<()>, watch::Sender<bool>)>;

/// Signals the task to stop and gives it five seconds (a poll or read in flight), then
/// aborts it.
async fn stop_task(running: &mut Stoppable) {
    if let Some((handle, stop)) = running.take() {
        let _ = stop.send(true);
        let abort = handle.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

/// The ABS feed's poller, restartable on its own.
pub(super) struct AbsTask {
    running: Stoppable,
    /// Kept across restarts: `status` and the metrics go on counting.
    state: Arc<Mutex<AbsState>>,
}

impl AbsTask {
    /// Starts polling with `abs`, if the feed is configured.
    pub(super) fn start(abs: Option<Arc<Abs>>, writer: &Writer) -> Self {
        let state = abs
            .as_ref()
            .map_or_else(Default::default, |a| a.state.clone());
        let mut task = Self {
            running: None,
            state,
        };
        if let Some(abs) = abs {
            task.spawn(abs, writer);
        }
        task
    }

    fn spawn(&mut self, abs: Arc<Abs>, writer: &Writer) {
        let (stop, stopped) = watch::channel(false);
        let handle = tokio::spawn(abs.run(writer.clone(), stopped));
        self.running = Some((handle, stop));
    }

    /// Stops the poller (a poll in flight gets a few seconds to finish).
    pub(super) async fn stop(&mut self) {
        stop_task(&mut self.running).await;
    }

    /// Replaces the feed with one built from the new settings (or none).
    async fn replace(&mut self, abs: Option<Arc<Abs>>, writer: &Writer) {
        self.stop().await;
        match abs {
            Some(abs) => {
                let feed = abs.clone();
                let report: Box<dyn Fn(serde_json::Value) + Send> =
                    Box::new(move |d| feed.queue_detection(d));
                writer.set_abs(Some((abs.state.clone(), report))).await;
                self.spawn(abs, writer);
            }
            None => writer.set_abs(None).await,
        }
    }
}

/// The fleet engine, restartable on its own (the ABS feed's twin).
pub(super) struct FleetTask {
    running: Stoppable,
}

impl FleetTask {
    /// Starts the engine with `config` and its state `shared`, when the fleet is on.
    pub(super) fn start(
        config: &crate::fleet::FleetConfig,
        shared: Option<Arc<crate::fleet::Shared>>,
        writer: &Writer,
    ) -> Self {
        let mut task = Self { running: None };
        if let Some(shared) = shared {
            task.spawn(config, shared, writer);
        }
        task
    }

    fn spawn(
        &mut self,
        config: &crate::fleet::FleetConfig,
        shared: Arc<crate::fleet::Shared>,
        writer: &Writer,
    ) {
        tracing::info!(fleet = %config.name, redis = %config.redacted_url(), "fleet sync on");
        let (stop, stopped) = watch::channel(false);
        let handle = tokio::spawn(crate::fleet::run(
            config.clone(),
            writer.clone(),
            shared,
            stopped,
        ));
        self.running = Some((handle, stop));
    }

    /// Stops the engine (a read or publish in flight is dropped; what it applied is kept,
    /// and the next engine resumes from the stored position).
    pub(super) async fn stop(&mut self) {
        stop_task(&mut self.running).await;
    }

    /// Replaces the engine with one for `config` (none when the fleet is off); the list
    /// writer's outbox follows before the new engine starts.
    async fn replace(&mut self, config: &crate::fleet::FleetConfig, writer: &Writer) {
        self.stop().await;
        let shared = config.enabled().then(|| crate::fleet::shared(config));
        writer.set_fleet(config.clone(), shared.clone()).await;
        if let Some(shared) = shared {
            self.spawn(config, shared, writer);
        }
    }
}

/// Reloads run beside the signal loop (one at a time: a reload waits behind the list
/// writer's queue and an ABS poll in flight, and SIGTERM or the watchdog must not), each
/// logged, told to systemd, and answered to `portcullis reload` when it asked.
#[derive(Clone)]
pub(super) struct Reloads {
    state: Arc<tokio::sync::Mutex<(Reloader, AbsTask, FleetTask)>>,
    writer: Writer,
    checker: Option<checker::Files>,
    notify: Arc<super::notify::Notify>,
    /// The configuration in effect, for the loop's readers.
    current: watch::Sender<Config>,
    /// Set at shutdown: reloads still waiting for their turn are refused.
    closing: Arc<std::sync::atomic::AtomicBool>,
}

impl Reloads {
    pub(super) fn new(
        reloader: Reloader,
        abs: AbsTask,
        fleet: FleetTask,
        writer: Writer,
        checker: Option<checker::Files>,
        notify: Arc<super::notify::Notify>,
    ) -> Self {
        let (current, _) = watch::channel(reloader.current().clone());
        Self {
            state: Arc::new(tokio::sync::Mutex::new((reloader, abs, fleet))),
            writer,
            checker,
            notify,
            current,
            closing: Arc::default(),
        }
    }

    /// The configuration in effect.
    pub(super) fn current(&self) -> watch::Ref<'_, Config> {
        self.current.borrow()
    }

    /// Starts a reload; its answer goes to `answer`, when given.
    pub(super) fn start(&self, answer: Option<crate::control::server::ReloadAsk>) {
        let this = self.clone();
        tokio::spawn(async move {
            let response = this.run().await;
            if let Some(a) = answer {
                let _ = a.send(response);
            }
        });
    }

    async fn run(&self) -> crate::control::proto::Response {
        use crate::control::proto::Response;
        let mut state = self.state.lock().await;
        if self.closing.load(std::sync::atomic::Ordering::Relaxed) {
            return Response::err("the agent is shutting down");
        }
        let (reloader, abs, fleet) = &mut *state;
        self.notify
            .send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
        let result = reloader
            .reload(&self.writer, self.checker.as_ref(), abs, fleet)
            .await;
        self.notify.send("READY=1");
        match result {
            Ok(r) => {
                self.current.send_replace(reloader.current().clone());
                tracing::info!(
                    applied = %r.applied.join("; "),
                    restart_needed = %r.restart_needed.join(", "),
                    "configuration reloaded"
                );
                self.notify.status(&format!(
                    "reloaded: {} change(s){}",
                    r.applied.len(),
                    if r.restart_needed.is_empty() {
                        String::new()
                    } else {
                        format!("; restart for {}", r.restart_needed.join(", "))
                    }
                ));
                Response::ok(r)
            }
            Err(e) => {
                tracing::error!(reason = %e, "configuration reload refused");
                // The reason stays in the journal: a parse error quotes the file's line,
                // which may hold a password, and STATUS= is readable by every local user.
                self.notify
                    .status("reload refused, the running configuration stays (reason in the log)");
                Response::err(e)
            }
        }
    }

    /// Stops the ABS feed and the fleet engine (at shutdown), after the reload in progress
    /// if any (reloads still waiting are refused); gives up after `grace`.
    pub(super) async fn stop(&self, grace: Duration) {
        self.closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let stop = async {
            let mut state = self.state.lock().await;
            let (_, abs, fleet) = &mut *state;
            tokio::join!(abs.stop(), fleet.stop());
        };
        if tokio::time::timeout(grace, stop).await.is_err() {
            tracing::warn!("a configuration reload did not finish within the shutdown grace");
        }
    }
}

/// `CLOCK_MONOTONIC` in microseconds, as `RELOADING=1` wants it.
fn monotonic_usec() -> u64 {
    // SAFETY: timespec is plain old data; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// The configuration in effect, and how to read it again.
pub(super) struct Reloader {
    source: ConfigSource,
    /// What the agent started with: restart-only keys are compared with it.
    started: Config,
    /// What the last successful reload applied (at first, `started`).
    current: Config,
    /// The ABS feed's secret key and CA files as `current` found them.
    abs_files: Vec<u8>,
    /// The fleet's password and CA files as `current` found them.
    fleet_files: Vec<u8>,
}

impl Reloader {
    pub(super) fn new(source: ConfigSource, started: Config) -> Self {
        Self {
            source,
            abs_files: abs_files(&started),
            fleet_files: fleet_files(&started),
            current: started.clone(),
            started,
        }
    }

    /// The configuration in effect.
    pub(super) fn current(&self) -> &Config {
        &self.current
    }

    /// Reads, checks and applies the configuration; `Err` is the reason it was refused.
    pub(super) async fn reload(
        &mut self,
        writer: &Writer,
        checker: Option<&checker::Files>,
        abs: &mut AbsTask,
        fleet: &mut FleetTask,
    ) -> Result<Reloaded, String> {
        let refused =
            |why: String| format!("reload refused, the running configuration stays: {why}");
        let new = (self.source)().map_err(|e| refused(format!("{e:#}")))?;
        // Off the async workers: the checks resolve names and read files.
        let checked = new.clone();
        let problems = tokio::task::spawn_blocking(move || crate::preflight::problems(&checked))
            .await
            .unwrap_or_else(|e| vec![format!("checking the configuration: {e}")]);
        let mut problems = problems;
        let apis = match checker.map(checker::Files::read_apis) {
            Some(Ok(apis)) => Some(apis),
            Some(Err(errors)) => {
                problems.extend(errors.into_iter().map(|p| format!("checker.api_dir: {p}")));
                None
            }
            None => None,
        };
        if !problems.is_empty() {
            return Err(refused(problems.join("; ")));
        }
        // Restarted when its settings changed, or the files they name (a rotated secret key
        // or CA with the config itself unchanged); otherwise its queue and back-off stay.
        let files = abs_files(&new);
        let abs_changed =
            section(&self.current, "abs") != section(&new, "abs") || files != self.abs_files;
        // The new feed is built (its secret read, its client made) before anything changes.
        let feed = if abs_changed && !new.abs.url.is_empty() {
            let f = Abs::new(new.abs.clone(), abs.state.clone())
                .map_err(|e| refused(format!("{e:#}")))?;
            Some(f)
        } else {
            None
        };
        // The checker's new settings are built (CA and log files opened) before anything
        // changes, too; only when a key it applies live changed (applying drains every open
        // connection, which a restart-only key must not cause).
        let checker_changed = changed_keys(&self.current, &new).iter().any(|k| {
            (k.starts_with("checker.") || k.starts_with("sideband."))
                && !checker::RESTART_KEYS.contains(&k.as_str())
        });
        let settings = match checker {
            Some(c) if checker_changed => Some(
                c.settings(&new)
                    .map_err(|e| refused(format!("checker: {e:#}")))?,
            ),
            _ => None,
        };
        let new_fleet_files = fleet_files(&new);
        let fleet_changed = section(&self.current, "fleet") != section(&new, "fleet")
            || new_fleet_files != self.fleet_files;
        // A fleet whose password or CA file does not read is refused before the working
        // link is let go (the engine would otherwise fail for ever).
        if fleet_changed
            && new.fleet.enabled()
            && let Err(e) = crate::fleet::check(&new.fleet)
        {
            return Err(refused(format!("fleet: {e}")));
        }
        let mut applied = writer
            .reconfigure(new.clone())
            .await
            .map_err(|e| refused(e.to_string()))?;
        if let (Some(c), Some(apis)) = (checker, apis) {
            applied.extend(c.reload(apis));
            if let Some(s) = settings {
                c.apply(s);
                applied.push(
                    "checker: [checker] and [sideband] settings applied (open connections close after their request in flight)".into(),
                );
            }
        }
        if abs_changed {
            applied.push(if new.abs.url.is_empty() {
                "ABS feed off".to_string()
            } else {
                format!("ABS feed restarted ({})", new.abs.url)
            });
            abs.replace(feed, writer).await;
        }
        if fleet_changed {
            applied.push(if new.fleet.enabled() {
                format!(
                    "fleet sync restarted ({} on {})",
                    new.fleet.name,
                    new.fleet.redacted_url()
                )
            } else {
                "fleet sync off".to_string()
            });
            fleet.replace(&new.fleet, writer).await;
        }
        self.current = new;
        self.abs_files = files;
        self.fleet_files = new_fleet_files;
        // `abs.blocking` is where the `abs` switch starts; after that, the switch rules.
        let live = |k: &str| {
            crate::service::LIVE_KEYS.contains(&k)
                || (k.starts_with("abs.") && k != "abs.blocking")
                || k.starts_with("fleet.")
                || (checker.is_some()
                    && (k.starts_with("checker.") || k.starts_with("sideband."))
                    && !checker::RESTART_KEYS.contains(&k))
        };
        let restart_needed = changed_keys(&self.started, &self.current)
            .into_iter()
            .filter(|k| !live(k))
            .collect();
        Ok(Reloaded {
            applied,
            restart_needed,
        })
    }
}

/// A digest of the files the ABS settings name (secret key, CA): a rotated file restarts
/// the feed even when the configuration text is the same.
fn abs_files(config: &Config) -> Vec<u8> {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for f in std::iter::once(&config.abs.secret_key_file).chain(config.abs.ca_file.as_ref()) {
        h.update(std::fs::read(f).unwrap_or_default());
        h.update([0]);
    }
    h.finalize().to_vec()
}

/// A digest of the files the fleet settings name (password, CA): rotating one restarts the
/// engine even when the configuration text is the same.
fn fleet_files(config: &Config) -> Vec<u8> {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for f in [&config.fleet.password_file, &config.fleet.ca]
        .into_iter()
        .flatten()
    {
        h.update(std::fs::read(f).unwrap_or_default());
        h.update([0]);
    }
    h.finalize().to_vec()
}

/// One top-level section of the configuration, as TOML.
fn section(config: &Config, name: &str) -> Option<toml::Value> {
    toml::Value::try_from(config)
        .ok()
        .and_then(|v| v.get(name).cloned())
}

/// The dotted keys whose values differ between `a` and `b`.
fn changed_keys(a: &Config, b: &Config) -> Vec<String> {
    let (Ok(a), Ok(b)) = (toml::Value::try_from(a), toml::Value::try_from(b)) else {
        return vec!["(configuration not comparable)".into()];
    };
    let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &a, &mut fa);
    flatten("", &b, &mut fb);
    let mut keys: Vec<String> = fa
        .keys()
        .chain(fb.keys())
        .filter(|k| fa.get(*k) != fb.get(*k))
        .cloned()
        .collect();
    keys.dedup();
    keys.sort();
    keys.dedup();
    keys
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_are_dotted_and_only_the_changed_ones() {
        let a = Config::default();
        let mut b = a.clone();
        assert!(changed_keys(&a, &b).is_empty());
        b.metrics = "127.0.0.1:1".into();
        b.abs.poll = "7s".into();
        b.interfaces = vec!["eth1".into()];
        assert_eq!(changed_keys(&a, &b), ["abs.poll", "interfaces", "metrics"]);
    }
}
