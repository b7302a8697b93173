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
        ListVerb::Add(a) => add(cli, list, a),
        ListVerb::Remove(r) => remove(cli, list, r),
        ListVerb::List {
            hits: true, out, ..
        } => show_hits(cli, list, out.json),
        ListVerb::List { which, out, .. } => show(cli, list, which, out.json),
        ListVerb::Clear { which, all, out } => clear(cli, list, which, *all, out.json),
        ListVerb::Import {
            file,
            options,
            source,
            out,
        } => {
            let defaults = ImportDefaults {
                ttl_secs: options.ttl_secs()?,
                reason: options.reason.clone(),
                source: source.clone(),
                force: options.force,
            };
            import(cli, list, file, defaults, out.json)
        }
    }
}

/// `allow|deny list`: the entries, as a table, in ASE's words, or as JSON.
/// `allow|deny list --hits`: the entries traffic hits, most first.
fn show_hits(cli: &Cli, list: List, json: bool) -> anyhow::Result<()> {
    let r = call(cli, &Request::Hits { list, limit: None })?;
    if json {
        return print_json(&r);
    }
    let hits: Vec<crate::control::answer::EntryHits> = decode(r)?;
    if hits.is_empty() {
        println!(
            "no {list} entry has been hit since the agent started (the XDP program counts hits only with `hit_counters = true` in the configuration)"
        );
        return Ok(());
    }
    println!(
        "{:<44} {:>14} {:>16}  LAST HIT",
        "ENTRY", "PACKETS", "BYTES"
    );
    for h in &hits {
        println!(
            "{:<44} {:>14} {:>16}  {}",
            h.entry,
            h.packets,
            h.bytes,
            ago(h.last_hit)
        );
    }
    Ok(())
}

/// How long ago a Unix time was, roughly.
fn ago(unix: i64) -> String {
    let s = (crate::service::unix_now() - unix).max(0);
    match s {
        0..120 => format!("{s}s ago"),
        120..7200 => format!("{}m ago", s / 60),
        7200..172_800 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

fn show(cli: &Cli, list: List, which: &Selection, json: bool) -> anyhow::Result<()> {
    let word = which.ase_view.as_deref().unwrap_or("all");
    let (source, by_kind) = match cli.ase {
        true => super::ase::view_filter(word),
        false => (None, None),
    };
    let by_kind = by_kind
        .filter(|k| kind(k).is_ok())
        .or(which.kind.as_deref());
    let r = call(
        cli,
        &Request::List {
            list: Some(list),
            kind: by_kind.map(kind).transpose()?,
            source: source.map(str::to_owned).or_else(|| which.source.clone()),
        },
    )?;
    if json {
        return print_json(&r);
    }
    let entries: Vec<EntryView> = decode(r)?;
    if cli.ase {
        print!(
            "{}",
            super::ase::view(list, &entries, word).map_err(anyhow::Error::msg)?
        );
    } else {
        print_entries(&entries);
    }
    Ok(())
}

/// `allow|deny clear`: one kind, one source, or (with `--all` only) everything.
fn clear(cli: &Cli, list: List, which: &Selection, all: bool, json: bool) -> anyhow::Result<()> {
    let k = which.kind.as_deref().map(kind).transpose()?;
    let source = &which.source;
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
            all,
        },
    )?;
    if json {
        return print_json(&serde_json::json!({ "removed": r }));
    }
    let removed: usize = decode(r)?;
    if cli.ase {
        println!("{} cleared", list.ase_name());
    } else {
        println!("{list} list cleared: {removed} entries removed");
    }
    Ok(())
}

/// Lines sent per request. Each request is one store transaction, and a bulk import's cost
/// is mostly rewriting the index pages its random keys land on: 250k lines per commit
/// imported 1M tokens at ~200k/s where 100k managed ~130k/s (smaller first batches, to start
/// the writer sooner, cost more than they saved once the table held millions of rows).
/// Other writes wait for the batch in hand (about a second).
const IMPORT_BATCH: usize = 250_000;

/// Bytes of lines per request at most, as encoded in JSON (a control character takes six):
/// well under the control protocol's 64 MiB line limit whatever the lines hold.
const IMPORT_BATCH_BYTES: usize = 40 << 20;

/// The bytes `line` takes in the request: JSON-escaped, with its number and punctuation.
fn encoded_len(line: &str) -> usize {
    let escaped: usize = line
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum();
    escaped + LINE_OVERHEAD
}

/// A line's number and punctuation in the request: `[18446744073709551615,""],`.
const LINE_OVERHEAD: usize = 26;

/// Lines longer than this, encoded, are rejected here: one would not fit in a request.
const MAX_LINE: usize = 1 << 20;

