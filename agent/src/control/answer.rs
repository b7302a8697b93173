//! The control API's answers, typed: the agent builds them, the CLI, the metrics and the
//! tests read them. Their JSON field names are the contract scripts rely on (README "Control
//! API"; the golden tests below pin them): a field may be added without raising
//! [`super::proto::PROTOCOL_VERSION`], never renamed or removed. Readers ignore fields they
//! do not know, and a field added after the first release says `#[serde(default)]`, so a
//! CLI and an agent one release apart still read each other. Every other field is required:
//! an answer that lacks one is refused, not read as zero. (A new *value* of an enum field
//! is refused as unknown.)

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Mode;
use crate::kernel::AttachMode;
use crate::model::{Entry, Kind, List};

/// The answer to `credentials`: the sideband's tokens (as hints) and switch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidebandCredentials {
    /// Whether sideband requests need a valid `ASE-Token`.
    pub authentication: bool,
    /// The tokens.
    pub tokens: Vec<TokenView>,
    /// The token just created, shown this once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Whether the token named was deleted (`delete-token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<bool>,
    /// Whether the REST API has a secret key (without one it refuses everyone).
    pub rest_secret_set: bool,
}

/// A sideband token as listed: never the token itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    /// Its first four characters.
    pub hint: String,
    /// Its SHA-256, first 12 hex digits.
    pub fingerprint: String,
    /// Unix seconds.
    pub created: i64,
}

/// The answer to `add`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Added {
    /// The entry as stored.
    pub entry: EntryView,
    /// Whether it was new (false: updated reason or expiry).
    pub new: bool,
    /// Whether the kernel now enforces it.
    pub enforced_in_kernel: bool,
}

/// An entry as `list` and `remove` answer it: secrets as fingerprints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryView {
    /// allow or deny.
    pub list: List,
    /// Kind.
    pub kind: Kind,
    /// Cookie / API-key name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Value or fingerprint.
    pub value: String,
    /// Source (`manual`, `abs`, `checker`, … or what an import named).
    pub source: String,
    /// Reason.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// API scope.
    #[serde(default, skip_serializing_if = "String::is_empty")]
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

/// The answer to `abs-push`, and what one ABS sync changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorReport {
    /// Rows added or refreshed.
    pub added: usize,
    /// Rows removed.
    pub removed: usize,
    /// Items refused (invalid, or would block everyone or this host).
    pub skipped: usize,
    /// Rows the list no longer held that were kept: the answer was not wholly readable, or
    /// it shrank the list by more than `abs.max_shrink` and awaits the next poll.
    #[serde(default)]
    pub held: usize,
    /// Whether `held` is a shrink awaiting confirmation by the next poll.
    #[serde(default)]
    pub shrink_held: bool,
    /// ABS blocking is off: nothing was applied.
    #[serde(default)]
    pub off: bool,
    /// The held shrink's digest (`service::digest`), for the next poll to confirm.
    #[serde(skip)]
    pub held_digest: Option<u64>,
}

/// The answer to one `import` batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Imported {
    /// Entries accepted (new or updated).
    pub accepted: usize,
    /// New rows.
    pub new: usize,
    /// `(line, reason)` of lines refused.
    pub rejected: Vec<(u64, String)>,
}

/// The answer to `status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    /// Enforce or monitor.
    pub mode: Mode,
    /// Where the filter is (or was) attached.
    pub interfaces: Vec<Interface>,
    /// The bpffs directory of the pinned maps and links.
    pub pin_dir: PathBuf,
    /// The database file.
    pub database: PathBuf,
    /// Rows by list, kind and source.
    pub lists: Vec<ListCount>,
    /// IP entries the kernel holds.
    pub kernel_ip_entries: usize,
    /// The ABS feed, when configured.
    pub abs: Option<AbsState>,
    /// The fleet link, when configured (no digest: `portcullis fleet status` has it).
    #[serde(default)]
    pub fleet: Option<FleetState>,
    /// Seconds since the agent started.
    pub uptime_secs: u64,
    /// Whether detections deny-list their culprits (agents before it: on).
    #[serde(default = "on")]
    pub detections: bool,
    /// Whether the ABS list is enforced (agents before it: on).
    #[serde(default = "on")]
    pub abs_blocking: bool,
    /// `enable_blocking` set by the CLI per API, over the API files.
    #[serde(default)]
    pub api_blocking: std::collections::BTreeMap<String, bool>,
}

