//! One fleet record: an entry's change as the fleet's log and snapshot hold it, and the
//! checks a record from Redis passes before it reaches the list writer.
//!
//! The wire form is a JSON array, `[list, kind, name, value, api, source, origin, reason,
//! created, expires]`: compact (Redis holds one per entry) and parsed by serde, so a record
//! of the wrong shape is refused whole. Secrets travel as the `sha256:` digests the store
//! holds; a record carrying anything else for a cookie, token or API key is refused, never
//! digested (a clear-text secret in Redis is a leak to report, not a value to use).

use serde::{Deserialize, Serialize};

use crate::model::{Entry, Identifier, Kind, List, Source, ident};
use crate::store::ident_key;

/// Longest free-text field (reason, API, source, origin) a record may carry.
const MAX_TEXT: usize = 1024;

/// What a record does to its identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Lists (or refreshes) the entry.
    Add,
    /// Takes the identity off the list on every host, whatever the source (an operator's
    /// removal).
    Remove,
    /// A feed or a detection no longer lists it: the fleet's copies go, rows other sources
    /// hold stay.
    Withdraw,
}

impl Op {
    /// The stream field's value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Op::Add => "a",
            Op::Remove => "r",
            Op::Withdraw => "w",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Wire(
    List,
    Kind,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
);

/// The identity's key in the fleet's snapshot hash: the store's 128-bit identity key (list,
/// kind, name, value), 16 bytes.
pub fn key(list: List, ident: &Identifier) -> Vec<u8> {
    let (a, b) = ident_key(list, ident);
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&a.to_le_bytes());
    k.extend_from_slice(&b.to_le_bytes());
    k
}

/// The wire form of a local entry, published by `origin`.
pub fn encode(e: &Entry, origin: &str) -> String {
    let w = Wire(
        e.list,
        e.ident.kind,
        e.ident.name.clone(),
        e.ident.value.clone(),
        e.api.clone(),
        e.source.as_str().to_owned(),
        origin.to_owned(),
        e.reason.clone(),
        e.created,
        e.expires,
    );
    serde_json::to_string(&w).unwrap_or_default()
}

/// A record read from Redis, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Incoming {
    /// The entry as this host stores it (source `fleet`; the origin and its source in the
    /// reason).
    pub entry: Entry,
    /// The host that published it.
    pub origin: String,
}

/// Why a record from Redis was skipped.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RecordError {
    /// Not the wire form.
    #[error("malformed record: {0}")]
    Shape(String),
    /// The identifier is invalid.
    #[error("invalid identifier: {0}")]
    Identifier(#[from] crate::model::IdentError),
    /// A secret kind whose value is not a digest.
    #[error("a {0} in clear text (records carry digests only)")]
    ClearSecret(Kind),
    /// A free-text field too long or with control characters.
    #[error("{0} must be at most {MAX_TEXT} printable characters")]
    Text(&'static str),
}

/// Checks and decodes a record.
pub fn decode(raw: &[u8]) -> Result<Incoming, RecordError> {
    let Wire(list, kind, name, value, api, source, origin, reason, created, expires) =
        serde_json::from_slice(raw).map_err(|e| RecordError::Shape(e.to_string()))?;
    if kind.is_secret() && !ident::is_digest(&value) {
        return Err(RecordError::ClearSecret(kind));
    }
    for (field, text) in [
        ("api", &api),
        ("source", &source),
        ("origin", &origin),
        ("reason", &reason),
    ] {
        if text.len() > MAX_TEXT || text.chars().any(char::is_control) {
            return Err(RecordError::Text(field));
        }
    }
    let ident = Identifier::parse(kind, (!name.is_empty()).then_some(name.as_str()), &value)?;
    let mut why = format!("{origin}/{source}");
    if !reason.is_empty() {
        why.push_str(": ");
        why.push_str(&reason);
    }
    let cut = (0..=MAX_TEXT.min(why.len()))
        .rev()
        .find(|i| why.is_char_boundary(*i))
        .unwrap_or(0);
    why.truncate(cut);
    Ok(Incoming {
        entry: Entry {
            list,
            ident,
            source: Source::Fleet,
            reason: why,
            api,
            created,
            expires,
        },
        origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: Kind, name: Option<&str>, value: &str) -> Entry {
        Entry {
            reason: "scraper".into(),
            created: 1_700_000_000,
            expires: Some(1_700_003_600),
            ..Entry::sample(List::Deny, kind, name, value)
        }
    }

    #[test]
    fn a_local_entry_round_trips_as_a_fleet_row_with_its_origin() {
        let e = sample(Kind::Token, None, "secret-token");
        let wire = encode(&e, "edge-1");
        assert!(!wire.contains("secret-token"), "digests only: {wire}");
        let got = decode(wire.as_bytes()).expect("decodes");
        assert_eq!(got.origin, "edge-1");
        assert_eq!(got.entry.ident, e.ident);
        assert_eq!(got.entry.source, Source::Fleet);
        assert_eq!(got.entry.reason, "edge-1/manual: scraper");
        assert_eq!(got.entry.expires, e.expires);
        assert_eq!(key(List::Deny, &got.entry.ident), key(List::Deny, &e.ident));
        assert_ne!(key(List::Allow, &e.ident), key(List::Deny, &e.ident));
        let ip = sample(Kind::Ip, None, "198.18.0.7");
        assert_eq!(
            decode(encode(&ip, "h").as_bytes()).expect("ip").entry.ident,
            ip.ident
        );
    }

    #[test]
    fn hostile_records_are_refused_whole() {
        type Check = fn(&RecordError) -> bool;
        let bad: &[(&str, Check)] = &[
            ("", |e| matches!(e, RecordError::Shape(_))),
            ("{\"list\":\"deny\"}", |e| {
                matches!(e, RecordError::Shape(_))
            }),
            (r#"["deny","ip","","198.18.0.7"]"#, |e| {
                matches!(e, RecordError::Shape(_))
            }),
            (
                r#"["deny","ip","","198.18.0.300","","manual","h","",0,null]"#,
                |e| matches!(e, RecordError::Identifier(_)),
            ),
            (
                r#"["deny","ip","","198.18.0.0/33","","manual","h","",0,null]"#,
                |e| matches!(e, RecordError::Identifier(_)),
            ),
            (
                r#"["deny","token","","clear-secret","","manual","h","",0,null]"#,
                |e| matches!(e, RecordError::ClearSecret(Kind::Token)),
            ),
            (
                r#"["deny","cookie","sid","sha256:zz","","manual","h","",0,null]"#,
                |e| matches!(e, RecordError::ClearSecret(Kind::Cookie)),
            ),
            (
                r#"["deny","ip","","198.18.0.7","","manual","h","a\nb",0,null]"#,
                |e| matches!(e, RecordError::Text("reason")),
            ),
            (
                r#"["maybe","ip","","198.18.0.7","","manual","h","",0,null]"#,
                |e| matches!(e, RecordError::Shape(_)),
            ),
            (
                r#"["deny","ip","","198.18.0.7","","manual","h","",0,"soon"]"#,
                |e| matches!(e, RecordError::Shape(_)),
            ),
        ];
        for (raw, want) in bad {
            let err = decode(raw.as_bytes()).expect_err(raw);
            assert!(want(&err), "{raw}: {err:?}");
        }
        let long = format!(
            r#"["deny","ip","","198.18.0.7","","manual","h","{}",0,null]"#,
            "x".repeat(2000)
        );
        assert_eq!(
            decode(long.as_bytes()).expect_err("long"),
            RecordError::Text("reason")
        );
    }
}