/// One import on its way to the agent: what was sent and what the agent answered so far.
struct Import {
    client: Client,
    list: List,
    defaults: ImportDefaults,
    /// File size for the progress bar (0: unknown, stdin).
    total: u64,
    /// Whether to draw the progress bar.
    show: bool,
    accepted: usize,
    new: usize,
    rejected: Vec<(u64, String)>,
    /// The batch sent and not yet answered: its first line and the bytes read up to its end.
    in_flight: Option<(u64, u64)>,
    /// Whether a batch was sent (the next ones continue its import).
    sent_any: bool,
}

impl Import {
    /// Sends one batch of lines (applied whole or not at all; the ones before it stay), then
    /// waits for the answer to the batch before it: the agent parses this one while it
    /// applies that one. A failed batch stops the import; the agent skips the one sent
    /// behind it.
    fn send(&mut self, batch: &mut Vec<(u64, String)>, read: u64) -> anyhow::Result<()> {
        let Some(first) = batch.first().map(|(no, _)| *no) else {
            return Ok(());
        };
        let sent = self.client.send(&Request::Import {
            list: self.list,
            lines: std::mem::take(batch),
            defaults: self.defaults.clone(),
            continues: self.sent_any,
        });
        self.sent_any = true;
        // The answer before it says why the agent stopped reading, if it did.
        self.settle()?;
        sent.map_err(|e| self.stopped(first, e.into()))?;
        self.in_flight = Some((first, read));
        Ok(())
    }

    /// Waits for the answer to the batch in flight, if any.
    fn settle(&mut self) -> anyhow::Result<()> {
        let Some((first, read)) = self.in_flight.take() else {
            return Ok(());
        };
        let r = self
            .client
            .receive()
            .map_err(anyhow::Error::from)
            .and_then(unwrap)
            .and_then(decode::<Imported>)
            .map_err(|e| self.stopped(first, e))?;
        self.accepted += r.accepted;
        self.new += r.new;
        self.rejected.extend(r.rejected);
        if self.show {
            let pct = (read * 100).checked_div(self.total).unwrap_or(0).min(100);
            let bar = "#".repeat((pct / 4) as usize);
            eprint!(
                "\r[{bar:<25}] {pct:>3}%  {} accepted, {} rejected",
                self.accepted,
                self.rejected.len()
            );
            let _ = std::io::stderr().flush();
        }
        Ok(())
    }

    /// The error for an import that stopped at the batch starting at line `first`.
    fn stopped(&self, first: u64, e: anyhow::Error) -> anyhow::Error {
        let (list, accepted, new) = (self.list, self.accepted, self.new);
        let before = if accepted == 0 {
            "nothing was imported".to_owned()
        } else {
            format!(
                "the {accepted} entries ({new} new) from the lines before it are on the {list} list"
            )
        };
        anyhow::anyhow!("{e:#}\nthe import stopped at line {first}: {before}")
    }

    /// Prints the outcome: rejected lines (the first 50) and the totals, or JSON. A refused
    /// line makes the command fail (after the report): a script must not take a partly
    /// imported feed for a whole one.
    fn report(mut self, file: &std::path::Path, secs: f64, json: bool) -> anyhow::Result<()> {
        let (list, accepted, new) = (self.list, self.accepted, self.new);
        self.rejected.sort_by_key(|(no, _)| *no);
        if self.show {
            eprintln!();
        }
        let refused = self.rejected.len();
        let failed = || {
            let rest = if accepted == 0 {
                "nothing was imported".to_owned()
            } else {
                format!("the {accepted} entries of the other lines are on the {list} list")
            };
            anyhow::anyhow!(
                "{} of {} rejected; {rest}",
                plural(refused, "line"),
                file.display()
            )
        };
        if json {
            print_json(&serde_json::json!({
                "accepted": accepted, "new": new, "rejected": self.rejected, "seconds": secs,
            }))?;
            return if refused == 0 { Ok(()) } else { Err(failed()) };
        }
        for (no, why) in self.rejected.iter().take(50) {
            eprintln!("{}:{no}: {}", file.display(), printable(why));
        }
        if self.rejected.len() > 50 {
            eprintln!("... and {} more rejected lines", self.rejected.len() - 50);
        }
        println!(
            "{list}: {accepted} entries imported ({new} new) in {secs:.1}s ({:.0}/s), {refused} lines rejected",
            accepted as f64 / secs.max(1e-9),
        );
        if refused == 0 { Ok(()) } else { Err(failed()) }
    }
}