fn on() -> bool {
    true
}

/// The answer to `switch`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switched {
    /// `detections`, `abs`, or `api-blocking NAME`.
    pub switch: String,
    /// Its state now.
    pub on: bool,
    /// Rows taken off the deny list because it went off (detections' or ABS's).
    pub removed: usize,
}

/// Whether the filter is on an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// The program runs on it.
    #[default]
    Attached,
    /// An operator took it off (`portcullis detach`); the agent leaves it off.
    Detached,
}

/// One interface in `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// The interface.
    pub iface: String,
    /// Attached or detached (agents before it: attached).
    #[serde(default)]
    pub state: LinkState,
    /// The mode the kernel runs it in (none while detached).
    pub xdp_mode: Option<AttachMode>,
    /// Why native was refused, when it fell back to generic.
    pub fell_back: Option<String>,
    /// The link was left pinned by an earlier agent and reused.
    pub reused_pinned_link: bool,
}

/// One interface in the answer to `attach`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The interface.
    pub iface: String,
    /// The mode the kernel accepted.
    pub xdp_mode: AttachMode,
    /// Why native was refused, when it fell back to generic.
    pub fell_back: Option<String>,
    /// The link was left pinned by an earlier agent and reused.
    pub reused_pinned_link: bool,
}

/// Rows of one list, kind and source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListCount {
    /// allow or deny.
    pub list: List,
    /// Kind.
    pub kind: Kind,
    /// Source.
    pub source: String,
    /// Rows.
    pub count: u64,
}

/// The fleet link's state (`portcullis fleet status`, and `status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FleetState {
    /// The fleet's name.
    pub fleet: String,
    /// This host's name in the records it publishes.
    pub host: String,
    /// Redis, password hidden.
    pub redis: String,
    /// `starting`, `in sync`, `resyncing` or `unreachable`.
    pub state: String,
    /// The fleet's epoch this host follows.
    pub epoch: String,
    /// The last log id applied.
    pub position: String,
    /// Milliseconds between the last record applied being logged and applied here.
    pub lag_ms: Option<u64>,
    /// Local changes waiting to be published.
    pub queued: u64,
    /// Local changes published since start.
    pub published: u64,
    /// Log records applied since start.
    pub applied: u64,
    /// Records skipped as malformed since start.
    pub skipped: u64,
    /// Records this host's safety rules refused since start.
    pub refused: u64,
    /// Snapshot loads since start.
    pub resyncs: u64,
    /// Why the link is down, when it is.
    pub last_error: Option<String>,
    /// When Redis last answered (unix seconds).
    pub last_contact: Option<i64>,
    /// Local changes were lost to a full queue; the fleet rebuilds at the next sync.
    pub overflowed: bool,
    /// A digest of this host's unexpired entries (equal on hosts in step).
    pub digest: String,
    /// How many distinct entries the digest covers.
    pub entries: u64,
}

/// The ABS feed's state, as `status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AbsState {
    /// Feed URL.
    pub url: String,
    /// Unix seconds of the last good sync.
    pub last_success: Option<i64>,
    /// Unix seconds of the last attempt.
    pub last_attempt: Option<i64>,
    /// The last failure, if the last attempt failed.
    pub last_error: Option<String>,
    /// Items in the last good list.
    pub listed: usize,
    /// Failed polls since start.
    pub failures: u64,
    /// Items skipped since start (invalid or unsafe).
    pub skipped: u64,
    /// Unknown identifier types seen since start.
    pub unknown_types: u64,
    /// Items of the last good list that could not be read (while any, nothing is removed).
    #[serde(default)]
    pub unreadable: usize,
    /// Rows the last good list no longer held but that were kept.
    #[serde(default)]
    pub removals_held: usize,
    /// Whether those await the next poll's confirmation of a large shrink.
    #[serde(default)]
    pub shrink_held: bool,
    /// Detections reported.
    pub reported: u64,
    /// Detections dropped because the queue was full.
    pub report_dropped: u64,
    /// Detections waiting.
    pub report_queued: usize,
}

/// The answer to `stats`: counters by verdict name (the XDP program's, then the checker's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// All interfaces together.
    pub kernel: BTreeMap<String, Counter>,
    /// By interface (`other`: interfaces without their own slot; none from agents before it).
    #[serde(default)]
    pub interfaces: BTreeMap<String, BTreeMap<String, Counter>>,
    /// Requests by L7 outcome (empty without the checker).
    pub l7: BTreeMap<String, u64>,
}

