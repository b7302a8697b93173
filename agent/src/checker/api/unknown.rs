//! Fields of an API file that Portcullis does not understand, at every nesting level. The
//! parsed definition is serialised back (every field of it, set or not) and compared with
//! the file: a key of the file that is not a key of the definition at the same place is
//! reported by its path (`servers[1].server_spike_threshold`), so one list of fields — the
//! types themselves — says what is understood.

use serde_json::Value;

/// What an API file holds that its definition lacks: paths in `api_metadata`, and keys
/// beside it; at most 50 and a count (a file of 100k unknown keys must not make a 100k-item
/// log line at every reload).
pub fn ignored_fields(file: &Value, understood: &Value) -> Vec<String> {
    const SHOWN: usize = 50;
    let mut out = unknown_fields(&file["api_metadata"], understood, "");
    if let Some(top) = file.as_object() {
        out.extend(
            top.keys()
                .filter(|k| *k != "api_metadata")
                .map(|k| format!("{k} (beside api_metadata)")),
        );
    }
    if out.len() > SHOWN {
        let more = out.len() - SHOWN;
        out.truncate(SHOWN);
        out.push(format!("... and {more} more"));
    }
    out
}

/// The paths of `file`'s keys that `understood` lacks, below `at` (`""` at the top).
pub fn unknown_fields(file: &Value, understood: &Value, at: &str) -> Vec<String> {
    let mut out = Vec::new();
    walk(file, understood, at, &mut out);
    out
}

fn walk(file: &Value, understood: &Value, at: &str, out: &mut Vec<String>) {
    let join = |key: &str| {
        if at.is_empty() {
            key.to_owned()
        } else {
            format!("{at}.{key}")
        }
    };
    match (file, understood) {
        (Value::Object(f), Value::Object(u)) => {
            for (k, v) in f {
                match u.get(k) {
                    Some(uv) => walk(v, uv, &join(k), out),
                    None => out.push(join(k)),
                }
            }
        }
        (Value::Array(f), Value::Array(u)) => {
            for (i, (v, uv)) in f.iter().zip(u).enumerate() {
                walk(v, uv, &format!("{at}[{i}]"), out);
            }
        }
        // A scalar read as a scalar, or an object the definition keeps whole.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_each_unknown_key_by_its_path() {
        let file = json!({"url": "/x", "extra": 1,
            "servers": [{"host": "a", "port": 1}, {"host": "b", "port": "2", "server_spike_threshold": "5/second"}],
            "decoy_config": {"decoy_enabled": true, "odd": {"deep": 1}},
            "jwt": null});
        let understood = json!({"url": "/x",
            "servers": [{"host": "a", "port": 1}, {"host": "b", "port": 2}],
            "decoy_config": {"decoy_enabled": true},
            "jwt": null});
        assert_eq!(
            unknown_fields(&file, &understood, ""),
            [
                "decoy_config.odd",
                "extra",
                "servers[1].server_spike_threshold"
            ]
        );
    }
}
