//! The attack list as ABS sends it, parsed as it arrives straight into typed items (the
//! shapes are in the module doc of `abs`).

use std::cell::RefCell;

use serde::de;

use super::AbsError;
use crate::control::proto::AbsItem;
use crate::model::Kind;

/// The parsed list: items, plus what was skipped.
#[derive(Debug, Default)]
pub struct AttackList {
    /// Items of known kinds.
    pub items: Vec<AbsItem>,
    /// Unknown keys of `attacklist` (the first [`MAX_UNKNOWN`]).
    pub unknown: Vec<String>,
    /// Items that could not be read: of no known shape, or under an unknown key. While
    /// there are any, the list is not the whole truth, and the mirror removes nothing.
    pub unreadable: usize,
}

/// Unknown keys kept for the log and `status`.
const MAX_UNKNOWN: usize = 32;

/// One item as ABS sends it, or one field of an item: a string, a number, null, an object
/// (its `value`, `ttl` and `name`, and whether one of them had the wrong type), or anything
/// else, skipped. Read by hand, one visitor for both: serde's untagged enums copy every item
/// into a tree first.
enum Shallow {
    Text(String),
    Number(u64),
    Null,
    Object {
        value: Option<String>,
        ttl: Option<u64>,
        name: Option<String>,
        bad: bool,
    },
    Other,
}

/// An item: `Plain` or `Full` when it names a value, else skipped.
enum ItemDoc {
    Plain(String),
    Full {
        value: String,
        ttl: Option<u64>,
        name: Option<String>,
    },
    Other,
}

impl From<Shallow> for ItemDoc {
    fn from(s: Shallow) -> Self {
        match s {
            Shallow::Text(v) => ItemDoc::Plain(v),
            // A field of the wrong type makes the item invalid (skipped, counted), never the
            // list: a TTL that does not read must not turn into "forever" either.
            Shallow::Object {
                value: Some(value),
                ttl,
                name,
                bad: false,
            } => ItemDoc::Full { value, ttl, name },
            _ => ItemDoc::Other,
        }
    }
}

impl<'de> de::Deserialize<'de> for ItemDoc {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Shallow::deserialize(d).map(ItemDoc::from)
    }
}

impl<'de> de::Deserialize<'de> for Shallow {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ShallowVisitor { field: false })
    }
}

/// A field of an item: an object there is read past, not into (however deep it nests, it
/// only makes its item invalid).
struct Field(Shallow);

impl<'de> de::Deserialize<'de> for Field {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ShallowVisitor { field: true }).map(Field)
    }
}

struct ShallowVisitor {
    /// Reading a field: an object is skipped whole.
    field: bool,
}

