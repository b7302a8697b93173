//! The control API's wire format: one JSON request per line, one JSON response per line, over
//! the Unix socket. This is a contract: scripts may speak it directly (see README).
//!
//! ```text
//! {"op":"add","list":"deny","kind":"ip","value":"203.0.113.7","ttl_secs":3600}
//! {"ok":true,"result":{...},"version":2}
//! {"ok":false,"error":"refusing to deny 0.0.0.0/0 ...","version":2}
//! ```

use serde::{Deserialize, Serialize};

use crate::model::Kind;
use crate::model::List;

/// One request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Put an identifier on a list.
    Add(AddRequest),
    /// Take an identifier off a list (all sources unless one is named).
    Remove {
        /// Which list.
        list: List,
        /// Kind.
        kind: Kind,
        /// Cookie or API-key name.
        #[serde(default)]
        name: Option<String>,
        /// The value.
        value: String,
        /// Only this source's row.
        #[serde(default)]
        source: Option<String>,
    },
    /// Entries, filtered.
    List {
        /// Which list (both if absent).
        #[serde(default)]
        list: Option<List>,
        /// Kind.
        #[serde(default)]
        kind: Option<Kind>,
        /// Source.
        #[serde(default)]
        source: Option<String>,
    },
    /// Remove every entry of a list (filtered).
    Clear {
        /// Which list.
        list: List,
        /// Kind.
        #[serde(default)]
        kind: Option<Kind>,
        /// Source.
        #[serde(default)]
        source: Option<String>,
        /// Required without `kind` and `source`: the whole list is meant.
        #[serde(default)]
        all: bool,
    },
    /// A batch of raw import lines (text or NDJSON) with their line numbers.
    Import {
        /// Which list.
        list: List,
        /// `(line number, text)`.
        lines: Vec<(u64, String)>,
        /// Defaults applied to every line.
        #[serde(default)]
        defaults: ImportDefaults,
        /// This batch continues the import of the batch before it on this connection: it is
        /// not applied if that one failed (a client sending batches ahead stops at the first
        /// failure). Without it, each import request stands alone.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        continues: bool,
    },
    /// Interfaces, mode, list sizes.
    Status,
    /// The loaded API definitions and the refused files.
    ApiList,
    /// One API definition.
    ApiShow {
        /// API name (file stem).
        name: String,
    },
    /// Re-read the API directory.
    ApiReload,
    /// An ABS-side job pushes additions and removals (source `abs`) without waiting for the
    /// next poll. Only root and the socket's group can reach the socket.
    AbsPush {
        /// Items to add (same shape as the attack list's items).
        #[serde(default)]
        add: Vec<AbsItem>,
        /// Items to remove.
        #[serde(default)]
        remove: Vec<AbsItem>,
    },
    /// Kernel counters.
    Stats,
    /// Put the filter on an interface (or back on every configured one).
    Attach {
        /// Only this interface (default: the configured ones).
        #[serde(default)]
        iface: Option<String>,
        /// Mode (default: the configured one).
        #[serde(default)]
        xdp_mode: Option<crate::kernel::AttachMode>,
    },
    /// Write a consistent copy of the database into the state directory; the answer names
    /// it (the CLI moves it where the operator asked). Root only.
    Backup,
    /// Replace the lists with a copy made by `backup`, placed in the state directory. Root only.
    Restore {
        /// The copy (directly in the state directory).
        path: std::path::PathBuf,
        /// Restore even a deny list that would cut off everyone or this host.
        #[serde(default)]
        force: bool,
    },
    /// Turns one of ASE's switches on or off (see `service::switches`); turning detections or
    /// ABS blocking off takes their rows off the deny list.
    Switch {
        /// Which switch.
        which: SwitchName,
        /// The API, for `api-blocking`.
        #[serde(default)]
        api: Option<String>,
        /// On or off.
        on: bool,
    },
    /// The filter was taken off (the CLI detaches in the kernel first, then tells the agent).
    Detach {
        /// Only this interface (default: all).
        #[serde(default)]
        iface: Option<String>,
    },
    /// Sideband tokens and authentication, and the REST API's secret key (see
    /// `service::credentials`).
    Credentials {
        /// What to do.
        action: CredentialAction,
    },
    /// The fleet link's state and this host's list digest; with `resync`, the engine first
    /// reloads the fleet's snapshot (see `crate::fleet`).
    Fleet {
        /// Resync first.
        #[serde(default)]
        resync: bool,
    },
    /// Read the configuration file again and apply it (as SIGHUP does); a file that does
    /// not validate is refused with the reason and the running configuration stays. Root.
    Reload,
    /// The IP entries of a list traffic hits, most first, from the kernel's hit counters.
    Hits {
        /// Which list.
        list: List,
        /// At most this many.
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Stream the live events (see `crate::events`): after the answer, one JSON object per
    /// line until the client hangs up (or sends anything). Root: request paths may carry
    /// secrets the access log (root's) holds too.
    Events,
}

