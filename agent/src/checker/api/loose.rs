//! ASE's loose scalar types. Ping's own example files and tools write numbers as strings
//! (`"error_code": "401"`), leave a field unset with `""`, and give durations with ASE's units
//! (`"20m"`). These read every such spelling of one value and refuse anything else with a
//! message that names what was expected: a file is never half understood.

use serde::{Deserialize, Deserializer, de::Error};
use serde_json::Value;

/// A number, a string of digits, or (`unset`) `""`/`null`.
fn number(v: &Value, what: &str) -> Result<Option<u64>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("{n} is not a whole number ≥ 0 ({what})")),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{s:?} is not a whole number ({what})")),
        other => Err(format!("{other} is not a number ({what})")),
    }
}

/// An HTTP status for an answer (`error_code`, `response_code`): 100–599, or unset.
pub fn status<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    let v = Value::deserialize(d)?;
    match number(&v, "an HTTP status, 100 to 599").map_err(D::Error::custom)? {
        None => Ok(None),
        Some(n @ 100..=599) => Ok(Some(n as u16)),
        Some(n) => Err(D::Error::custom(format!(
            "{n} is not an HTTP status (100 to 599)"
        ))),
    }
}

/// A server's port: 1–65535, required.
pub fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let v = Value::deserialize(d)?;
    match number(&v, "a port, 1 to 65535").map_err(D::Error::custom)? {
        Some(n @ 1..=65535) => Ok(n as u16),
        Some(n) => Err(D::Error::custom(format!("{n} is not a port (1 to 65535)"))),
        None => Err(D::Error::custom("a port (1 to 65535) is required")),
    }
}

/// A count (`health_retry_count`), or unset.
pub fn count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let v = Value::deserialize(d)?;
    match number(&v, "a count").map_err(D::Error::custom)? {
        None => Ok(None),
        Some(n) => u32::try_from(n)
            .map(Some)
            .map_err(|_| D::Error::custom(format!("{n} is too large a count"))),
    }
}

/// Seconds: a number, a string of digits, or an ASE duration (`30s`, `20m`, `1h`, `1d`,
/// `1w`, `1mnt`, `1yr`); or unset.
pub fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Value::deserialize(d)?;
    match &v {
        Value::String(s) if s.trim().ends_with(|c: char| c.is_ascii_alphabetic()) => {
            ase_duration(s).map(Some).map_err(D::Error::custom)
        }
        _ => number(&v, "seconds, or a duration such as \"20m\"").map_err(D::Error::custom),
    }
}

/// `true`/`false`, also as strings (any case), or unset (`""`, `null`): `None`.
fn boolean(v: Value) -> Result<Option<bool>, String> {
    match v {
        Value::Bool(b) => Ok(Some(b)),
        Value::Null => Ok(None),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Ok(Some(true)),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Ok(Some(false)),
        other => Err(format!("{other} is not true or false")),
    }
}

/// A flag that is off unless set (an absent field keeps the default too).
pub fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(boolean(Value::deserialize(d)?)
        .map_err(D::Error::custom)?
        .unwrap_or(false))
}

/// A flag that is on unless set (`enable_blocking`): unset must not turn it off.
pub fn flag_default_true<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(boolean(Value::deserialize(d)?)
        .map_err(D::Error::custom)?
        .unwrap_or(true))
}

/// An ASE duration: a whole number and one of ASE's units, `s`, `m`, `h`, `d`, `w`, `mnt`
/// (30 days) or `yr` (365 days); in seconds.
pub fn ase_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let at = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit (s, m, h, d, w, mnt, yr)"))?;
    let (n, unit) = t.split_at(at);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} does not start with a whole number"))?;
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "mnt" => 30 * 86_400,
        "yr" => 365 * 86_400,
        u => {
            return Err(format!(
                "{s:?}: unknown unit {u:?} (s, m, h, d, w, mnt, yr)"
            ));
        }
    };
    n.checked_mul(per)
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    struct T {
        #[serde(default, deserialize_with = "status")]
        code: Option<u16>,
        #[serde(default, deserialize_with = "seconds")]
        every: Option<u64>,
        #[serde(default, deserialize_with = "flag")]
        on: bool,
        #[serde(default = "yes", deserialize_with = "flag_default_true")]
        blocking: bool,
    }

    fn yes() -> bool {
        true
    }

    fn t(json: &str) -> Result<T, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn every_spelling_ping_writes_reads_as_one_value() {
        for json in [
            r#"{"code":401}"#,
            r#"{"code":"401"}"#,
            r#"{"code":" 401 "}"#,
        ] {
            assert_eq!(t(json).expect(json).code, Some(401), "{json}");
        }
        for json in [r#"{"code":""}"#, r#"{"code":null}"#, r#"{}"#] {
            assert_eq!(t(json).expect(json).code, None, "{json}");
        }
        for (json, secs) in [
            (r#"{"every":10}"#, 10),
            (r#"{"every":"10"}"#, 10),
            (r#"{"every":"20m"}"#, 1200),
            (r#"{"every":"2w"}"#, 14 * 86_400),
            (r#"{"every":"1mnt"}"#, 30 * 86_400),
            (r#"{"every":"1yr"}"#, 365 * 86_400),
        ] {
            assert_eq!(t(json).expect(json).every, Some(secs), "{json}");
        }
        for (json, on) in [
            (r#"{"on":true}"#, true),
            (r#"{"on":"TRUE"}"#, true),
            (r#"{"on":"false"}"#, false),
            (r#"{"on":""}"#, false),
        ] {
            assert_eq!(t(json).expect(json).on, on, "{json}");
        }
        // Unset never turns blocking off.
        for (json, blocking) in [
            (r#"{"blocking":""}"#, true),
            (r#"{"blocking":null}"#, true),
            (r#"{}"#, true),
            (r#"{"blocking":"false"}"#, false),
        ] {
            assert_eq!(t(json).expect(json).blocking, blocking, "{json}");
        }
    }

    #[test]
    fn what_is_not_one_value_is_refused_with_what_was_expected() {
        for (json, says) in [
            (r#"{"code":"40l"}"#, "not a whole number"),
            (r#"{"code":99}"#, "not an HTTP status"),
            (r#"{"code":600}"#, "not an HTTP status"),
            (r#"{"code":-1}"#, "not a whole number"),
            (r#"{"code":4.5}"#, "not a whole number"),
            (r#"{"code":[401]}"#, "not a number"),
            (r#"{"every":"20x"}"#, "unknown unit"),
            (r#"{"every":"m"}"#, "whole number"),
            (r#"{"every":"99999999999999999999yr"}"#, "whole number"),
            (r#"{"every":"999999999999999yr"}"#, "too long"),
            (r#"{"on":"yes"}"#, "not true or false"),
            (r#"{"on":1}"#, "not true or false"),
        ] {
            let e = t(json).expect_err(json);
            assert!(e.contains(says), "{json}: {e}");
        }
    }
}
