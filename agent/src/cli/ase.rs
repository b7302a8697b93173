//! Output in ASE's words for its verb aliases (`add_blacklist`, `view_blacklist`, ...), so
//! that scripts written around ASE's `cli.sh` read what they expect: `ip 1.1.1.1 added to
//! blacklist` (a host without `/32`), the kind `api_key`, names before values, usernames
//! unquoted, and views in ASE's numbered sections. One difference stays: a view shows
//! secrets (cookies, tokens, keys) as the fingerprints of their digests, since Portcullis
//! never stores them in clear.

use crate::control::answer::EntryView;
use crate::model::{Kind, List};

use super::output::printable;

/// ASE's word for a kind.
fn type_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Ip => "ip",
        Kind::Cookie => "cookie",
        Kind::Token => "token",
        Kind::ApiKey => "api_key",
        Kind::Username => "username",
    }
}

/// An address as ASE prints it: a host without its `/32` (`/128`).
fn address(value: &str) -> &str {
    value
        .strip_suffix("/32")
        .filter(|v| !v.contains(':'))
        .or_else(|| value.strip_suffix("/128").filter(|v| v.contains(':')))
        .unwrap_or(value)
}

/// `ip 1.1.1.1`, `cookie JSESSIONID abc`, `api_key X-API-Key k`, `username jo doe`: what
/// an add or delete line names. `value` is the operator's own input for secrets (they typed
/// it), the stored form for addresses.
pub(super) fn ident(kind: Kind, name: Option<&str>, value: &str) -> String {
    let value = if kind == Kind::Ip {
        address(value)
    } else {
        value
    };
    match name.filter(|n| !n.is_empty()) {
        Some(n) => format!("{} {} {}", type_word(kind), printable(n), printable(value)),
        None => format!("{} {}", type_word(kind), printable(value)),
    }
}

/// The sections of an ASE view, in ASE's order.
const SECTIONS: [&str; 8] = [
    "Manual",
    "Realtime Decoy",
    "Realtime Protocol",
    "Realtime Method",
    "Realtime Content-Type",
    "Realtime Missing Token",
    "ABS Detected",
    "Other",
];

/// The section an entry is listed under: by its source, and a detection by its reason.
fn section(e: &EntryView) -> &'static str {
    match e.source.as_str() {
        "manual" => SECTIONS[0],
        "abs" => SECTIONS[6],
        "checker" => {
            let r = e.reason.as_str();
            if r.starts_with("decoy") {
                SECTIONS[1]
            } else if r.starts_with("invalid-protocol") {
                SECTIONS[2]
            } else if r.starts_with("invalid-method") {
                SECTIONS[3]
            } else if r.starts_with("invalid-content-type") {
                SECTIONS[4]
            } else {
                SECTIONS[5]
            }
        }
        _ => SECTIONS[7],
    }
}

/// Whether ASE's view word (`all`, `manual`, `abs`, `realtime`, `decoy`, `method`,
/// `protocol`, `content-type`, or a kind) selects `section` and `e`.
fn selects(word: &str, section: &str, e: &EntryView) -> bool {
    match word {
        "all" => true,
        "manual" => section == SECTIONS[0],
        "abs" => section == SECTIONS[6],
        "realtime" => section.starts_with("Realtime"),
        "decoy" => section == SECTIONS[1],
        "protocol" => section == SECTIONS[2],
        "method" => section == SECTIONS[3],
        "content-type" => section == SECTIONS[4],
        kind => kind.parse::<Kind>().is_ok_and(|k| e.kind == k),
    }
}

/// What the agent can select for a view word (source, kind), so that a view of a few
/// manual entries does not fetch millions of ABS rows.
pub(super) fn view_filter(word: &str) -> (Option<&'static str>, Option<&str>) {
    match word {
        "manual" => (Some("manual"), None),
        "abs" => (Some("abs"), None),
        "realtime" | "decoy" | "method" | "protocol" | "content-type" => (Some("checker"), None),
        "all" => (None, None),
        kind => (None, Some(kind)),
    }
}

/// The words a view takes besides the kinds.
pub(super) const VIEW_WORDS: [&str; 8] = [
    "all",
    "manual",
    "abs",
    "realtime",
    "decoy",
    "method",
    "protocol",
    "content-type",
];