/// Packets and bytes of one verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The answer to `api-list`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ApiList {
    /// The loaded definitions.
    pub apis: Vec<ApiSummary>,
    /// The files refused, with why.
    pub errors: Vec<String>,
}

/// One loaded API definition, in brief.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ApiSummary {
    /// Name (the file's stem).
    pub name: String,
    /// Host it answers for (`*`: any).
    pub hostname: String,
    /// URL prefix.
    pub url: String,
    /// Backends as `host:port`.
    pub servers: Vec<String>,
    /// Whether its list checks block (false: counted only).
    pub enable_blocking: bool,
    /// Whether it is a decoy.
    pub decoy: bool,
    /// Fields of its file this agent does not understand.
    #[serde(default)]
    pub ignored_fields: Vec<String>,
}

/// The answer to `api-show`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ApiShown {
    /// Name (the file's stem).
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// The definition as understood, in the file's own shape.
    pub api_metadata: serde_json::Value,
    /// The decoy paths in full, as matched (`decoy_subpaths` resolved against `url`).
    #[serde(default)]
    pub decoy_paths: Vec<String>,
    /// Fields of its file this agent does not understand, by path.
    #[serde(default)]
    pub ignored_fields: Vec<String>,
}

/// One entry's hits (`allow|deny list --hits`), from the kernel's per-slot counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryHits {
    /// The entry (an IP or CIDR).
    pub entry: String,
    /// Packets it decided (allow: passed, deny: dropped or, in monitor mode, would have)
    /// since the agent started.
    pub packets: u64,
    /// Bytes of those packets (whole frames).
    #[serde(default)]
    pub bytes: u64,
    /// Unix seconds of the last counter read (once a second) that saw it grow.
    pub last_hit: i64,
}

/// The answer to `reload`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloaded {
    /// What the reload changed, one line each (empty: the file says what runs already).
    pub applied: Vec<String>,
    /// Settings whose new value takes effect only at the next restart (dotted TOML keys),
    /// compared with what the agent started with.
    pub restart_needed: Vec<String>,
}

/// The answer to `api-reload`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ApiReloaded {
    /// Definitions now loaded.
    pub loaded: usize,
    /// The files refused, with why.
    pub errors: Vec<String>,
}

/// The answer to `backup`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BackupMade {
    /// The copy, in the state directory.
    pub path: PathBuf,
}

/// The answer to `restore`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Restored {
    /// Rows now on the lists.
    pub rows: u64,
    /// A copy of the lists as they were before.
    pub previous: PathBuf,
}

