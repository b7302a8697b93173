//! The attack list as ABS sends it, parsed straight into typed items (the shapes are in the
//! module doc of `abs`).

use serde::Deserialize;

use super::AbsError;
use crate::control::proto::AbsItem;
use crate::model::Kind;

/// The parsed list: items, plus what was skipped.
#[derive(Debug, Default)]
pub struct AttackList {
    /// Items of known kinds.
    pub items: Vec<AbsItem>,
    /// Unknown keys of `attacklist`.
    pub unknown: Vec<String>,
}

/// One item as ABS sends it: a string, an object, or (skipped) anything else.
#[derive(Deserialize)]
#[serde(untagged)]
enum ItemDoc {
    Plain(String),
    Full {
        value: String,
        #[serde(default)]
        ttl: Option<u64>,
        #[serde(default)]
        name: Option<String>,
    },
    Other(serde::de::IgnoredAny),
}

/// The document: `attacklist` kept as raw JSON slices per key, each then deserialized
/// straight into typed items (no intermediate JSON tree: a 1M-item list would otherwise cost
/// hundreds of MB while it is parsed).
#[derive(Deserialize)]
struct Doc<'a> {
    #[serde(borrow)]
    attacklist: std::collections::BTreeMap<String, &'a serde_json::value::RawValue>,
}

fn items(kind: Kind, name: Option<&str>, docs: Vec<ItemDoc>, out: &mut Vec<AbsItem>) {
    out.extend(docs.into_iter().filter_map(|d| match d {
        ItemDoc::Plain(value) => Some(AbsItem {
            kind,
            name: name.map(str::to_owned),
            value,
            ttl: None,
        }),
        ItemDoc::Full {
            value,
            ttl,
            name: n,
        } => Some(AbsItem {
            kind,
            name: n.or_else(|| name.map(str::to_owned)),
            value,
            ttl: ttl.filter(|t| *t > 0),
        }),
        ItemDoc::Other(_) => None,
    }));
}

/// Parses an attack list document (see the module doc). Items of the wrong JSON type are
/// skipped; a document without `attacklist`, or with a list that is not a list, is an error.
pub fn parse_attacklist(body: &[u8]) -> Result<AttackList, AbsError> {
    let doc: Doc<'_> = serde_json::from_slice(body).map_err(|e| AbsError::Parse(e.to_string()))?;
    let mut out = AttackList::default();
    for (key, raw) in doc.attacklist {
        let list = |what: &str| -> Result<Vec<ItemDoc>, AbsError> {
            serde_json::from_str(raw.get())
                .map_err(|e| AbsError::Parse(format!("attacklist.{what}: {e}")))
        };
        match key.as_str() {
            "ips" => items(Kind::Ip, None, list("ips")?, &mut out.items),
            "oauth_tokens" | "tokens" => items(Kind::Token, None, list(&key)?, &mut out.items),
            "api_keys" => items(Kind::ApiKey, None, list("api_keys")?, &mut out.items),
            "usernames" => items(Kind::Username, None, list("usernames")?, &mut out.items),
            "cookies" => {
                let by_name: std::collections::BTreeMap<String, Vec<ItemDoc>> =
                    serde_json::from_str(raw.get())
                        .map_err(|e| AbsError::Parse(format!("attacklist.cookies: {e}")))?;
                for (name, docs) in by_name {
                    items(Kind::Cookie, Some(&name), docs, &mut out.items);
                }
            }
            other => out.unknown.push(other.chars().take(64).collect()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_shape() {
        let body = br#"{"attacklist":{"ips":["203.0.113.7",{"value":"192.0.2.1","ttl":60},42],
            "cookies":{"JSESSIONID":["abc",{"value":"def","ttl":5}]},"oauth_tokens":["t"],
            "api_keys":["k1",{"name":"X-API-Key","value":"k2"}],"usernames":["mallory"],"devices":["x"]}}"#;
        let l = parse_attacklist(body).expect("parses");
        assert_eq!(l.items.len(), 8, "{:?}", l.items);
        assert_eq!(l.unknown, vec!["devices".to_string()]);
        assert!(l.items.contains(&AbsItem {
            kind: Kind::Cookie,
            name: Some("JSESSIONID".into()),
            value: "def".into(),
            ttl: Some(5)
        }));
        assert!(l.items.contains(&AbsItem {
            kind: Kind::ApiKey,
            name: Some("X-API-Key".into()),
            value: "k2".into(),
            ttl: None
        }));
        assert!(parse_attacklist(b"{\"attacklist\":").is_err());
        assert!(parse_attacklist(b"{\"other\":{}}").is_err());
        assert!(parse_attacklist(b"[]").is_err());
    }
}