/// `view_blacklist [WORD]` / `view_whitelist [WORD]`: every section the word selects, with
/// its entries numbered from 1, as ASE prints them.
pub(super) fn view(list: List, entries: &[EntryView], word: &str) -> Result<String, String> {
    let suffix = match list {
        List::Deny => "Blacklist",
        List::Allow => "Whitelist",
    };
    if !VIEW_WORDS.contains(&word) && word.parse::<Kind>().is_err() {
        return Err(format!(
            "unknown view {word:?}: all, manual, abs, realtime, decoy, method, protocol, content-type or a kind"
        ));
    }
    let mut out = String::new();
    for s in SECTIONS {
        let mut n = 0;
        let mut lines = String::new();
        for e in entries
            .iter()
            .filter(|e| section(e) == s && selects(word, s, e))
        {
            n += 1;
            let name = if e.name.is_empty() {
                String::new()
            } else {
                format!(", name : {}", printable(&e.name))
            };
            let value = if e.kind == Kind::Ip {
                address(&e.value)
            } else {
                &e.value
            };
            let value = printable(value);
            lines.push_str(&format!(
                "{n}) type : {}{name}, value : {value}\n",
                type_word(e.kind)
            ));
        }
        if n > 0 {
            out.push_str(&format!("{s} {suffix}\n{lines}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: Kind, name: &str, value: &str, source: &str, reason: &str) -> EntryView {
        EntryView {
            list: List::Deny,
            kind,
            name: name.into(),
            value: value.into(),
            source: source.into(),
            reason: reason.into(),
            api: String::new(),
            created: 0,
            expires: None,
        }
    }

    #[test]
    fn lines_read_as_ase_prints_them() {
        assert_eq!(ident(Kind::Ip, None, "1.1.1.1/32"), "ip 1.1.1.1");
        assert_eq!(ident(Kind::Ip, None, "10.0.0.0/8"), "ip 10.0.0.0/8");
        assert_eq!(ident(Kind::Ip, None, "2001:db8::1/128"), "ip 2001:db8::1");
        assert_eq!(
            ident(Kind::ApiKey, Some("AccessKey"), "b31d"),
            "api_key AccessKey b31d"
        );
        assert_eq!(ident(Kind::Username, None, "jo doe"), "username jo doe");
        let entries = [
            entry(Kind::Ip, "", "10.10.10.10/32", "manual", ""),
            entry(Kind::Cookie, "JSESSIONID", "sha256:ab12…", "manual", ""),
            entry(Kind::Ip, "", "4.4.4.4/32", "checker", "decoy on API shop"),
            entry(
                Kind::Token,
                "",
                "sha256:cd34…",
                "checker",
                "invalid-method on API shop",
            ),
            entry(Kind::Ip, "", "5.5.5.0/24", "abs", "abs attack list"),
        ];
        assert_eq!(
            view(List::Deny, &entries, "all").expect("view"),
            "Manual Blacklist\n1) type : ip, value : 10.10.10.10\n2) type : cookie, name : JSESSIONID, value : sha256:ab12…\n\
             Realtime Decoy Blacklist\n1) type : ip, value : 4.4.4.4\n\
             Realtime Method Blacklist\n1) type : token, value : sha256:cd34…\n\
             ABS Detected Blacklist\n1) type : ip, value : 5.5.5.0/24\n"
        );
        assert_eq!(
            view(List::Deny, &entries, "realtime").expect("view"),
            "Realtime Decoy Blacklist\n1) type : ip, value : 4.4.4.4\nRealtime Method Blacklist\n1) type : token, value : sha256:cd34…\n"
        );
        assert_eq!(
            view(List::Deny, &entries, "ip").expect("view"),
            "Manual Blacklist\n1) type : ip, value : 10.10.10.10\nRealtime Decoy Blacklist\n1) type : ip, value : 4.4.4.4\nABS Detected Blacklist\n1) type : ip, value : 5.5.5.0/24\n"
        );
        assert!(view(List::Deny, &entries, "bogus").is_err());
        assert!(view(List::Deny, &[], "bogus").is_err());
    }
}
