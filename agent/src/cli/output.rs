//! Talking to the agent and printing its answers: JSON as is, entries and times for people.

use super::*;

pub(super) fn call(cli: &Cli, req: &Request) -> anyhow::Result<serde_json::Value> {
    let mut client = Client::connect(&cli.socket)?;
    unwrap(client.call(req)?)
}

/// Asks the agent and reads its answer as the typed `T` ([`crate::control::answer`]).
pub(super) fn ask<T: serde::de::DeserializeOwned>(cli: &Cli, req: &Request) -> anyhow::Result<T> {
    decode(call(cli, req)?)
}

/// Reads an answer as the typed `T`: the CLI shows people what it understood; `--json`
/// prints the agent's answer as it came, fields this CLI does not know included.
pub(super) fn decode<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> anyhow::Result<T> {
    serde_json::from_value(v).context(
        "the agent's answer is not what this CLI expects (are the CLI and the agent the same version?)",
    )
}

pub(super) fn unwrap(r: Response) -> anyhow::Result<serde_json::Value> {
    if r.ok {
        Ok(r.result)
    } else {
        let why = r
            .error
            .as_deref()
            .unwrap_or("the agent refused the request");
        bail!("{}", printable(why))
    }
}

pub(super) fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub(super) fn when(unix: Option<i64>) -> String {
    match unix {
        None => "never".into(),
        Some(t) => {
            let left = t - crate::service::unix_now();
            let up = |unit: i64| (left + unit - 1) / unit;
            if left <= 0 {
                "expired".into()
            } else if left < 120 {
                format!("in {left}s")
            } else if left < 7200 {
                format!("in {}m", up(60))
            } else if left < 172_800 {
                format!("in {}h", up(3600))
            } else {
                format!("in {}d", up(86_400))
            }
        }
    }
}

/// Text from the agent as a terminal may show it: control characters (an escape sequence
/// in a reason, a source or an ABS error) and invisible formatting characters (bidi
/// overrides and isolates, zero-width ones: a username from a JWT could otherwise read as
/// another) escaped, everything else as is.
pub(super) fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else if invisible(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Formatting characters that change how text around them reads without showing.
fn invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// An entry as ASE's CLI names it: `kind [name] value`.
pub(super) fn describe(e: &EntryView) -> String {
    let (name, value) = (printable(&e.name), printable(&e.value));
    if e.kind == Kind::Username {
        format!("username {:?}", e.value)
    } else if name.is_empty() {
        format!("{} {value}", e.kind)
    } else {
        format!("{} {name} {value}", e.kind)
    }
}

pub(super) fn print_entries(entries: &[EntryView]) {
    if entries.is_empty() {
        println!("(no entries)");
        return;
    }
    println!(
        "{:<6} {:<9} {:<44} {:<8} {:<10} {:<12} REASON",
        "LIST", "KIND", "IDENTIFIER", "SOURCE", "API", "EXPIRES"
    );
    for e in entries {
        let ident = describe(e);
        let ident = ident.split_once(' ').map_or("", |x| x.1);
        // Global (`-`, an address in the kernel too), every API at L7 only, or one API.
        let api = match e.api.as_str() {
            "" => "-".into(),
            crate::checker::lists::ALL_APIS => "all (L7)".into(),
            a => printable(a),
        };
        println!(
            "{:<6} {:<9} {ident:<44} {:<8} {api:<10} {:<12} {}",
            e.list.as_str(),
            e.kind.as_str(),
            printable(&e.source),
            when(e.expires),
            printable(&e.reason)
        );
    }
}