/// What `Request::Credentials` does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "kebab-case")]
pub enum CredentialAction {
    /// Show the tokens (hints only) and the switch.
    Show,
    /// Create a sideband token; the answer shows it this once.
    CreateToken,
    /// Add a token made elsewhere (ASE's 32 lowercase letters and digits).
    ImportToken {
        /// The token.
        token: String,
    },
    /// Delete a sideband token.
    DeleteToken {
        /// The token.
        token: String,
    },
    /// Turn sideband authentication on or off.
    Authentication {
        /// On or off.
        on: bool,
    },
    /// Set the REST API's secret key (ASE's `update_password`).
    RestSecret {
        /// The new key.
        secret: String,
    },
}

/// A switch `Request::Switch` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SwitchName {
    /// Real-time detections (ASE's `enable_ase_detected_attack`).
    Detections,
    /// ABS blocking (ASE's `enable_abs_attack`).
    Abs,
    /// One API's `enable_blocking` (ASE's `enable_blocking API`).
    ApiBlocking,
}

impl Request {
    /// Whether this request only reads: the list writer answers reads between writes and
    /// between the chunks of a long import, so `status` stays quick during a large import.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Self::List { .. }
                | Self::Status
                | Self::ApiList
                | Self::ApiShow { .. }
                | Self::Stats
                | Self::Hits { .. }
                | Self::Backup
                | Self::Fleet { .. }
        )
    }

    /// Whether only root (or the agent's own user) may ask: the agent reads or writes a file
    /// the request names, or re-reads its configuration.
    pub fn needs_root(&self) -> bool {
        matches!(
            self,
            Self::Backup | Self::Restore { .. } | Self::Reload | Self::Events
        )
    }
}

/// Adding one entry.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AddRequest {
    /// Which list.
    pub list: Option<List>,
    /// Kind.
    pub kind: Option<Kind>,
    /// Cookie or API-key name.
    #[serde(default)]
    pub name: Option<String>,
    /// The value (clear text; secrets are digested by the agent).
    pub value: String,
    /// Seconds until it expires.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
    /// API scope.
    #[serde(default)]
    pub api: Option<String>,
    /// Source (default `manual`).
    #[serde(default)]
    pub source: Option<String>,
    /// Allow world-blocking denies.
    #[serde(default)]
    pub force: bool,
}

impl Request {
    /// Decodes one request line. [`Request`] is tagged by its `op` field, and serde buffers
    /// a tagged request whole before decoding it: a 250 000-line import batch would be held
    /// and copied twice. An import is decoded straight into its fields instead; anything
    /// else, or an import that does not decode that way, takes the tagged path (and its
    /// error message).
    pub fn decode(bytes: &[u8]) -> serde_json::Result<Self> {
        match serde_json::from_slice::<ImportWire>(bytes) {
            Ok(ImportWire {
                op,
                list,
                lines,
                defaults,
                continues,
            }) if op == "import" => Ok(Self::Import {
                list,
                lines,
                defaults,
                continues,
            }),
            _ => serde_json::from_slice(bytes),
        }
    }
}

/// [`Request::Import`] as a plain struct, for [`Request::decode`].
#[derive(Deserialize)]
struct ImportWire {
    /// Read as a string, as the tagged path reads it (an enum would also take the map
    /// form `{"import":null}`, which the tagged path refuses).
    op: String,
    list: List,
    lines: Vec<(u64, String)>,
    #[serde(default)]
    defaults: ImportDefaults,
    #[serde(default)]
    continues: bool,
}

