//! The allow and deny verbs: add, remove, list, clear, import (in batches), with ASE's
//! answers for ASE's verbs.

use super::*;

pub(super) fn kind(s: &str) -> anyhow::Result<Kind> {
    Ok(s.parse::<Kind>()?)
}

/// Splits the positional values of add/remove into (name, value) by kind.
pub(super) fn name_value(
    kind: Kind,
    values: &[String],
    any_name: bool,
) -> anyhow::Result<(Option<String>, String)> {
    if any_name && kind != Kind::ApiKey {
        bail!("--any-name applies to api-key entries only");
    }
    match (kind, values) {
        (Kind::Cookie, [n, v]) => Ok((Some(n.clone()), v.clone())),
        (Kind::Cookie, _) => bail!("cookie needs a name and a value: cookie JSESSIONID <value>"),
        (Kind::ApiKey, [v]) if any_name => Ok((None, v.clone())),
        (Kind::ApiKey, [_, _]) if any_name => bail!("--any-name takes only the key's value"),
        (Kind::ApiKey, [n, v]) => Ok((Some(n.clone()), v.clone())),
        (Kind::ApiKey, [_]) => bail!(
            "api-key needs a name and a value (api-key X-API-Key <value>), or --any-name <value>"
        ),
        (_, [v]) => Ok((None, v.clone())),
        (k, _) => bail!("{k} takes one value (quote values that contain spaces)"),
    }
}

pub(super) fn list_verb(cli: &Cli, list: List, verb: &ListVerb) -> anyhow::Result<()> {
    match verb {
        ListVerb::Add(a) => add(cli, list, a)?,
        ListVerb::Remove(r) => remove(cli, list, r)?,
        ListVerb::List {
            kind: k,
            source,
            json,
        } => {
            let k = k.as_deref().map(kind).transpose()?;
            let r = call(
                cli,
                &Request::List {
                    list: Some(list),
                    kind: k,
                    source: source.clone(),
                },
            )?;
            if *json {
                return print_json(&r);
            }
            let entries = r.as_array().cloned().unwrap_or_default();
            if cli.ase {
                for e in &entries {
                    println!("{}", describe(e));
                }
            } else {
                print_entries(&entries);
            }
        }
        ListVerb::Clear {
            kind: k,
            source,
            all,
            json,
        } => {
            let k = k.as_deref().map(kind).transpose()?;
            if k.is_none() && source.is_none() && !all {
                bail!(
                    "`{list} clear` without --kind or --source removes every entry of the {list} list; add --all if that is what you mean"
                );
            }
            let r = call(
                cli,
                &Request::Clear {
                    list,
                    kind: k,
                    source: source.clone(),
                    all: *all,
                },
            )?;
            if *json {
                return print_json(&serde_json::json!({ "removed": r }));
            }
            if cli.ase {
                println!("{} cleared", list.ase_name());
            } else {
                println!("{list} list cleared: {r} entries removed");
            }
        }
        ListVerb::Import {
            file,
            ttl,
            reason,
            source,
            force,
            json,
        } => {
            let ttl_secs = ttl
                .as_deref()
                .map(crate::config::parse_duration)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let defaults = ImportDefaults {
                ttl_secs,
                reason: reason.clone(),
                source: source.clone(),
                force: *force,
            };
            import(cli, list, file, defaults, *json)?;
        }
    }
    Ok(())
}

/// Lines sent per request: large enough to amortise a round trip, small enough to show progress.
const IMPORT_BATCH: usize = 100_000;

