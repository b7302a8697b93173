//! What the agent answers: entries as the CLI shows them, batch reports, status, counters
//! and the API definitions.

use std::sync::Arc;

use serde::Serialize;

use super::{Service, ServiceError};
use crate::checker::ApiRegistry;
use crate::control::proto::Response;
use crate::model::Entry;
use crate::model::Kind;
use crate::model::List;

/// Outcome of an add.
#[derive(Debug, Serialize)]
pub struct Added {
    /// The entry as stored.
    pub entry: EntryView,
    /// Whether it was new (false: updated reason or expiry).
    pub new: bool,
    /// Whether the kernel now enforces it.
    pub enforced_in_kernel: bool,
}

/// An entry as the CLI and JSON show it: secrets as fingerprints.
#[derive(Debug, Serialize)]
pub struct EntryView {
    /// allow or deny.
    pub list: List,
    /// Kind.
    pub kind: Kind,
    /// Cookie / API-key name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Value or fingerprint.
    pub value: String,
    /// Source.
    pub source: String,
    /// Reason.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// API scope.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub api: String,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds.
    pub expires: Option<i64>,
}

impl From<&Entry> for EntryView {
    fn from(e: &Entry) -> Self {
        Self {
            list: e.list,
            kind: e.ident.kind,
            name: e.ident.name.clone(),
            value: e.ident.display_value(),
            source: e.source.to_string(),
            reason: e.reason.clone(),
            api: e.api.clone(),
            created: e.created,
            expires: e.expires,
        }
    }
}

/// What a mirror or push changed.
#[derive(Debug, Default, Serialize)]
pub struct MirrorReport {
    /// Rows added or refreshed.
    pub added: usize,
    /// Rows removed.
    pub removed: usize,
    /// Items refused (invalid, or would block everyone or this host).
    pub skipped: usize,
}

/// Result of an import batch.
#[derive(Debug, Default, Serialize)]
pub struct Imported {
    /// Entries accepted (new or updated).
    pub accepted: usize,
    /// New rows.
    pub new: usize,
    /// `(line, reason)` of lines refused.
    pub rejected: Vec<(u64, String)>,
}

/// One attachment as the control API reports it.
pub(super) fn attached(a: &crate::kernel::Attached) -> serde_json::Value {
    serde_json::json!({
        "iface": a.iface,
        "xdp_mode": a.mode,
        "fell_back": a.fell_back,
        "reused_pinned_link": a.reused_link,
    })
}

impl Service {
    pub(super) fn status(&self) -> Result<serde_json::Value, ServiceError> {
        Ok(self.board.status())
    }

    /// Kernel counters by verdict name.
    pub fn stats(&self) -> Result<serde_json::Value, ServiceError> {
        let mut kernel = serde_json::Map::new();
        let mut by_iface = serde_json::Map::new();
        if let Some(f) = &self.filter {
            for (iface, counters) in f.counters_by_iface()? {
                let m: serde_json::Map<String, serde_json::Value> = counters
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        (
                            portcullis_common::counter::NAMES[i].to_owned(),
                            serde_json::json!({"packets": c.packets, "bytes": c.bytes}),
                        )
                    })
                    .collect();
                by_iface.insert(iface, serde_json::Value::Object(m));
            }
        }
        if let Some(f) = &self.filter {
            for (i, c) in f.counters()?.iter().enumerate() {
                kernel.insert(
                    portcullis_common::counter::NAMES[i].into(),
                    serde_json::json!({"packets": c.packets, "bytes": c.bytes}),
                );
            }
        }
        let l7: serde_json::Map<String, serde_json::Value> = self
            .checker
            .as_ref()
            .map(|(_, st)| {
                st.snapshot()
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), serde_json::json!(v)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(serde_json::json!({ "kernel": kernel, "interfaces": by_iface, "l7": l7 }))
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

    pub(super) fn api_list(&self) -> Result<Response, ServiceError> {
        let r = self.registry()?;
        let apis: Vec<serde_json::Value> = r
            .apis()
            .values()
            .map(|a| serde_json::json!({
                "name": a.name, "hostname": a.meta.hostname, "url": a.meta.url,
                "servers": a.meta.servers.iter().map(|s| format!("{}:{}", s.host, s.port)).collect::<Vec<_>>(),
                "enable_blocking": a.meta.enable_blocking,
                "decoy": a.meta.decoy_config.as_ref().is_some_and(|d| d.decoy_enabled),
                "ignored_fields": a.ignored_fields,
            }))
            .collect();
        let errors: Vec<String> = r.errors().iter().map(ToString::to_string).collect();
        Ok(Response::ok(
            serde_json::json!({ "apis": apis, "errors": errors }),
        ))
    }

    pub(super) fn api_show(&self, name: &str) -> Result<Response, ServiceError> {
        let apis = self.registry()?.apis();
        let api = apis.get(name).ok_or_else(|| {
            ServiceError::BadRequest(format!("no API named {name:?} (see `portcullis api list`)"))
        })?;
        Ok(Response::ok(
            serde_json::json!({ "name": api.name, "path": api.path, "api_metadata": api.meta, "ignored_fields": api.ignored_fields }),
        ))
    }

    pub(super) fn api_reload(&self) -> Result<Response, ServiceError> {
        let (n, errors) = self.registry()?.reload();
        Ok(Response::ok(
            serde_json::json!({ "loaded": n, "errors": errors.iter().map(ToString::to_string).collect::<Vec<_>>() }),
        ))
    }
}