/// `n thing` or `n things`.
fn plural(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// `allow|deny import`: the file (or stdin) line by line, in batches of [`IMPORT_BATCH`].
pub(super) fn import(
    cli: &Cli,
    list: List,
    file: &PathBuf,
    defaults: ImportDefaults,
    json: bool,
) -> anyhow::Result<()> {
    let (mut reader, total): (Box<dyn BufRead>, u64) = if file.as_os_str() == "-" {
        (Box::new(BufReader::new(std::io::stdin())), 0)
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        (Box::new(BufReader::with_capacity(1 << 20, f)), len)
    };
    let mut run = Import {
        client: Client::connect(&cli.socket)?,
        list,
        defaults,
        total,
        show: std::io::stderr().is_terminal() && !json,
        accepted: 0,
        new: 0,
        rejected: Vec::new(),
        in_flight: None,
        sent_any: false,
    };
    let started = std::time::Instant::now();
    let mut batch = Vec::with_capacity(IMPORT_BATCH);
    let (mut raw, mut line_no, mut read_bytes, mut batch_bytes) = (Vec::new(), 0u64, 0u64, 0);
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
            Ok(text) => {
                let text = text.trim_end_matches(['\n', '\r']);
                let len = encoded_len(text);
                if len > MAX_LINE {
                    run.rejected
                        .push((line_no, "line longer than 1 MiB".into()));
                    continue;
                }
                if batch_bytes + len > IMPORT_BATCH_BYTES {
                    run.send(&mut batch, read_bytes)?;
                    batch_bytes = 0;
                }
                batch_bytes += len;
                batch.push((line_no, text.to_owned()));
            }
            Err(_) => run.rejected.push((line_no, "not valid UTF-8".into())),
        }
        if batch.len() >= IMPORT_BATCH {
            run.send(&mut batch, read_bytes)?;
            batch_bytes = 0;
        }
    }
    run.send(&mut batch, read_bytes)?;
    run.settle()?;
    run.report(file, started.elapsed().as_secs_f64(), json)
}

/// `allow|deny add`: puts one identifier on the list and says whether the kernel enforces it.
fn add(cli: &Cli, list: List, a: &AddArgs) -> anyhow::Result<()> {
    let k = kind(&a.ident.kind)?;
    let (name, value) = name_value(k, &a.ident.values, a.ident.any_name)?;
    let typed = super::ase::ident(k, name.as_deref(), &value);
    let req = Request::Add(AddRequest {
        list: Some(list),
        kind: Some(k),
        name,
        value,
        ttl_secs: a.options.ttl_secs()?,
        reason: a.options.reason.clone(),
        api: a.api.clone(),
        source: None,
        force: a.options.force,
    });
    let r = call(cli, &req)?;
    if a.out.json {
        return print_json(&r);
    }
    let r: Added = decode(r)?;
    if cli.ase {
        // ASE echoes what was added: the address as stored, a secret as typed.
        let shown = if k == Kind::Ip {
            super::ase::ident(k, None, &r.entry.value)
        } else {
            typed
        };
        println!("{shown} added to {}", list.ase_name());
    } else {
        let how = if r.enforced_in_kernel {
            " (enforced in the kernel)"
        } else {
            ""
        };
        let verb = if r.new { "added" } else { "updated" };
        println!(
            "{list} {} {verb}{how}, expires {}",
            describe(&r.entry),
            when(r.entry.expires)
        );
    }
    Ok(())
}

/// `allow|deny remove`: takes an identifier off the list (every source unless one is named).
fn remove(cli: &Cli, list: List, r: &RemoveArgs) -> anyhow::Result<()> {
    let k = kind(&r.ident.kind)?;
    let (name, value) = name_value(k, &r.ident.values, r.ident.any_name)?;
    let typed = super::ase::ident(k, name.as_deref(), &value);
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
    if r.out.json {
        return print_json(&answer);
    }
    let removed: Vec<EntryView> = decode(answer)?;
    let first = removed.first().map(describe).unwrap_or_default();
    if cli.ase {
        let shown = match removed.first() {
            Some(e) if k == Kind::Ip => super::ase::ident(k, None, &e.value),
            _ => typed,
        };
        println!("{shown} deleted from {}", list.ase_name());
    } else {
        println!(
            "{list} {first} removed ({} entr{})",
            removed.len(),
            if removed.len() == 1 { "y" } else { "ies" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_length_matches_json() {
        let controls: String = (0u8..0x20).map(char::from).collect();
        for line in ["token abc", "a \"quoted\" \\ value", &controls, "ünï ✓"] {
            let escaped = serde_json::to_string(line).expect("encode").len() - 2;
            assert!(
                encoded_len(line) - LINE_OVERHEAD >= escaped,
                "{line:?}: {} < {escaped}",
                encoded_len(line) - LINE_OVERHEAD
            );
        }
        // Exact where JSON has no short escape (\t, \n, \r, \b, \f take two bytes).
        let plain: String = (0u8..0x20)
            .filter(|b| !b"\t\n\r\x08\x0c".contains(b))
            .map(char::from)
            .chain("\"\\x".chars())
            .collect();
        let escaped = serde_json::to_string(&plain).expect("encode").len() - 2;
        assert_eq!(encoded_len(&plain) - LINE_OVERHEAD, escaped);
        let numbered = serde_json::to_string(&(u64::MAX, "")).expect("encode");
        assert!(LINE_OVERHEAD > numbered.len(), "{numbered}");
    }
}
