//! The durable entry: one identifier on one list from one source.

use serde::{Deserialize, Serialize};

use super::{Identifier, List, Source};

/// One entry: an identifier on a list, with where it came from and until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Allow or deny.
    pub list: List,
    /// The identifier (secrets as digests).
    #[serde(flatten)]
    pub ident: Identifier,
    /// Who listed it.
    pub source: Source,
    /// Free text (for `checker`, the detection).
    pub reason: String,
    /// API name the entry is scoped to; empty = every API (and the kernel, for IPs).
    pub api: String,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds; `None` = never expires.
    pub expires: Option<i64>,
}

#[cfg(test)]
impl Entry {
    /// A manual, global, never-expiring row, for tests to adjust with `..`.
    pub(crate) fn sample(list: List, kind: super::Kind, name: Option<&str>, value: &str) -> Self {
        Self {
            list,
            ident: Identifier::parse(kind, name, value).expect("valid test identifier"),
            source: Source::Manual,
            reason: String::new(),
            api: String::new(),
            created: 0,
            expires: None,
        }
    }
}
