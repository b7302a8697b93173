//! What makes an API definition acceptable: the rules checked after it parsed, each refusal
//! naming its field. A definition whose meaning would be unclear, or that Portcullis would
//! silently run differently from ASE, is refused rather than guessed at.

use super::{ApiMetadata, under};

/// Every rule that needs the whole definition.
pub fn check(meta: &ApiMetadata) -> Result<(), String> {
    if !meta.url.starts_with('/') {
        return Err(format!("field `url`: {:?} must start with '/'", meta.url));
    }
    let whole_decoy = meta
        .decoy_config
        .as_ref()
        .is_some_and(|d| d.decoy_enabled && d.decoy_subpaths.is_empty());
    // No servers: an API the gateways ask about (sideband), or a whole-API decoy; inline
    // requests to it that pass get 502.
    if !meta.servers.is_empty() && whole_decoy {
        return Err("field `decoy_config`: decoy_enabled with no decoy_subpaths makes every request to this API a decoy hit, yet it has servers; list decoy_subpaths, or remove the servers for a whole-API decoy".into());
    }
    if let Some(m) = &meta.api_mapping {
        let mapped = m.internal_url.trim();
        let plain = mapped.starts_with('/')
            && !mapped.contains("//")
            && mapped.bytes().all(|b| b.is_ascii_graphic())
            && !mapped.contains(['%', '?', '#', '\\', ';'])
            && !mapped.split('/').any(|seg| seg == "." || seg == "..");
        if !mapped.is_empty() && !plain {
            return Err(format!(
                "field `api_mapping.internal_url`: {mapped:?} must be a plain path starting with '/' (no '.' or '..' segments, escapes, ';', '?' or '#')"
            ));
        }
    }
    // What would silently break the API if it were only ignored: refused until supported.
    if meta.is_token_mandatory && !meta.oauth2_access_token {
        return Err("field `is_token_mandatory`: needs `oauth2_access_token: true`, as in ASE (without it no token is read, and every client would be deny-listed for a missing one)".into());
    }
    let pattern = meta.api_pattern_enforcement.as_ref();
    if let Some(r) = pattern.and_then(|p| p.http_redirect.as_ref()) {
        let url = r.https_url.trim();
        if !url.is_empty() && (!url.starts_with("https://") || url.parse::<http::Uri>().is_err()) {
            return Err(format!(
                "field `api_pattern_enforcement.http_redirect.https_url`: {url:?} is not an https:// URL"
            ));
        }
        if r.response_code.is_some_and(|c| !(300..400).contains(&c)) {
            return Err("field `api_pattern_enforcement.http_redirect.response_code`: a redirect is 300 to 399".into());
        }
    }
    for m in pattern.iter().flat_map(|p| &p.methods_allowed) {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(format!(
                "field `api_pattern_enforcement.methods_allowed`: {m:?} is not an HTTP method"
            ));
        }
    }
    Ok(())
}

/// Parses field `field`'s `N/second|minute|hour` (`0/…` or empty: `None`).
pub fn parse_spike(field: &str, s: &str) -> Result<Option<(u32, u64)>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let (n, unit) = s
        .split_once('/')
        .ok_or_else(|| format!("{field} {s:?}: expected N/second, N/minute or N/hour"))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("{field} {s:?}: {n:?} is not a number"))?;
    let per = match unit.trim() {
        "second" | "sec" | "s" => 1,
        "minute" | "min" | "m" => 60,
        "hour" | "h" => 3600,
        u => return Err(format!("{field} {s:?}: unknown unit {u:?}")),
    };
    Ok((n > 0).then_some((n, per)))
}

/// `decoy_subpaths` in full: a path with a leading `/` is a full path, as ASE reads it, and
/// must lie under `url`; one without is relative to `url`. A full path outside the API (in
/// earlier Portcullis releases `/admin` meant `url` + `/admin`) is refused rather than
/// guessed at, since either reading could be the one meant.
pub fn decoy_paths(meta: &ApiMetadata) -> Result<Vec<String>, String> {
    let Some(decoy) = &meta.decoy_config else {
        return Ok(Vec::new());
    };
    let base = meta.url.trim_end_matches('/');
    decoy
        .decoy_subpaths
        .iter()
        .map(|sub| {
            let s = sub.trim();
            if s.is_empty() {
                return Err("an empty path".to_owned());
            }
            if s.contains(['%', '?', '#', '\\'])
                || s.split('/').any(|seg| seg == "." || seg == "..")
            {
                return Err(format!(
                    "{sub:?}: write the path plainly (no '.' or '..' segments, escapes, '?' or '#')"
                ));
            }
            let full = if s.starts_with('/') {
                s.to_owned()
            } else {
                format!("{base}/{s}")
            };
            let normal = crate::checker::target::normalize_path(&full)
                .map_err(|e| format!("{sub:?}: {e}"))?
                .matched;
            if s.starts_with('/') && !under(&normal, &meta.url) {
                return Err(format!(
                    "{sub:?} is not under the API's url {:?}: a path starting with '/' is a full path (ASE's form): write {:?}, or {:?} relative to the url",
                    meta.url,
                    format!("{base}{normal}"),
                    normal.trim_start_matches('/')
                ));
            }
            if normal.trim_end_matches('/') == base || normal == "/" {
                return Err(format!(
                    "{sub:?} is the whole API: for a whole-API decoy leave decoy_subpaths empty"
                ));
            }
            Ok(normal)
        })
        .collect()
}
