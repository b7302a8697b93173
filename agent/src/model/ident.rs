//! The five identifier kinds the lists hold, their validation and canonical stored form.
//!
//! Secrets (cookie values, OAuth2 tokens, API keys) are never stored or shown in clear: they
//! become `sha256:<hex>` digests on entry, and only a short fingerprint is ever printed or
//! logged.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{Cidr, CidrError};

/// Longest identifier value accepted (a large JWT fits; a 10 MB blob does not).
pub const MAX_VALUE: usize = 8192;
/// Longest cookie or API-key name accepted.
pub const MAX_NAME: usize = 256;
/// Longest username accepted.
pub const MAX_USERNAME: usize = 512;

/// What kind of client identifier an entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// IPv4/IPv6 address or CIDR; enforced in XDP and at L7.
    Ip,
    /// A session cookie (name and value).
    Cookie,
    /// An OAuth2 bearer access token.
    Token,
    /// An API key (header or query parameter name, or any name).
    ApiKey,
    /// A username (header, JWT claim or Basic auth).
    Username,
}

impl Kind {
    /// Every kind, in display order.
    pub const ALL: [Kind; 5] = [
        Kind::Ip,
        Kind::Cookie,
        Kind::Token,
        Kind::ApiKey,
        Kind::Username,
    ];

    /// The kind's name on the command line and in JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Ip => "ip",
            Kind::Cookie => "cookie",
            Kind::Token => "token",
            Kind::ApiKey => "api-key",
            Kind::Username => "username",
        }
    }

    /// Whether values of this kind are secrets, stored as digests.
    pub const fn is_secret(self) -> bool {
        matches!(self, Kind::Cookie | Kind::Token | Kind::ApiKey)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = IdentError;

    fn from_str(s: &str) -> Result<Self, IdentError> {
        match s.to_ascii_lowercase().as_str() {
            "ip" | "cidr" => Ok(Kind::Ip),
            "cookie" => Ok(Kind::Cookie),
            "token" | "oauth2" | "oauth-token" => Ok(Kind::Token),
            "api-key" | "apikey" | "api_key" => Ok(Kind::ApiKey),
            "username" | "user" => Ok(Kind::Username),
            _ => Err(IdentError::UnknownKind(s.chars().take(40).collect())),
        }
    }
}

/// Why an identifier was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentError {
    /// Not one of the five kinds.
    #[error("unknown identifier kind {0:?}: expected ip, cookie, token, api-key or username")]
    UnknownKind(String),
    /// Invalid IP or CIDR.
    #[error(transparent)]
    Ip(#[from] CidrError),
    /// Value too long.
    #[error("{kind} value is {len} bytes; the limit is {max}")]
    TooLong {
        /// Kind.
        kind: Kind,
        /// Length seen.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Empty value.
    #[error("{0} value is empty")]
    Empty(Kind),
    /// Control characters.
    #[error("{0} value contains control characters")]
    Control(Kind),
    /// Cookie or API-key name invalid.
    #[error(
        "invalid {kind} name {name:?}: 1-{MAX_NAME} characters, no spaces, quotes, ';', ',' or '='"
    )]
    BadName {
        /// Kind.
        kind: Kind,
        /// The name (truncated).
        name: String,
    },
    /// A cookie needs a name.
    #[error("a cookie entry needs a name and a value, e.g. `cookie JSESSIONID <value>`")]
    MissingName,
}

/// A validated identifier in canonical stored form.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Identifier {
    /// Kind.
    pub kind: Kind,
    /// Cookie or API-key name; empty for other kinds and for an API key of any name.
    pub name: String,
    /// Canonical CIDR, username, or `sha256:<hex>` digest of a secret.
    pub value: String,
}

fn check_text(kind: Kind, v: &str, max: usize) -> Result<(), IdentError> {
    if v.is_empty() {
        return Err(IdentError::Empty(kind));
    }
    if v.len() > max {
        return Err(IdentError::TooLong {
            kind,
            len: v.len(),
            max,
        });
    }
    if v.chars().any(char::is_control) {
        return Err(IdentError::Control(kind));
    }
    Ok(())
}

fn check_name(kind: Kind, n: &str) -> Result<(), IdentError> {
    let ok = !n.is_empty()
        && n.len() <= MAX_NAME
        && n.chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | ';' | ',' | '=' | '\\'));
    if ok {
        Ok(())
    } else {
        Err(IdentError::BadName {
            kind,
            name: n.chars().take(40).collect(),
        })
    }
}

