//! ASE's global switches, and its per-API blocking verbs: real-time detections on or off
//! (`checker.detections`, `enable_ase_detected_attack`), ABS blocking on or off
//! (`abs.blocking`, `enable_abs_attack`), and `enable_blocking`/`disable_blocking API`,
//! which override the API file's `enable_blocking`. The configuration gives their values at
//! the first start; a change by the CLI is kept in `switches.json` in the state directory
//! (written whole, then renamed), and wins over the configuration from then on — a restart
//! does not quietly turn blocking back on. The flags are read on the request path without a
//! lock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::{Service, ServiceError};
use crate::config::Config;
use crate::control::answer::Switched;
use crate::control::proto::SwitchName;
use crate::model::List;

/// What `switches.json` holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Saved {
    /// Real-time detections, if set by the CLI.
    pub detections: Option<bool>,
    /// ABS blocking, if set by the CLI.
    pub abs: Option<bool>,
    /// `enable_blocking` per API, overriding its file.
    pub api_blocking: BTreeMap<String, bool>,
}

/// The switches in force.
#[derive(Debug)]
pub struct Switches {
    detections: AtomicBool,
    abs: AtomicBool,
    saved: Mutex<Saved>,
    file: PathBuf,
}

impl Switches {
    /// The switches for `config`: `switches.json` where it says, the configuration
    /// elsewhere. An unreadable file is an error (the operator's choice must not be lost
    /// silently).
    pub fn load(config: &Config) -> Result<Self, String> {
        let file = config.state_dir.join("switches.json");
        let saved = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice::<Saved>(&bytes)
                .map_err(|e| format!("{}: {e}", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        let detections = saved.detections.unwrap_or(config.checker.detections);
        let abs = saved.abs.unwrap_or(config.abs.blocking);
        for (what, set, configured) in [
            (
                "real-time detections",
                saved.detections,
                config.checker.detections,
            ),
            ("ABS blocking", saved.abs, config.abs.blocking),
        ] {
            if set.is_some_and(|s| s != configured) {
                tracing::warn!(
                    "{what} {} by the CLI (kept in {}), although the configuration says {}",
                    on_off(!configured),
                    file.display(),
                    on_off(configured)
                );
            }
        }
        Ok(Self {
            detections: AtomicBool::new(detections),
            abs: AtomicBool::new(abs),
            saved: Mutex::new(saved),
            file,
        })
    }

    /// Whether detections deny-list their culprits.
    pub fn detections(&self) -> bool {
        self.detections.load(Ordering::Relaxed)
    }

    /// Whether the ABS list is enforced.
    pub fn abs(&self) -> bool {
        self.abs.load(Ordering::Relaxed)
    }

    /// The per-API overrides of `enable_blocking`.
    pub fn api_blocking(&self) -> BTreeMap<String, bool> {
        self.lock().api_blocking.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Saved> {
        self.saved.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets a switch and saves it; on a failed save nothing changes.
    pub fn set(&self, which: Switch, on: bool) -> std::io::Result<()> {
        let mut saved = self.lock();
        let mut next = saved.clone();
        match &which {
            Switch::Detections => next.detections = Some(on),
            Switch::Abs => next.abs = Some(on),
            Switch::ApiBlocking(api) => {
                next.api_blocking.insert(api.clone(), on);
            }
        }
        write_atomically(&self.file, &next)?;
        *saved = next;
        match which {
            Switch::Detections => self.detections.store(on, Ordering::Relaxed),
            Switch::Abs => self.abs.store(on, Ordering::Relaxed),
            Switch::ApiBlocking(_) => {}
        }
        Ok(())
    }
}

impl Service {
    /// Turns a switch on or off, saves it, and applies it: detections or ABS blocking off
    /// takes their rows off the deny list (ABS's come back at the next poll once it is on
    /// again); an API's blocking takes effect on its next request.
    pub(super) fn switch(
        &mut self,
        which: SwitchName,
        api: Option<String>,
        on: bool,
    ) -> Result<Switched, ServiceError> {
        let (switch, source) = match (which, api) {
            (SwitchName::Detections, None) => (Switch::Detections, Some("checker")),
            (SwitchName::Abs, None) => (Switch::Abs, Some("abs")),
            (SwitchName::ApiBlocking, Some(name)) => {
                let registry = self.registry()?;
                if !registry.apis().contains_key(&name) {
                    return Err(ServiceError::BadRequest(format!(
                        "no API named {name:?} is loaded (portcullis api list)"
                    )));
                }
                (Switch::ApiBlocking(name), None)
            }
            (SwitchName::ApiBlocking, None) => {
                return Err(ServiceError::BadRequest(
                    "api-blocking needs the API's name".into(),
                ));
            }
            (_, Some(_)) => {
                return Err(ServiceError::BadRequest(
                    "only api-blocking takes an API name".into(),
                ));
            }
        };
        let switches = self.board.switches().clone();
        switches
            .set(switch.clone(), on)
            .map_err(|e| ServiceError::Switches(e.to_string()))?;
        let name = match &switch {
            Switch::Detections => "detections".to_owned(),
            Switch::Abs => "abs".to_owned(),
            Switch::ApiBlocking(api) => {
                self.registry()?.set_blocking(api, on);
                format!("api-blocking {api}")
            }
        };
        let removed = match source {
            Some(source) if !on => self.clear(List::Deny, None, Some(source.into()))?,
            _ => 0,
        };
        tracing::warn!(switch = %name, on, removed, "switch changed");
        Ok(Switched {
            switch: name,
            on,
            removed,
        })
    }
}

/// One switch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Switch {
    /// Real-time detections.
    Detections,
    /// ABS blocking.
    Abs,
    /// One API's `enable_blocking`.
    ApiBlocking(String),
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// Writes `saved` as JSON to a temporary file, syncs it, and renames it over `file`.
pub(super) fn write_atomically<T: Serialize>(file: &Path, saved: &T) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = file.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(saved).map_err(std::io::Error::other)?;
    // Owner only, whatever the umask: credentials.json holds digests of secrets.
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?
        .write_all(&text)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cli_choice_outlives_a_restart_and_wins_over_the_config() {
        let dir = std::env::temp_dir().join(format!("pc-switches-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let config = Config {
            state_dir: dir.clone(),
            ..Config::default()
        };
        let s = Switches::load(&config).expect("load");
        assert!(s.detections() && s.abs());
        s.set(Switch::Detections, false).expect("set");
        s.set(Switch::ApiBlocking("shop".into()), false)
            .expect("set");
        assert!(!s.detections());
        let again = Switches::load(&config).expect("reload");
        assert!(!again.detections() && again.abs());
        assert_eq!(again.api_blocking().get("shop"), Some(&false));
        std::fs::write(dir.join("switches.json"), "{not json").expect("write");
        assert!(
            Switches::load(&config).is_err(),
            "a broken file is not ignored"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
