//! The two lists every identifier can be on.

/// Which list an entry belongs to.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum List {
    /// Never blocked, whatever the deny list holds.
    Allow,
    /// Blocked unless allowed.
    Deny,
}

impl List {
    /// `allow` or `deny`.
    pub const fn as_str(self) -> &'static str {
        match self {
            List::Allow => "allow",
            List::Deny => "deny",
        }
    }

    /// ASE's name for the list, for the migration aliases.
    pub const fn ase_name(self) -> &'static str {
        match self {
            List::Allow => "whitelist",
            List::Deny => "blacklist",
        }
    }
}

impl std::fmt::Display for List {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for List {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" | "whitelist" => Ok(List::Allow),
            "deny" | "blacklist" => Ok(List::Deny),
            _ => Err(format!("unknown list {s:?}: expected allow or deny")),
        }
    }
}
