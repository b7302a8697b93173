//! Many entries at once: imports, and the batched kernel-then-store writes that imports and
//! the ABS feed share.

use std::sync::Arc;

use super::{Change, Imported, Service, ServiceError, kernel_deadline, unix_now};
use crate::control::proto::{AddRequest, ImportDefaults};
use crate::model::Cidr;
use crate::model::Entry;
use crate::model::List;
use crate::model::{IdentError, Identifier, Kind};
use crate::store::{IdentKey, ident_key};

/// Lines one import request may carry (the CLI sends 250 000): a prepared line costs a few
/// hundred bytes, so this bounds what one request holds in memory.
pub const MAX_IMPORT_LINES: usize = 250_000;

/// An import batch with its lines parsed and their identifiers digested: the work that needs
/// no list state, done before the batch reaches the list writer (on the control connection's
/// blocking thread, while the writer applies the batch before it).
pub struct PreparedImport {
    list: List,
    /// Checked once here, filled into each line by the writer (never copied per line
    /// before that: a request's memory stays that of its lines).
    defaults: ImportDefaults,
    /// `(line number, request and identifier, or why the line is refused)`; blank and
    /// comment lines are gone.
    lines: Vec<(u64, Result<ParsedLine, String>)>,
}

/// A line's request, the identifier it names and its key in the store.
type ParsedLine = (AddRequest, Identifier, IdentKey);

impl PreparedImport {
    /// Parses `lines` for `list`; refuses the whole request when it has more than
    /// [`MAX_IMPORT_LINES`] lines or defaults no entry could carry.
    pub fn new(
        list: List,
        lines: Vec<(u64, String)>,
        defaults: ImportDefaults,
    ) -> Result<Self, ServiceError> {
        if lines.len() > MAX_IMPORT_LINES {
            return Err(ServiceError::BadRequest(format!(
                "an import request carries at most {MAX_IMPORT_LINES} lines, this one {}",
                lines.len()
            )));
        }
        super::check_text(defaults.reason.as_deref(), "reason")?;
        super::check_text(defaults.source.as_deref(), "source")?;
        let lines = lines
            .into_iter()
            .filter_map(|(no, line)| {
                let parsed = match parse_import_line(&line) {
                    Ok(None) => return None,
                    Ok(Some(req)) => super::identifier_of(&req)
                        .map(|ident| {
                            let key = ident_key(list, &ident);
                            (req, ident, key)
                        })
                        .map_err(|e| e.to_string()),
                    Err(msg) => Err(msg),
                };
                Some((no, parsed))
            })
            .collect();
        Ok(Self {
            list,
            defaults,
            lines,
        })
    }

    /// Lines kept: every line but blank and comment lines, parsed or refused.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether no line is kept.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

impl Drop for PreparedImport {
    /// A batch dropped unapplied (skipped after a failed one, or its connection gone) is
    /// freed on a blocking thread: freeing a quarter of a million lines takes long enough to
    /// stall an async worker. The writer takes the lines out first.
    fn drop(&mut self) {
        if self.lines.len() > 4096
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let lines = std::mem::take(&mut self.lines);
            rt.spawn_blocking(move || drop(lines));
        }
    }
}

impl Service {
    /// Checks and adds one prepared batch of import lines; refused lines are reported by
    /// number.
    pub(crate) fn import(&mut self, mut batch: PreparedImport) -> Result<Imported, ServiceError> {
        let now = unix_now();
        let list = batch.list;
        let defaults = &batch.defaults;
        let lines = std::mem::take(&mut batch.lines);
        let mut out = Imported::default();
        let mut good: Vec<Entry> = Vec::with_capacity(lines.len());
        let mut keys: Vec<IdentKey> = Vec::with_capacity(lines.len());
        for (no, parsed) in lines {
            let entry = parsed.and_then(|(mut req, ident, key)| {
                req.ttl_secs = req.ttl_secs.or(defaults.ttl_secs);
                req.reason = req.reason.or_else(|| defaults.reason.clone());
                req.source = req.source.or_else(|| defaults.source.clone());
                req.force |= defaults.force;
                self.entry_with(list, &req, ident, now)
                    .map(|e| (e, key))
                    .map_err(|e| e.to_string())
            });
            match entry {
                Ok((e, key)) => {
                    good.push(e);
                    keys.push(key);
                }
                Err(msg) => out.rejected.push((no, msg)),
            }
        }
        out.new = self.add_batch(list, &good, Some(&keys))?;
        out.accepted = good.len();
        tracing::info!(%list, accepted = out.accepted, rejected = out.rejected.len(), "import batch");
        Ok(out)
    }