impl<'de> de::Visitor<'de> for ShallowVisitor {
    type Value = Shallow;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an item")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Shallow, E> {
        Ok(Shallow::Text(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Shallow, E> {
        Ok(Shallow::Text(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Shallow, E> {
        Ok(Shallow::Number(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Shallow, E> {
        Ok(Shallow::Null)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Shallow, E> {
        Ok(Shallow::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Shallow, E> {
        Ok(Shallow::Other)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Shallow, E> {
        Ok(Shallow::Other)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Shallow, A::Error> {
        if self.field {
            while map
                .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                .is_some()
            {}
            return Ok(Shallow::Other);
        }
        let (mut value, mut ttl, mut name, mut bad) = (None, None, None, false);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if !matches!(&*key, "value" | "ttl" | "name") {
                map.next_value::<de::IgnoredAny>()?;
                continue;
            }
            match (&*key, map.next_value::<Field>()?.0) {
                ("value", Shallow::Text(v)) => value = Some(v),
                ("name", Shallow::Text(n)) => name = Some(n),
                ("ttl", Shallow::Number(t)) => ttl = Some(t),
                (_, Shallow::Null) => {}
                _ => bad = true,
            }
        }
        Ok(Shallow::Object {
            value,
            ttl,
            name,
            bad,
        })
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Shallow, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(Shallow::Other)
    }
}

/// Parses an attack list document (see the module doc) from `read` as it arrives: items go
/// straight into the typed list, with no copy of the document and no JSON tree (a
/// million-item list would otherwise cost hundreds of MB while it is parsed). Items of the
/// wrong JSON type are skipped and counted as unreadable; a document with neither
/// `attacklist` nor a list of identifiers at the top, or with a list that is not a list, is
/// an error.
pub fn read_attacklist(read: impl std::io::Read, max_items: usize) -> Result<AttackList, AbsError> {
    let at = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::new(read));
    let doc = DocVisitor { at: &at, max_items };
    de::Deserializer::deserialize_map(&mut de, doc)
        .and_then(|l| de.end().map(|()| l))
        .map_err(|e| {
            let what = match at.borrow().as_ref() {
                Some(key) => format!("attacklist.{key}: {e}"),
                None => e.to_string(),
            };
            AbsError::Parse(redact(&what))
        })
}

/// [`read_attacklist`] over a document in memory.
pub fn parse_attacklist(body: &[u8], max_items: usize) -> Result<AttackList, AbsError> {
    read_attacklist(body, max_items)
}

/// A parse error as the log and `status` may show it: quoted text (which may be a token
/// of the list) replaced by its length, and at most 300 characters.
fn redact(message: &str) -> String {
    let mut out = String::new();
    let mut quoted: Option<usize> = None;
    for c in message.chars() {
        match (c, quoted) {
            ('"', None) => quoted = Some(0),
            ('"', Some(n)) => {
                out.push_str(&format!("<{n} characters>"));
                quoted = None;
            }
            (_, Some(n)) => quoted = Some(n + 1),
            (c, None) => out.push(c),
        }
    }
    out.chars().take(300).collect()
}

/// The document: `attacklist`, or the lists themselves at the top. `at` says which list is
/// being read (for errors); at most `max_items` are kept.
struct DocVisitor<'a> {
    at: &'a RefCell<Option<String>>,
    max_items: usize,
}

impl<'de> de::Visitor<'de> for DocVisitor<'_> {
    type Value = AttackList;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object with \"attacklist\" or lists of identifiers")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<AttackList, A::Error> {
        // The list in its envelope (`{"attacklist": {...}, "message", "date", ...}`), or
        // bare (`{"ips": [...], ...}`, the shape ABS publishes for PUT and DELETE); other
        // keys beside them are the envelope's.
        let mut out = AttackList::default();
        let mut found = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "attacklist" {
                let inner = map.next_value_seed(ListSeed {
                    at: self.at,
                    max_items: self.max_items.saturating_sub(out.items.len()),
                })?;
                out.items.extend(inner.items);
                out.unknown.extend(inner.unknown);
                out.unreadable += inner.unreadable;
                found = true;
            } else if read_kind(&key, &mut map, &mut out, self.at, self.max_items)? {
                found = true;
            } else if matches!(key.as_str(), "message" | "date" | "status_code" | "status") {
                map.next_value::<de::IgnoredAny>()?;
            } else {
                // Beside a bare list, another key may be a kind ABS renamed: unreadable.
                if out.unknown.len() < MAX_UNKNOWN {
                    out.unknown.push(key.chars().take(64).collect());
                }
                out.unreadable += map.next_value::<Count>()?.0;
            }
        }
        if !found {
            return Err(de::Error::custom(
                "no attacklist object and no list of identifiers (ips, cookies, oauth_tokens, api_keys, usernames)",
            ));
        }
        Ok(out)
    }
}

/// `attacklist`: a list of items per kind (`cookies`: per cookie name).
struct ListSeed<'a> {
    at: &'a RefCell<Option<String>>,
    max_items: usize,
}

impl<'de> de::DeserializeSeed<'de> for ListSeed<'_> {
    type Value = AttackList;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<AttackList, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> de::Visitor<'de> for ListSeed<'_> {
    type Value = AttackList;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("lists of items by kind")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<AttackList, A::Error> {
        let mut out = AttackList::default();
        while let Some(key) = map.next_key::<String>()? {
            if !read_kind(&key, &mut map, &mut out, self.at, self.max_items)? {
                if out.unknown.len() < MAX_UNKNOWN {
                    out.unknown.push(key.chars().take(64).collect());
                }
                out.unreadable += map.next_value::<Count>()?.0;
            }
        }
        Ok(out)
    }
}

/// The kind ABS's key names, if it names one.
fn kind_of(key: &str) -> Option<Kind> {
    Some(match key {
        "ips" => Kind::Ip,
        "oauth_tokens" | "tokens" => Kind::Token,
        "api_keys" => Kind::ApiKey,
        "usernames" => Kind::Username,
        "cookies" => Kind::Cookie,
        _ => return None,
    })
}

/// Reads the value of `key` into `out` when the key names a kind; false (value unread)
/// when it does not.
fn read_kind<'de, A: de::MapAccess<'de>>(
    key: &str,
    map: &mut A,
    out: &mut AttackList,
    at: &RefCell<Option<String>>,
    max_items: usize,
) -> Result<bool, A::Error> {
    let Some(kind) = kind_of(key) else {
        return Ok(false);
    };
    *at.borrow_mut() = Some(key.chars().take(64).collect());
    map.next_value_seed(ItemsSeed {
        kind,
        name: None,
        items: Items {
            out: &mut out.items,
            max: max_items,
            unreadable: &mut out.unreadable,
        },
    })?;
    *at.borrow_mut() = None;
    Ok(true)
}

/// How many items a value of an unknown kind holds (a list's or object's entries, one for a
/// scalar, none for `null`), read past without keeping any.
struct Count(usize);

impl<'de> de::Deserialize<'de> for Count {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Count, E> {
                Ok(Count(0))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Count, E> {
                Ok(Count(1))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Count, E> {
                Ok(Count(1))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Count, E> {
                Ok(Count(1))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Count, E> {
                Ok(Count(1))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Count, E> {
                Ok(Count(1))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
                let mut n = 0;
                while seq.next_element::<de::IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Count(n))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Count, A::Error> {
                let mut n = 0;
                while map
                    .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                    .is_some()
                {
                    n += 1;
                }
                Ok(Count(n))
            }
        }
        d.deserialize_any(V)
    }
}

/// Where the items go, how many may, and the count of those that could not be read.
struct Items<'a> {
    out: &'a mut Vec<AbsItem>,
    max: usize,
    unreadable: &'a mut usize,
}

/// One list of items, appended as they are read; for cookies (without a `name` yet), a
/// list per cookie name.
struct ItemsSeed<'a> {
    kind: Kind,
    name: Option<&'a str>,
    items: Items<'a>,
}

impl<'de> de::DeserializeSeed<'de> for ItemsSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.kind == Kind::Cookie && self.name.is_none() {
            d.deserialize_map(self)
        } else {
            d.deserialize_seq(self)
        }
    }
}

impl<'de> de::Visitor<'de> for ItemsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.name.is_none() && self.kind == Kind::Cookie {
            "lists of items by cookie name"
        } else {
            "a list"
        })
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Items {
            out,
            max,
            unreadable,
        } = self.items;
        while let Some(name) = map.next_key::<String>()? {
            map.next_value_seed(ItemsSeed {
                kind: self.kind,
                name: Some(&name),
                items: Items {
                    out: &mut *out,
                    max,
                    unreadable: &mut *unreadable,
                },
            })?;
        }
        Ok(())
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(doc) = seq.next_element::<ItemDoc>()? {
            let item = match doc {
                ItemDoc::Plain(value) => AbsItem {
                    kind: self.kind,
                    name: self.name.map(str::to_owned),
                    value,
                    ttl: None,
                },
                ItemDoc::Full { value, ttl, name } => AbsItem {
                    kind: self.kind,
                    name: name.or_else(|| self.name.map(str::to_owned)),
                    value,
                    ttl: ttl.filter(|t| *t > 0),
                },
                ItemDoc::Other => {
                    *self.items.unreadable += 1;
                    continue;
                }
            };
            if self.items.out.len() >= self.items.max {
                return Err(de::Error::custom(format!(
                    "more than {} items (abs.max_items)",
                    self.items.max
                )));
            }
            self.items.out.push(item);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_shape() {
        let body = br#"{"attacklist":{"ips":["203.0.113.7",{"value":"192.0.2.1","ttl":60},42],
            "cookies":{"JSESSIONID":["abc",{"value":"def","ttl":5}]},"oauth_tokens":["t"],
            "api_keys":["k1",{"name":"X-API-Key","value":"k2"}],"usernames":["mallory"],"devices":["x"]}}"#;
        let l = parse_attacklist(body, 100).expect("parses");
        assert_eq!(l.items.len(), 8, "{:?}", l.items);
        assert_eq!(l.unknown, vec!["devices".to_string()]);
        // The number 42, and the one item under the unknown "devices".
        assert_eq!(l.unreadable, 2);
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
        assert!(parse_attacklist(b"{\"attacklist\":", 100).is_err());
        assert!(parse_attacklist(b"{\"other\":{}}", 100).is_err());
        assert!(parse_attacklist(b"[]", 100).is_err());
        let e = parse_attacklist(br#"{"attacklist":{"ips":["a","b","c"]}}"#, 2)
            .expect_err("too many items");
        assert!(e.to_string().contains("more than 2 items"), "{e}");
    }

    #[test]
    fn an_item_with_a_field_of_the_wrong_type_is_skipped_not_the_list() {
        let body = br#"{"attacklist":{"ips":[
            {"value":"198.51.100.1","ttl":"1h"},{"value":42},{"value":"198.51.100.2","ttl":{"a":[1]}},
            {"value":"198.51.100.3","name":["x"]},{"value":"198.51.100.4","ttl":-5},
            {"value":"198.51.100.5","ttl":null,"extra":{"deep":[1,{"x":2}]}}]}}"#;
        let l = parse_attacklist(body, 100).expect("the list reads");
        let values: Vec<&str> = l.items.iter().map(|i| i.value.as_str()).collect();
        assert_eq!(values, ["198.51.100.5"]);
        assert_eq!(l.items[0].ttl, None);
        assert_eq!(l.unreadable, 5, "each skipped item is counted");
        // However deep a field's object nests, it is read past: the item is skipped, the
        // list and its other items stay.
        let deep = format!(
            r#"{{"attacklist":{{"ips":[{{"value":{}1{}}},"198.51.100.6"]}}}}"#,
            r#"{"value":"#.repeat(200),
            "}".repeat(200)
        );
        let l = parse_attacklist(deep.as_bytes(), 100).expect("the list reads");
        let values: Vec<&str> = l.items.iter().map(|i| i.value.as_str()).collect();
        assert_eq!(values, ["198.51.100.6"]);
    }