/// The answer to `detach`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Detached {
    /// The interfaces the filter was taken off.
    pub detached: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_back_as_written_and_omit_empty_fields() {
        let e = Entry::sample(List::Deny, Kind::Token, None, "t0ken");
        let view = EntryView::from(&e);
        let json = serde_json::to_value(&view).expect("encode");
        assert!(
            json.get("name").is_none() && json.get("api").is_none(),
            "{json}"
        );
        assert!(
            !json["value"].as_str().unwrap_or("").contains("t0ken"),
            "{json}"
        );
        let back: EntryView = serde_json::from_value(json).expect("decode");
        assert_eq!(back, view);
    }

    /// The names scripts read (`jq .interfaces[0].state`): a rename must fail here.
    #[test]
    fn answers_keep_the_field_names_scripts_read() {
        let status = Status {
            interfaces: vec![Interface {
                iface: "eth0".into(),
                state: LinkState::Detached,
                ..Interface::default()
            }],
            lists: vec![ListCount {
                list: List::Deny,
                kind: Kind::ApiKey,
                source: "abs".into(),
                count: 3,
            }],
            kernel_ip_entries: 7,
            ..Status::default()
        };
        let golden = serde_json::json!({
            "mode": "enforce",
            "interfaces": [{"iface": "eth0", "state": "detached", "xdp_mode": null,
                            "fell_back": null, "reused_pinned_link": false}],
            "pin_dir": "", "database": "",
            "lists": [{"list": "deny", "kind": "api-key", "source": "abs", "count": 3}],
            "kernel_ip_entries": 7, "abs": null, "fleet": null, "uptime_secs": 0,
            "detections": false, "abs_blocking": false, "api_blocking": {},
        });
        assert_eq!(serde_json::to_value(&status).expect("encode"), golden);
        let mut stats = Stats::default();
        let c = Counter {
            packets: 2,
            bytes: 196,
        };
        stats.kernel.insert("drop_denied".into(), c);
        stats.interfaces.insert("eth0".into(), stats.kernel.clone());
        stats.l7.insert("blocked".into(), 1);
        let golden = serde_json::json!({
            "kernel": {"drop_denied": {"packets": 2, "bytes": 196}},
            "interfaces": {"eth0": {"drop_denied": {"packets": 2, "bytes": 196}}},
            "l7": {"blocked": 1},
        });
        assert_eq!(serde_json::to_value(&stats).expect("encode"), golden);
        let e = Entry::sample(List::Allow, Kind::Ip, None, "198.18.0.1");
        let added = Added {
            entry: EntryView::from(&e),
            new: true,
            enforced_in_kernel: true,
        };
        let json = serde_json::to_value(&added).expect("encode");
        for key in ["list", "kind", "value", "source", "created", "expires"] {
            assert!(json["entry"].get(key).is_some(), "{key} missing: {json}");
        }
        assert_eq!(
            (&json["new"], &json["enforced_in_kernel"]),
            (&true.into(), &true.into())
        );
        let attach = Attachment {
            iface: "eth0".into(),
            ..Attachment::default()
        };
        let golden = serde_json::json!({"iface": "eth0", "xdp_mode": "native",
                                        "fell_back": null, "reused_pinned_link": false});
        assert_eq!(serde_json::to_value(&attach).expect("encode"), golden);
    }

    #[test]
    fn an_older_agents_answers_read_and_a_truncated_one_does_not() {
        // Before interfaces had a `state` (and stats per interface).
        let old = r#"{"mode":"monitor","interfaces":[{"iface":"eth0","xdp_mode":"generic",
                      "fell_back":null,"reused_pinned_link":true}],"pin_dir":"/sys/fs/bpf/p",
                      "database":"/var/lib/portcullis/portcullis.db","lists":[],
                      "kernel_ip_entries":2,"abs":null,"uptime_secs":5}"#;
        let s: Status = serde_json::from_str(old).expect("an older agent's status");
        assert_eq!((s.mode, s.kernel_ip_entries), (Mode::Monitor, 2));
        assert_eq!(s.interfaces[0].state, LinkState::Attached);
        let st: Stats = serde_json::from_str(r#"{"kernel":{},"l7":{}}"#).expect("older stats");
        assert!(st.interfaces.is_empty());
        // A missing required field is an error, never a silent zero.
        assert!(serde_json::from_str::<BackupMade>("{}").is_err());
        assert!(serde_json::from_str::<Imported>(r#"{"new":1,"rejected":[]}"#).is_err());
    }

    #[test]
    fn batch_and_file_answers_keep_their_names() {
        let cases = [
            (
                serde_json::to_value(Imported {
                    accepted: 2,
                    new: 1,
                    rejected: vec![(3, "bad".into())],
                }),
                serde_json::json!({"accepted": 2, "new": 1, "rejected": [[3, "bad"]]}),
            ),
            (
                serde_json::to_value(MirrorReport::default()),
                serde_json::json!({"added": 0, "removed": 0, "skipped": 0, "held": 0, "shrink_held": false, "off": false}),
            ),
            (
                serde_json::to_value(Restored {
                    rows: 7,
                    previous: "/s/p.db".into(),
                }),
                serde_json::json!({"rows": 7, "previous": "/s/p.db"}),
            ),
            (
                serde_json::to_value(Detached {
                    detached: vec!["eth0".into()],
                }),
                serde_json::json!({"detached": ["eth0"]}),
            ),
            (
                serde_json::to_value(BackupMade {
                    path: "/s/b.db".into(),
                }),
                serde_json::json!({"path": "/s/b.db"}),
            ),
            (
                serde_json::to_value(Switched {
                    switch: "abs".into(),
                    on: false,
                    removed: 3,
                }),
                serde_json::json!({"switch": "abs", "on": false, "removed": 3}),
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got.expect("encode"), want);
        }
    }

    #[test]
    fn an_answer_with_fields_this_reader_does_not_know_still_reads() {
        let newer = r#"{"added":1,"removed":2,"skipped":0,"deferred":5}"#;
        let r: MirrorReport = serde_json::from_str(newer).expect("a newer agent's answer");
        assert_eq!((r.added, r.removed), (1, 2));
    }
}