    /// Adds validated entries: kernel first (one batched write for every global IP entry;
    /// adding only raises deadlines, so the new deadline is the later of what the kernel
    /// holds, which the twin knows, and the batch's own: no database lookups), then the
    /// store, then the L7 lists. Returns how many rows were new. `keys`, when the caller
    /// has them, are the entries' store keys (see [`crate::store::Store::upsert_keyed`]).
    pub(super) fn add_batch(
        &mut self,
        list: List,
        good: &[Entry],
        keys: Option<&[IdentKey]>,
    ) -> Result<usize, ServiceError> {
        let now = unix_now();
        // Each global IP entry's CIDR and kernel deadline, in CIDR order (whatever order
        // the batch came in), one item per CIDR.
        let mut deadlines: Vec<(Cidr, u64)> = good
            .iter()
            .filter(|e| e.api.is_empty())
            .filter_map(|e| Some((e.ident.cidr()?, kernel_deadline(e.expires, now))))
            .collect();
        deadlines.sort_unstable();
        let mut items = Vec::with_capacity(deadlines.len());
        let mut undo = Vec::with_capacity(deadlines.len());
        let twin = self.filter.as_ref().map(|f| f.table());
        for same in deadlines.chunk_by(|a, b| a.0 == b.0) {
            let (cidr, new) = same[same.len() - 1];
            let current = twin.as_ref().map(|t| t.entry(&cidr)).unwrap_or_default();
            let current = match list {
                List::Allow => current.allow_until,
                List::Deny => current.deny_until,
            };
            items.push((list, cidr, Some(current.max(new))));
            undo.push((list, cidr, (current != 0).then_some(current)));
        }
        drop(twin);
        if let Some(f) = self.filter.as_mut() {
            f.apply_many(items)?;
        }
        let stored = match keys {
            Some(keys) => self.store.upsert_keyed(good, keys),
            None => self.store.upsert_new(good),
        };
        let new = match stored {
            Ok(flags) => {
                // Counted outside the board's lock: `status` must not wait for a big batch.
                let mut added = super::Counts::default();
                good.iter()
                    .zip(&flags)
                    .filter(|(_, new)| **new)
                    .for_each(|(e, _)| added.add(e));
                self.board.counts_mut(|c| c.merge(added));
                flags.iter().filter(|n| **n).count()
            }
            Err(e) => {
                // The store refused (disk full, I/O error): put the kernel back as it was, so
                // neither side holds what the other does not.
                if let Some(f) = self.filter.as_mut()
                    && let Err(k) = f.apply_many(undo)
                {
                    tracing::error!(
                        "store write failed and the kernel could not be rolled back: {k}; it now enforces entries the store lacks until the next restart reconciles"
                    );
                }
                return Err(e.into());
            }
        };
        self.l7_add(good);
        if !good.is_empty() {
            self.publish(|| Change::Added(Arc::from(good)));
        }
        Ok(new)
    }

    /// Removes one source's rows of these identifiers (`None`: every source's), then brings
    /// the kernel and the L7 lists in line with what other sources still hold.
    pub(super) fn remove_batch(
        &mut self,
        list: List,
        idents: &[Identifier],
        source: Option<&str>,
    ) -> Result<usize, ServiceError> {
        let now = unix_now();
        let mut removed = Vec::new();
        let mut kernel = Vec::new();
        for ident in idents {
            let rows = self.store.remove(list, ident, source)?;
            self.count_removed(&rows);
            removed.extend(rows);
            if let Some(c) = ident.cidr() {
                kernel.push((list, c, self.ip_deadline(list, ident, &[], now)?));
            }
            self.l7_reset(list, ident)?;
        }
        if let Some(f) = self.filter.as_mut() {
            f.apply_many(kernel)?;
        }
        if !removed.is_empty() {
            self.publish(|| Change::Removed(Arc::from(removed.as_slice())));
        }
        Ok(removed.len())
    }
}

