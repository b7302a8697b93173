//! Starting the L7 checker: its API registry, TLS certificate, worker threads and health
//! probes, and the reloads SIGHUP and the certificate watcher ask for (the certificate, the
//! API files, and the settings of `[checker]` and `[sideband]` but the listeners' own).

use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use tokio::sync::watch;

use crate::activation::Passed;
use crate::checker::listen::{Endpoint, Role};
use crate::checker::lists::L7Lists;
use crate::checker::tls::Tls;
use crate::checker::{ApiRegistry, L7Stats};
use crate::config::Config;
use crate::service::Service;
use crate::writer::Writer;

/// The checker's parts, loaded before the list writer starts (the service needs the
/// registry for `api` requests and the automatic-source safety rules).
pub(super) struct Prepared {
    registry: Arc<ApiRegistry>,
    stats: Arc<L7Stats>,
    tls: Option<Arc<Tls>>,
}

/// The settings a reload can change only by a restart: the listeners, their certificate
/// files and the API directory (read again, but from where it was), the access log's
/// rotation (one writer per file), and the switches the file only seeds at the first start
/// (`portcullis switch ...` is the live way).
pub(super) const RESTART_KEYS: &[&str] = &[
    "checker.https",
    "checker.http",
    "checker.tls_cert",
    "checker.tls_key",
    "checker.tls_certs",
    "checker.api_dir",
    "checker.access_log_max_bytes",
    "checker.access_log_keep",
    "checker.detections",
    "sideband.https",
    "sideband.http",
    "sideband.authentication",
];

/// A running checker.
pub(super) struct Running {
    registry: Arc<ApiRegistry>,
    tls: Option<Arc<Tls>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The settings every listener takes its next connections' from.
    proxies: Arc<watch::Sender<Arc<crate::checker::proxy::Proxy>>>,
}

impl Prepared {
    /// Loads the API definitions and the certificate, when a listener is configured.
    pub(super) fn new(service: &mut Service, config: &Config) -> anyhow::Result<Option<Self>> {
        if !config.checker.enabled() && !config.sideband.enabled() {
            return Ok(None);
        }
        let registry = Arc::new(ApiRegistry::load(config.checker.api_dir.clone()));
        let stats = Arc::new(L7Stats::default());
        service.set_checker(registry.clone(), stats.clone());
        let tls = if config.checker.https.is_empty() && config.sideband.https.is_empty() {
            None
        } else {
            Some(Arc::new(
                Tls::load(config.checker.tls_pairs())
                    .context("loading the checker's TLS certificate")?,
            ))
        };
        Ok(Some(Self {
            registry,
            stats,
            tls,
        }))
    }

    /// Starts one worker thread per core and the health probes, listening on the sockets
    /// the service manager passed for the configured addresses, or binding them.
    pub(super) fn start(
        self,
        lists: Arc<RwLock<L7Lists>>,
        writer: &Writer,
        config: &Config,
        passed: &mut Passed,
        stop_rx: &watch::Receiver<bool>,
        board: &crate::service::Board,
    ) -> anyhow::Result<Running> {
        let proxy = crate::checker::proxy::Proxy::new(
            self.registry.clone(),
            lists,
            writer.clone(),
            self.stats,
            config,
            board,
            stop_rx.clone(),
        )?;
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut endpoint = |what: &str, addr: &str| -> anyhow::Result<Option<Endpoint>> {
            if addr.is_empty() {
                return Ok(None);
            }
            Ok(Some(match passed.take(what, addr)? {
                Some(l) => Endpoint::Passed(l),
                None => Endpoint::Bind(addr.to_owned()),
            }))
        };
        let mut listeners = Vec::new();
        for (what, addr, tls, role) in [
            ("checker.https", &config.checker.https, true, Role::Inline),
            ("checker.http", &config.checker.http, false, Role::Inline),
            (
                "sideband.https",
                &config.sideband.https,
                true,
                Role::Sideband,
            ),
            (
                "sideband.http",
                &config.sideband.http,
                false,
                Role::Sideband,
            ),
        ] {
            if let Some(e) = endpoint(what, addr)? {
                listeners.push((e, self.tls.clone().filter(|_| tls), role));
            }
        }
        let (proxies, settings) = watch::channel(proxy.clone());
        let threads = crate::checker::listen::spawn_workers(workers, listeners, &settings, stop_rx)
            .context("starting the L7 checker")?;
        tracing::info!(https = %config.checker.https, http = %config.checker.http, sideband_https = %config.sideband.https, sideband_http = %config.sideband.http, workers, apis = self.registry.apis().len(), "L7 checker listening");
        tokio::spawn(crate::checker::proxy::Proxy::health_loop(
            settings,
            stop_rx.clone(),
        ));
        Ok(Running {
            registry: self.registry,
            tls: self.tls,
            threads,
            proxies: Arc::new(proxies),
        })
    }
}

/// What a configuration reload re-reads of the checker; cheap to clone.
#[derive(Clone)]
pub(super) struct Files {
    registry: Arc<ApiRegistry>,
    tls: Option<Arc<Tls>>,
    proxies: Arc<watch::Sender<Arc<crate::checker::proxy::Proxy>>>,
}

/// The checker's settings from a reloaded configuration, checked and ready to apply.
pub(super) struct Settings(Arc<crate::checker::proxy::Proxy>);

impl Files {
    /// Builds the checker's settings from `config` (a CA or access log that does not open
    /// is an error, and nothing changes).
    pub(super) fn settings(&self, config: &Config) -> anyhow::Result<Settings> {
        let current = self.proxies.borrow().clone();
        current.reconfigured(config).map(Settings)
    }

    /// Hands `settings` to every listener: connections accepted from now on use them.
    pub(super) fn apply(&self, settings: Settings) {
        self.proxies.send_replace(settings.0);
    }

    /// The API directory, read once for [`Self::reload`]; `Err` is its files that do not
    /// load (a reload refuses them: their APIs would vanish from the running checker).
    pub(super) fn read_apis(&self) -> Result<crate::checker::Apis, Vec<String>> {
        self.registry
            .read()
            .map_err(|errors| errors.iter().map(ToString::to_string).collect())
    }

    /// The certificate again, and the API definitions `read_apis` returned; says what it
    /// loaded.
    pub(super) fn reload(&self, apis: crate::checker::Apis) -> Vec<String> {
        let mut done = Vec::new();
        if let Some(t) = &self.tls {
            match t.reload() {
                Ok(()) => done.push("checker: TLS certificate read again".to_string()),
                Err(e) => done.push(format!(
                    "checker: TLS certificate NOT reloaded, the old one stays: {e:#}"
                )),
            }
        }
        let n = self.registry.install(apis);
        done.push(format!("checker: {n} API definition(s) read again"));
        done
    }
}

impl Running {
    /// The files a reload re-reads.
    pub(super) fn files(&self) -> Files {
        Files {
            registry: self.registry.clone(),
            tls: self.tls.clone(),
            proxies: self.proxies.clone(),
        }
    }

    /// Picks up a renewed certificate (certbot and friends replace the files).
    pub(super) fn reload_tls_if_changed(&self) {
        if let Some(t) = &self.tls {
            t.reload_if_changed();
        }
    }

    /// The hosts of every API's servers, as written in the definitions.
    pub(super) fn server_hosts(&self) -> Vec<String> {
        self.registry
            .apis()
            .values()
            .flat_map(|a| a.meta.servers.iter().map(|s| s.host.clone()))
            .collect()
    }

    /// The worker threads, to join at shutdown.
    pub(super) fn into_threads(self) -> Vec<std::thread::JoinHandle<()>> {
        self.threads
    }
}