/// Options that apply to every line of an import (each may be left out).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ImportDefaults {
    /// Seconds until the entries expire.
    pub ttl_secs: Option<u64>,
    /// Reason.
    pub reason: Option<String>,
    /// Source (default `manual`).
    pub source: Option<String>,
    /// Allow world-blocking denies.
    pub force: bool,
}

/// The protocol version this agent speaks, sent in every answer. Additions (new ops, new
/// fields) keep the number; a change that breaks existing scripts raises it.
///
/// 2: a `clear` with neither `kind` nor `source` needs `all: true`. Agents answering 1
/// emptied the whole list, except the last few builds before the number was raised, which
/// already refused.
pub const PROTOCOL_VERSION: u32 = 2;

/// One response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// What went wrong, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The result.
    #[serde(default)]
    pub result: serde_json::Value,
    /// The agent's [`PROTOCOL_VERSION`] (0 from agents older than the field). Last, so that
    /// scripts matching an answer's start (`{"ok":true`) keep working.
    #[serde(default)]
    pub version: u32,
}

impl Response {
    /// A success.
    pub fn ok(result: impl Serialize) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            ok: true,
            error: None,
            result: serde_json::to_value(result).unwrap_or_default(),
        }
    }

    /// A failure.
    pub fn err(message: impl std::fmt::Display) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            ok: false,
            error: Some(message.to_string()),
            result: serde_json::Value::Null,
        }
    }
}

/// Longest request line the agent reads (an import batch fits; a runaway client does not).
pub const MAX_REQUEST: usize = 64 << 20;

/// One identifier from the attack list, before validation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbsItem {
    /// Kind.
    pub kind: Kind,
    /// Cookie / API-key name.
    pub name: Option<String>,
    /// Value (clear text or `sha256:` digest).
    pub value: String,
    /// Seconds to live.
    pub ttl: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_import_decodes_the_same_on_the_direct_path() {
        let tagged = |line: &str| {
            serde_json::from_str::<Request>(line)
                .map(|r| format!("{r:?}"))
                .map_err(|e| e.to_string())
        };
        let direct = |line: &str| {
            Request::decode(line.as_bytes())
                .map(|r| format!("{r:?}"))
                .map_err(|e| e.to_string())
        };
        for line in [
            r#"{"op":"import","list":"deny","lines":[[1,"ip 198.18.0.1"],[3,"token a"]]}"#,
            r#"{"lines":[[1,"x"]],"continues":true,"list":"allow","op":"import","defaults":{"ttl_secs":60,"reason":"r","force":true}}"#,
            r#"{"op":"import","list":"deny","lines":[],"extra":1}"#,
            r#"{"op":"add","list":"deny","kind":"ip","value":"198.18.0.1"}"#,
            r#"{"op":"status"}"#,
            // Refused either way, with the tagged path's message.
            r#"{"op":"import","list":"deny","lines":[[1,2]]}"#,
            r#"{"op":"import","list":"grey","lines":[]}"#,
            r#"{"op":"import","op":"add","list":"deny","lines":[]}"#,
            r#"{"op":{"import":null},"list":"deny","lines":[[1,"ip 198.18.0.1"]]}"#,
            r#"["import","deny",[[1,"ip 198.18.0.1"]]]"#,
            r#"{"op":"Import","list":"deny","lines":[]}"#,
            r#"{"op":"import","list":"deny","lines":[[1,"x"]]"#,
            "not json",
        ] {
            assert_eq!(direct(line), tagged(line), "{line}");
        }
    }

    #[test]
    fn answers_carry_the_version_and_old_answers_still_parse() {
        let line = serde_json::to_string(&Response::ok(7)).expect("encode");
        assert!(line.starts_with(r#"{"ok":true,"#), "{line}");
        let version = format!(r#","version":{PROTOCOL_VERSION}}}"#);
        assert!(line.ends_with(&version), "{line}");
        let old: Response =
            serde_json::from_str(r#"{"ok":false,"error":"x"}"#).expect("an older agent's answer");
        assert_eq!((old.version, old.ok), (0, false));
    }
}