/// Parses one import line: blank lines and `#` comments are skipped; `{...}` is NDJSON
/// (`{"kind":"ip","value":"203.0.113.7","ttl":"1h","reason":"..."}`); otherwise
/// `KIND [NAME] VALUE` as on the command line, or a bare IP/CIDR.
pub fn parse_import_line(line: &str) -> Result<Option<AddRequest>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    if line.starts_with('{') {
        return json_line(line).map(Some);
    }
    // Comments are whole lines. A `#` after a space would otherwise end up inside the stored
    // value (`token abc # note` stored the digest of `abc # note`, and `abc` stayed allowed).
    if line.split_whitespace().skip(1).any(|w| w.starts_with('#')) {
        return Err("'#' after a space is not a comment here (comments are whole lines that start with #); put the note on its own line, or import a value containing ' #' as a JSON line".into());
    }
    words_line(line).map(Some)
}

/// An NDJSON import line.
fn json_line(line: &str) -> Result<AddRequest, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Json {
        kind: String,
        #[serde(default)]
        name: Option<String>,
        value: String,
        #[serde(default)]
        ttl: Option<String>,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        api: Option<String>,
    }
    let j: Json = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let kind: Kind = j.kind.parse().map_err(|e: IdentError| e.to_string())?;
    let ttl_secs = j
        .ttl
        .as_deref()
        .map(crate::config::parse_duration)
        .transpose()?;
    Ok(AddRequest {
        kind: Some(kind),
        name: j.name,
        value: j.value,
        ttl_secs,
        reason: j.reason,
        api: j.api,
        ..AddRequest::default()
    })
}

/// A `KIND [NAME] VALUE` import line, or a bare IP/CIDR.
fn words_line(line: &str) -> Result<AddRequest, String> {
    let (first, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim();
    let kind = match first.parse::<Kind>() {
        Ok(k) => k,
        Err(_) if rest.is_empty() && first.parse::<Cidr>().is_ok() => {
            return Ok(AddRequest {
                kind: Some(Kind::Ip),
                value: first.to_owned(),
                ..AddRequest::default()
            });
        }
        Err(e) => return Err(e.to_string()),
    };
    let (name, value) = match kind {
        Kind::Cookie | Kind::ApiKey => match rest.split_once(char::is_whitespace) {
            Some(("--any-name", v)) if kind == Kind::ApiKey => (None, v.trim().to_owned()),
            Some((n, v)) => (Some(n.to_owned()), v.trim().to_owned()),
            None if kind == Kind::ApiKey => (None, rest.to_owned()),
            None => return Err("a cookie line needs a name and a value: cookie NAME VALUE".into()),
        },
        Kind::Username => (None, unquote(rest)?.to_owned()),
        Kind::Ip | Kind::Token => (None, rest.to_owned()),
    };
    one_value(kind, &value)?;
    Ok(AddRequest {
        kind: Some(kind),
        name,
        value,
        ..AddRequest::default()
    })
}

/// Refuses a value whose meaning is unclear: empty, quoted (the quotes would be stored), or
/// of several words for a kind that has one.
fn one_value(kind: Kind, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{kind} line has no value"));
    }
    // Only a username may have spaces: anything else with more words is a mistake (a
    // forgotten name, two values on a line), never a value to store.
    if kind != Kind::Username && value.len() >= 2 && value.starts_with('"') && value.ends_with('"')
    {
        return Err(format!(
            "a {kind} value in double quotes: the quotes would be stored as part of it; write it without them"
        ));
    }
    if kind != Kind::Username && value.contains(char::is_whitespace) {
        return Err(format!(
            "a {kind} line has one value (a username may have spaces); this one has more words: {}",
            match kind {
                Kind::Cookie | Kind::ApiKey => "NAME VALUE, then more",
                _ => "VALUE, then more",
            }
        ));
    }
    Ok(())
}