/// `sha256:<hex>` of a secret.
pub fn digest(secret: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = Sha256::digest(secret.as_bytes());
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in d {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

impl Identifier {
    /// Validates a raw identifier as the CLI, an import file or ABS gives it. Secrets are
    /// digested here; a value that already is a `sha256:<64 hex>` digest is kept, so
    /// exported lists re-import.
    pub fn parse(kind: Kind, name: Option<&str>, value: &str) -> Result<Self, IdentError> {
        let name = name.unwrap_or("");
        match kind {
            Kind::Ip => {
                let cidr: Cidr = value.parse()?;
                Ok(Self {
                    kind,
                    name: String::new(),
                    value: cidr.to_string(),
                })
            }
            Kind::Username => {
                check_text(kind, value, MAX_USERNAME)?;
                Ok(Self {
                    kind,
                    name: String::new(),
                    value: value.to_owned(),
                })
            }
            Kind::Cookie | Kind::Token | Kind::ApiKey => {
                if kind == Kind::Cookie && name.is_empty() {
                    return Err(IdentError::MissingName);
                }
                if !name.is_empty() {
                    check_name(kind, name)?;
                }
                check_text(kind, value, MAX_VALUE)?;
                let stored = if is_digest(value) {
                    value.to_ascii_lowercase()
                } else {
                    digest(value)
                };
                let name = match kind {
                    Kind::Token => String::new(),
                    // A header name, case-insensitive in HTTP: one identity whatever the case.
                    Kind::ApiKey => name.to_ascii_lowercase(),
                    _ => name.to_owned(),
                };
                Ok(Self {
                    kind,
                    name,
                    value: stored,
                })
            }
        }
    }

    /// The CIDR of an `ip` identifier.
    pub fn cidr(&self) -> Option<Cidr> {
        if self.kind == Kind::Ip {
            self.value.parse().ok()
        } else {
            None
        }
    }

    /// What may be shown or logged: the value for ip/username, a fingerprint for secrets.
    pub fn display_value(&self) -> String {
        if self.kind.is_secret() {
            fingerprint(&self.value)
        } else {
            self.value.clone()
        }
    }
}

/// Whether `v` is already a stored digest.
pub(crate) fn is_digest(v: &str) -> bool {
    v.len() == 71 && v.starts_with("sha256:") && v[7..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// A short, non-reversible label of a stored digest: `sha256:1a2b3c4d…`.
pub fn fingerprint(stored: &str) -> String {
    let hex = stored.strip_prefix("sha256:").unwrap_or(stored);
    format!("sha256:{}…", hex.get(..8).unwrap_or(hex))
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.kind, self.name.is_empty()) {
            (Kind::Username, _) => write!(f, "username {:?}", self.value),
            (k, true) => write!(f, "{k} {}", self.display_value()),
            (k, false) => write!(f, "{k} {} {}", self.name, self.display_value()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FIPS 180-4 known answers: the stored digest is plain SHA-256 of the value's bytes, so an
    /// operator can compute it with `sha256sum` and other tools can match it.
    #[test]
    fn digest_matches_sha256_known_answers() {
        assert_eq!(
            digest(""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            digest("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            digest("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "sha256:248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        let t = Identifier::parse(Kind::Token, None, "abc").expect("valid");
        assert_eq!(t.value, digest("abc"));
    }

    #[test]
    fn secrets_are_digested_and_fingerprinted() {
        let t = Identifier::parse(Kind::Token, None, "eyJhbGciOi.secret").expect("valid");
        assert!(t.value.starts_with("sha256:") && t.value.len() == 71);
        assert!(!t.to_string().contains("secret"));
        assert!(t.to_string().ends_with('…'));
        // A digest re-imports as itself.
        assert_eq!(
            Identifier::parse(Kind::Token, None, &t.value).expect("digest"),
            t
        );
        let c = Identifier::parse(Kind::Cookie, Some("JSESSIONID"), "abc").expect("valid");
        assert_eq!(c.name, "JSESSIONID");
        assert_eq!(c.value, digest("abc"));
    }

    #[test]
    fn refuses_bad_values_with_reasons() {
        assert_eq!(
            Identifier::parse(Kind::Cookie, None, "v"),
            Err(IdentError::MissingName)
        );
        assert!(matches!(
            Identifier::parse(Kind::Token, None, &"x".repeat(MAX_VALUE + 1)),
            Err(IdentError::TooLong { .. })
        ));
        assert!(matches!(
            Identifier::parse(Kind::Username, None, "a\nb"),
            Err(IdentError::Control(_))
        ));
        assert!(matches!(
            Identifier::parse(Kind::Username, None, ""),
            Err(IdentError::Empty(_))
        ));
        assert!(matches!(
            Identifier::parse(Kind::ApiKey, Some("x y"), "k"),
            Err(IdentError::BadName { .. })
        ));
        assert!(matches!(
            Identifier::parse(Kind::Ip, None, "10.0.0.0/33"),
            Err(IdentError::Ip(_))
        ));
        assert!("bogus".parse::<Kind>().is_err());
        let u = Identifier::parse(Kind::Username, None, "your name").expect("spaces are fine");
        assert_eq!(u.value, "your name");
        assert_eq!(
            Identifier::parse(Kind::Ip, None, "10.1.2.3/8")
                .expect("ip")
                .value,
            "10.0.0.0/8"
        );
    }
}