    #[test]
    fn the_list_reads_with_or_without_its_envelope() {
        let bare =
            br#"{"ips":["203.0.113.7"],"oauth_tokens":["t"],"message":"ok","status_code":200}"#;
        let l = parse_attacklist(bare, 100).expect("bare");
        assert_eq!((l.items.len(), l.unreadable), (2, 0));
        assert!(l.unknown.is_empty(), "envelope keys are not unknown kinds");
        // A kind ABS renamed, beside the bare list: its items are unreadable.
        let renamed = br#"{"ips":["203.0.113.7"],"api_key":["k1","k2"]}"#;
        let l = parse_attacklist(renamed, 100).expect("renamed");
        assert_eq!((l.items.len(), l.unreadable, l.unknown.len()), (1, 2, 1));
        let wrapped = br#"{"message":"ok","date":"2026-12-06","status_code":200,"attacklist":{"ips":["203.0.113.7"],"oauth_tokens":["t"]}}"#;
        let l = parse_attacklist(wrapped, 100).expect("wrapped");
        assert_eq!((l.items.len(), l.unreadable), (2, 0));
        // An empty unknown kind reads nothing that matters; nothing is unreadable.
        let l = parse_attacklist(br#"{"attacklist":{"ips":[],"devices":[]}}"#, 100).expect("x");
        assert_eq!((l.items.len(), l.unreadable), (0, 0));
        let e = parse_attacklist(br#"{"message":"ok"}"#, 100).expect_err("no list");
        assert!(e.to_string().contains("no list of identifiers"), "{e}");
    }

    #[test]
    fn errors_never_quote_the_list() {
        let body = br#"{"attacklist":{"oauth_tokens":"eyJsecret-token-value"}}"#;
        let e = parse_attacklist(body, 100)
            .expect_err("not a list")
            .to_string();
        assert!(!e.contains("secret"), "{e}");
        assert!(
            e.starts_with("ABS answer is not a valid attack list: attacklist.oauth_tokens: "),
            "{e}"
        );
    }
}