/// A username, bare (the rest of the line) or in one pair of double quotes.
fn unquote(s: &str) -> Result<&str, String> {
    match s.strip_prefix('"') {
        None if s.ends_with('"') => {
            Err("a username ends with '\"' but does not start with one".into())
        }
        None => Ok(s),
        Some(inner) => match inner.strip_suffix('"') {
            Some(u) if !u.contains('"') => Ok(u),
            Some(_) => Err("a quoted username holds another '\"'; use a JSON line".into()),
            None => Err("a quoted username lacks its closing '\"'".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_too_large_to_prepare_is_refused_whole() {
        let line = |n: u64| (n, format!("token t{n}"));
        let many: Vec<_> = (0..=MAX_IMPORT_LINES as u64).map(line).collect();
        let e = PreparedImport::new(List::Deny, many, ImportDefaults::default())
            .err()
            .expect("one line too many");
        assert!(e.to_string().contains("at most 250000 lines"), "{e}");
        // Defaults are checked once, not copied into every line first.
        let long = ImportDefaults {
            reason: Some("r".repeat(2000)),
            ..ImportDefaults::default()
        };
        let e = PreparedImport::new(List::Deny, vec![line(1)], long)
            .err()
            .expect("reason too long");
        assert!(e.to_string().contains("reason must be at most 1024"), "{e}");
        let ok = PreparedImport::new(
            List::Deny,
            vec![line(1), (2, "# c".into())],
            ImportDefaults::default(),
        )
        .expect("fits");
        assert_eq!(ok.len(), 1);
    }

    #[test]
    fn import_lines() {
        let r = parse_import_line("203.0.113.7")
            .expect("ok")
            .expect("entry");
        assert_eq!((r.kind, r.value.as_str()), (Some(Kind::Ip), "203.0.113.7"));
        let r = parse_import_line("cookie JSESSIONID abc")
            .expect("ok")
            .expect("entry");
        assert_eq!(
            (r.name.as_deref(), r.value.as_str()),
            (Some("JSESSIONID"), "abc")
        );
        let r = parse_import_line("username \"your name\"")
            .expect("ok")
            .expect("entry");
        assert_eq!(r.value, "your name");
        let r = parse_import_line("api-key --any-name k1")
            .expect("ok")
            .expect("entry");
        assert_eq!((r.name, r.value.as_str()), (None, "k1"));
        let r = parse_import_line(r#"{"kind":"token","value":"t","ttl":"1h"}"#)
            .expect("ok")
            .expect("entry");
        assert_eq!(r.ttl_secs, Some(3600));
        assert_eq!(
            parse_import_line("  # comment")
                .expect("ok")
                .map(|r| r.value),
            None
        );
        assert!(parse_import_line("bogus 1.2.3.4").is_err());
        assert!(parse_import_line("{\"kind\":\"ip\"").is_err());
        assert!(parse_import_line(r#"{"kind":"ip","value":"1.2.3.4","colour":"red"}"#).is_err());
        assert!(parse_import_line("cookie JSESSIONID").is_err());
    }

    #[test]
    fn lines_whose_meaning_is_unclear_are_refused() {
        for line in [
            "token abc # stolen",
            "198.51.100.7 # scanner",
            "cookie JSESSIONID abc #note",
            "username bob # admin",
            "token abc def",
            "cookie JSESSIONID abc def",
            "api-key X-API-Key k1 k2",
            "username \"bob",
            "username \"a\" \"b\"",
            "token \"abc\"",
            "username bob\"",
        ] {
            assert!(parse_import_line(line).is_err(), "{line}");
        }
        // `#` inside a word is part of the value; a whole-line comment is skipped.
        let r = parse_import_line("cookie S a#b")
            .expect("ok")
            .expect("entry");
        assert_eq!(r.value, "a#b");
        assert!(parse_import_line("# token abc").expect("ok").is_none());
        let r = parse_import_line("username \"your name\"")
            .expect("ok")
            .expect("entry");
        assert_eq!(r.value, "your name");
        let r = parse_import_line(r#"{"kind":"token","value":"abc # not a comment"}"#)
            .expect("ok")
            .expect("entry");
        assert_eq!(r.value, "abc # not a comment");
    }
}
