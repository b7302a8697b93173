//! The read-only verbs: status, api, stats.

use super::*;

pub(super) fn status(cli: &Cli, json: bool) -> anyhow::Result<()> {
    let r = call(cli, &Request::Status)?;
    if json {
        return print_json(&r);
    }
    println!("mode: {}", r["mode"].as_str().unwrap_or("?"));
    let ifaces = r["interfaces"].as_array().cloned().unwrap_or_default();
    if ifaces.is_empty() {
        println!("interfaces: none attached");
    }
    for i in ifaces {
        let fb = i["fell_back"]
            .as_str()
            .map(|s| format!(" (native refused: {s})"))
            .unwrap_or_default();
        let name = i["iface"].as_str().unwrap_or("?");
        match i["xdp_mode"].as_str() {
            Some(m) => println!("interface {name}: XDP {m}{fb}"),
            None => println!(
                "interface {name}: DETACHED, no XDP filtering here (the L7 checker, if on, still checks; `portcullis attach --iface {name}` puts XDP back)"
            ),
        }
    }
    println!("database: {}", r["database"].as_str().unwrap_or("?"));
    println!("kernel IP entries: {}", r["kernel_ip_entries"]);
    println!("uptime: {}s", r["uptime_secs"]);
    if let Some(abs) = r["abs"].as_object() {
        let when = |k: &str| {
            abs.get(k)
                .and_then(|v| v.as_i64())
                .map_or("never".to_string(), |t| {
                    format!("{}s ago", crate::service::unix_now() - t)
                })
        };
        println!(
            "ABS {}: last sync {}, {} listed, {} failed polls{}",
            abs.get("url").and_then(|v| v.as_str()).unwrap_or("?"),
            when("last_success"),
            abs.get("listed").and_then(|v| v.as_u64()).unwrap_or(0),
            abs.get("failures").and_then(|v| v.as_u64()).unwrap_or(0),
            abs.get("last_error")
                .and_then(|v| v.as_str())
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        );
    }
    println!(
        "{:<6} {:<9} {:<8} {:>10}",
        "LIST", "KIND", "SOURCE", "ENTRIES"
    );
    for l in r["lists"].as_array().cloned().unwrap_or_default() {
        println!(
            "{:<6} {:<9} {:<8} {:>10}",
            l["list"].as_str().unwrap_or(""),
            l["kind"].as_str().unwrap_or(""),
            l["source"].as_str().unwrap_or(""),
            l["count"].as_u64().unwrap_or(0)
        );
    }
    Ok(())
}

pub(super) fn api(cli: &Cli, verb: &ApiVerb) -> anyhow::Result<()> {
    match verb {
        ApiVerb::List(j) => {
            let r = call(cli, &Request::ApiList)?;
            if j.json {
                return print_json(&r);
            }
            println!(
                "{:<16} {:<20} {:<16} {:<9} SERVERS",
                "API", "HOSTNAME", "URL", "BLOCKING"
            );
            for a in r["apis"].as_array().cloned().unwrap_or_default() {
                let servers: Vec<String> = a["servers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect();
                println!(
                    "{:<16} {:<20} {:<16} {:<9} {}{}",
                    a["name"].as_str().unwrap_or(""),
                    a["hostname"].as_str().unwrap_or(""),
                    a["url"].as_str().unwrap_or(""),
                    if a["enable_blocking"].as_bool() == Some(true) {
                        "yes"
                    } else {
                        "no"
                    },
                    servers.join(","),
                    if a["decoy"].as_bool() == Some(true) {
                        "  (decoys armed)"
                    } else {
                        ""
                    }
                );
            }
            for e in r["errors"].as_array().cloned().unwrap_or_default() {
                eprintln!("refused: {}", e.as_str().unwrap_or(""));
            }
        }
        ApiVerb::Show { name } => {
            print_json(&call(cli, &Request::ApiShow { name: name.clone() })?)?
        }
        ApiVerb::Reload(j) => {
            let r = call(cli, &Request::ApiReload)?;
            if j.json {
                return print_json(&r);
            }
            println!("{} API definitions loaded", r["loaded"]);
            for e in r["errors"].as_array().cloned().unwrap_or_default() {
                eprintln!("refused: {}", e.as_str().unwrap_or(""));
            }
        }
    }
    Ok(())
}

pub(super) fn stats(cli: &Cli, json: bool) -> anyhow::Result<()> {
    let r = call(cli, &Request::Stats)?;
    if json {
        return print_json(&r);
    }
    println!("{:<20} {:>14} {:>16}", "XDP VERDICT", "PACKETS", "BYTES");
    if let Some(k) = r["kernel"].as_object() {
        for (name, v) in k {
            println!(
                "{name:<20} {:>14} {:>16}",
                v["packets"].as_u64().unwrap_or(0),
                v["bytes"].as_u64().unwrap_or(0)
            );
        }
    }
    if let Some(l7) = r["l7"].as_object().filter(|m| !m.is_empty()) {
        println!("\n{:<20} {:>14}", "L7 OUTCOME", "REQUESTS");
        for (name, v) in l7 {
            println!("{name:<20} {:>14}", v.as_u64().unwrap_or(0));
        }
    }
    Ok(())
}
