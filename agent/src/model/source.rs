//! Who put an entry on a list.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where an entry came from. The automatic sources (the ABS feed, the checker's detections,
/// the fleet) answer to stricter safety rules than an operator: they never deny-list the
/// host's infrastructure. Any other name an operator gives (`--source threatfeed`) is kept as
/// written.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// The operator, by CLI or control API (the default).
    Manual,
    /// The ABS feed's attack list.
    Abs,
    /// The L7 checker's detections.
    Checker,
    /// Another agent of the fleet.
    Fleet,
    /// A name the operator chose.
    Other(Box<str>),
}

impl Source {
    /// The source named `s` (empty: [`Source::Manual`]).
    pub fn parse(s: &str) -> Self {
        match s {
            "" | "manual" => Self::Manual,
            "abs" => Self::Abs,
            "checker" => Self::Checker,
            "fleet" => Self::Fleet,
            other => Self::Other(other.into()),
        }
    }

    /// The name as stored and shown.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Manual => "manual",
            Self::Abs => "abs",
            Self::Checker => "checker",
            Self::Fleet => "fleet",
            Self::Other(s) => s,
        }
    }

    /// Whether entries from here come without an operator deciding each one.
    pub fn is_automatic(&self) -> bool {
        matches!(self, Self::Abs | Self::Checker | Self::Fleet)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Source {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::parse(&String::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_only_feeds_are_automatic() {
        for name in ["manual", "abs", "checker", "fleet", "threatfeed"] {
            assert_eq!(Source::parse(name).as_str(), name);
        }
        assert_eq!(Source::parse(""), Source::Manual);
        let automatic: Vec<bool> = ["manual", "abs", "checker", "fleet", "ABS", "threatfeed"]
            .iter()
            .map(|n| Source::parse(n).is_automatic())
            .collect();
        assert_eq!(automatic, [false, true, true, true, false, false]);
    }
}
