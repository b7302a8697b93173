//! Talking to the agent and printing its answers: JSON as is, entries and times for people.

use super::*;

pub(super) fn call(cli: &Cli, req: &Request) -> anyhow::Result<serde_json::Value> {
    let mut client = Client::connect(&cli.socket)?;
    unwrap(client.call(req)?)
}

pub(super) fn unwrap(r: Response) -> anyhow::Result<serde_json::Value> {
    if r.ok {
        Ok(r.result)
    } else {
        bail!(
            "{}",
            r.error
                .unwrap_or_else(|| "the agent refused the request".into())
        )
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

pub(super) fn describe(e: &serde_json::Value) -> String {
    let s = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
    let name = s("name");
    if s("kind") == "username" {
        format!("username {:?}", s("value"))
    } else if name.is_empty() {
        format!("{} {}", s("kind"), s("value"))
    } else {
        format!("{} {} {}", s("kind"), name, s("value"))
    }
}

pub(super) fn print_entries(entries: &[serde_json::Value]) {
    if entries.is_empty() {
        println!("(no entries)");
        return;
    }
    println!(
        "{:<6} {:<9} {:<44} {:<8} {:<10} {:<12} REASON",
        "LIST", "KIND", "IDENTIFIER", "SOURCE", "API", "EXPIRES"
    );
    for e in entries {
        let s = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
        let ident = describe(e);
        let ident = ident.split_once(' ').map(|x| x.1).unwrap_or("").to_owned();
        println!(
            "{:<6} {:<9} {:<44} {:<8} {:<10} {:<12} {}",
            s("list"),
            s("kind"),
            ident,
            s("source"),
            if s("api").is_empty() {
                "*".into()
            } else {
                s("api")
            },
            when(e.get("expires").and_then(|v| v.as_i64())),
            s("reason")
        );
    }
}