pub(super) fn import(
    cli: &Cli,
    list: List,
    file: &PathBuf,
    defaults: ImportDefaults,
    json: bool,
) -> anyhow::Result<()> {
    let (reader, total): (Box<dyn BufRead>, u64) = if file.as_os_str() == "-" {
        (Box::new(BufReader::new(std::io::stdin())), 0)
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        (Box::new(BufReader::with_capacity(1 << 20, f)), len)
    };
    let mut client = Client::connect(&cli.socket)?;
    let show = std::io::stderr().is_terminal() && !json;
    let (mut accepted, mut new, mut read_bytes) = (0u64, 0u64, 0u64);
    let mut rejected: Vec<(u64, String)> = Vec::new();
    let mut batch = Vec::with_capacity(IMPORT_BATCH);
    let started = std::time::Instant::now();
    let mut flush = |batch: &mut Vec<(u64, String)>, read: u64| -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let first = batch.first().map_or(0, |(no, _)| *no);
        // Each request is applied whole or not at all; the ones before it stay applied.
        let stopped = |e: anyhow::Error| {
            let before = if accepted == 0 {
                "nothing was imported".to_owned()
            } else {
                format!(
                    "the {accepted} entries ({new} new) from the lines before it are on the {list} list"
                )
            };
            anyhow::anyhow!("{e:#}\nthe import stopped at line {first}: {before}")
        };
        let r = client
            .call(&Request::Import {
                list,
                lines: std::mem::take(batch),
                defaults: defaults.clone(),
            })
            .map_err(anyhow::Error::from)
            .and_then(unwrap)
            .map_err(stopped)?;
        accepted += r["accepted"].as_u64().unwrap_or(0);
        new += r["new"].as_u64().unwrap_or(0);
        if let Some(rej) = r["rejected"].as_array() {
            for x in rej {
                rejected.push((
                    x[0].as_u64().unwrap_or(0),
                    x[1].as_str().unwrap_or("").to_owned(),
                ));
            }
        }
        if show {
            let pct = (read * 100).checked_div(total).unwrap_or(0).min(100);
            let bar = "#".repeat((pct / 4) as usize);
            eprint!(
                "\r[{bar:<25}] {pct:>3}%  {accepted} accepted, {} rejected",
                rejected.len()
            );
            let _ = std::io::stderr().flush();
        }
        Ok(())
    };
    let mut raw = Vec::new();
    let mut bad_utf8: Vec<(u64, String)> = Vec::new();
    let mut reader = reader;
    let mut line_no = 0u64;
    loop {
        raw.clear();
        let n = reader
            .read_until(b'\n', &mut raw)
            .context("reading the import file")?;
        if n == 0 {
            break;
        }
        line_no += 1;
        read_bytes += n as u64;
        match std::str::from_utf8(&raw) {
            Ok(text) => batch.push((line_no, text.trim_end_matches(['\n', '\r']).to_owned())),
            Err(_) => bad_utf8.push((line_no, "not valid UTF-8".into())),
        }
        if batch.len() >= IMPORT_BATCH {
            flush(&mut batch, read_bytes)?;
        }
    }
    flush(&mut batch, read_bytes)?;
    // The closure borrowed `rejected`; its last use ends the borrow.
    rejected.extend(bad_utf8);
    rejected.sort_by_key(|(no, _)| *no);
    if show {
        eprintln!();
    }
    let secs = started.elapsed().as_secs_f64();
    if json {
        return print_json(
            &serde_json::json!({"accepted": accepted, "new": new, "rejected": rejected, "seconds": secs}),
        );
    }
    for (no, why) in rejected.iter().take(50) {
        eprintln!("{}:{no}: {why}", file.display());
    }
    if rejected.len() > 50 {
        eprintln!("... and {} more rejected lines", rejected.len() - 50);
    }
    println!(
        "{list}: {accepted} entries imported ({new} new) in {secs:.1}s ({:.0}/s), {} lines rejected",
        accepted as f64 / secs.max(1e-9),
        rejected.len()
    );
    Ok(())
}

/// `allow|deny add`: puts one identifier on the list and says whether the kernel enforces it.
fn add(cli: &Cli, list: List, a: &AddArgs) -> anyhow::Result<()> {
    let k = kind(&a.kind)?;
    let (name, value) = name_value(k, &a.values, a.any_name)?;
    let ttl_secs = a
        .ttl
        .as_deref()
        .map(crate::config::parse_duration)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let req = Request::Add(AddRequest {
        list: Some(list),
        kind: Some(k),
        name,
        value,
        ttl_secs,
        reason: a.reason.clone(),
        api: a.api.clone(),
        source: None,
        force: a.force,
    });
    let r = call(cli, &req)?;
    if a.json {
        return print_json(&r);
    }
    let entry = &r["entry"];
    if cli.ase {
        println!("{} added to {}", describe(entry), list.ase_name());
    } else {
        let how = if r["enforced_in_kernel"].as_bool() == Some(true) {
            " (enforced in the kernel)"
        } else {
            ""
        };
        let verb = if r["new"].as_bool() == Some(true) {
            "added"
        } else {
            "updated"
        };
        println!(
            "{list} {} {verb}{how}, expires {}",
            describe(entry),
            when(entry["expires"].as_i64())
        );
    }
    Ok(())
}

/// `allow|deny remove`: takes an identifier off the list (every source unless one is named).
fn remove(cli: &Cli, list: List, r: &RemoveArgs) -> anyhow::Result<()> {
    let k = kind(&r.kind)?;
    let (name, value) = name_value(k, &r.values, r.any_name)?;
    let answer = call(
        cli,
        &Request::Remove {
            list,
            kind: k,
            name,
            value,
            source: r.source.clone(),
        },
    )?;
    if r.json {
        return print_json(&answer);
    }
    let removed = answer.as_array().cloned().unwrap_or_default();
    let first = removed.first().cloned().unwrap_or_default();
    if cli.ase {
        println!("{} deleted from {}", describe(&first), list.ase_name());
    } else {
        println!(
            "{list} {} removed ({} entr{})",
            describe(&first),
            removed.len(),
            if removed.len() == 1 { "y" } else { "ies" }
        );
    }
    Ok(())
}
