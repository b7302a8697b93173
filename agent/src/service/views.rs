//! What the agent answers: entries as the CLI shows them, batch reports, status, counters
//! and the API definitions.

use std::sync::Arc;

use super::{Service, ServiceError};
use crate::checker::ApiRegistry;
use crate::control::answer::{
    ApiList, ApiReloaded, ApiShown, ApiSummary, Attachment, Counter, Interface, LinkState, Stats,
};
use crate::model::Kind;
use crate::model::List;

impl From<&crate::kernel::Attached> for Attachment {
    fn from(a: &crate::kernel::Attached) -> Self {
        Self {
            iface: a.iface.clone(),
            xdp_mode: a.mode,
            fell_back: a.fell_back.clone(),
            reused_pinned_link: a.reused_link,
        }
    }
}

/// An interface as `status` shows it: where the filter is, or was until an operator took
/// it off.
pub(super) fn interface(a: &crate::kernel::Attached, detached: bool) -> Interface {
    Interface {
        iface: a.iface.clone(),
        state: if detached {
            LinkState::Detached
        } else {
            LinkState::Attached
        },
        xdp_mode: (!detached).then_some(a.mode),
        fell_back: a.fell_back.clone(),
        reused_pinned_link: a.reused_link,
    }
}

impl Service {
    pub(super) fn status(&self) -> Result<crate::control::answer::Status, ServiceError> {
        Ok(self.board.status())
    }

    /// Kernel counters by verdict name, and the checker's by outcome.
    pub fn stats(&self) -> Result<Stats, ServiceError> {
        let by_name = |counters: &[portcullis_common::Counter]| {
            counters
                .iter()
                .zip(portcullis_common::counter::NAMES)
                .map(|(c, name)| {
                    let c = Counter {
                        packets: c.packets,
                        bytes: c.bytes,
                    };
                    (name.to_owned(), c)
                })
                .collect()
        };
        let mut stats = Stats::default();
        if let Some(f) = &self.filter {
            for (iface, counters) in f.counters_by_iface()? {
                stats.interfaces.insert(iface, by_name(&counters));
            }
            stats.kernel = by_name(&f.counters()?);
        }
        if let Some((_, st)) = &self.checker {
            stats.l7 = st
                .snapshot()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
        }
        Ok(stats)
    }

    /// List sizes for metrics.
    pub fn counts(&self) -> Result<Vec<(List, Kind, String, u64)>, ServiceError> {
        Ok(self.board.counts())
    }

    pub(super) fn registry(&self) -> Result<&Arc<ApiRegistry>, ServiceError> {
        self.checker.as_ref().map(|(r, _)| r).ok_or_else(|| {
            ServiceError::BadRequest(
                "the L7 checker is not enabled (set [checker] https or http)".into(),
            )
        })
    }

    pub(super) fn api_list(&self) -> Result<ApiList, ServiceError> {
        let r = self.registry()?;
        let apis = r
            .apis()
            .values()
            .map(|a| ApiSummary {
                name: a.name.clone(),
                hostname: a.meta.hostname.clone(),
                url: a.meta.url.clone(),
                servers: a
                    .meta
                    .servers
                    .iter()
                    .map(|s| format!("{}:{}", s.host, s.port))
                    .collect(),
                enable_blocking: a.meta.enable_blocking,
                decoy: a
                    .meta
                    .decoy_config
                    .as_ref()
                    .is_some_and(|d| d.decoy_enabled),
                ignored_fields: a.ignored_fields.clone(),
            })
            .collect();
        let errors = r.errors().iter().map(ToString::to_string).collect();
        Ok(ApiList { apis, errors })
    }

    pub(super) fn api_show(&self, name: &str) -> Result<ApiShown, ServiceError> {
        let apis = self.registry()?.apis();
        let api = apis.get(name).ok_or_else(|| {
            ServiceError::BadRequest(format!("no API named {name:?} (see `portcullis api list`)"))
        })?;
        Ok(ApiShown {
            name: api.name.clone(),
            path: api.path.clone(),
            api_metadata: serde_json::to_value(&api.meta)
                .map_err(|e| ServiceError::Internal(format!("API {name}: {e}")))?,
            decoy_paths: api.decoy_paths.clone(),
            ignored_fields: api.ignored_fields.clone(),
        })
    }

    /// All or nothing: a directory with a file that does not load is refused, and the
    /// running definitions stay (its API would otherwise vanish from the checker).
    pub(super) fn api_reload(&self) -> Result<ApiReloaded, ServiceError> {
        let registry = self.registry()?;
        match registry.read() {
            Ok(apis) => Ok(ApiReloaded {
                loaded: registry.install(apis),
                errors: Vec::new(),
            }),
            Err(errors) => Err(ServiceError::BadRequest(format!(
                "API definitions not reloaded, the running ones stay: {}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ))),
        }
    }
}

impl super::Service {
    /// A digest of every unexpired entry's identity, scope and expiry, whatever its source:
    /// two hosts in step have the same one.
    pub(super) fn list_digest(&self) -> Result<(String, u64), ServiceError> {
        use sha2::{Digest, Sha256};
        let now = super::unix_now();
        let mut lines = std::collections::BTreeSet::new();
        self.store.for_each(|e| {
            if e.expires.is_none_or(|x| x > now) {
                lines.insert(format!(
                    "{}\t{}\t{}\t{}\t{}\t{:?}",
                    e.list, e.ident.kind, e.ident.name, e.ident.value, e.api, e.expires
                ));
            }
        })?;
        let mut h = Sha256::new();
        for l in &lines {
            h.update(l.as_bytes());
            h.update(b"\n");
        }
        let d = h.finalize();
        let hex: String = d[..8].iter().map(|b| format!("{b:02x}")).collect();
        Ok((hex, lines.len() as u64))
    }
}
