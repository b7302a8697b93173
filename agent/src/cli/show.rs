//! The read-only verbs: status, api, stats.

use super::*;
use crate::control::answer::{ApiList, ApiReloaded, LinkState, Stats, Status};

/// `portcullis switch WHICH [API] on|off`.
pub(super) fn switch(
    cli: &Cli,
    which: crate::control::proto::SwitchName,
    rest: &[String],
    json: bool,
) -> anyhow::Result<()> {
    let (api, state) = match rest {
        [state] => (None, state),
        [api, state] => (Some(api.clone()), state),
        _ => anyhow::bail!("expected [API] on|off"),
    };
    let on = match state.as_str() {
        "on" => true,
        "off" => false,
        other => anyhow::bail!("{:?}: expected on or off", printable(other)),
    };
    let r = call(cli, &Request::Switch { which, api, on })?;
    if json {
        return print_json(&r);
    }
    let s: crate::control::answer::Switched = decode(r)?;
    let removed = match s.removed {
        0 => String::new(),
        1 => " (1 deny entry removed)".into(),
        n => format!(" ({n} deny entries removed)"),
    };
    println!(
        "{}: {}{removed}",
        printable(&s.switch),
        if s.on { "on" } else { "off" }
    );
    Ok(())
}

/// `status` in ASE's form (`cli.sh -u admin -p admin status`): the lines scripts grep.
fn ase_status(s: &Status) {
    let word = |on: bool| if on { "enabled" } else { "disabled" };
    let enforcing = matches!(s.mode, crate::config::Mode::Enforce);
    println!("API Security Enforcer");
    println!("{:<24}: started", "status");
    println!("{:<24}: inline", "mode");
    println!("{:<24}: {}", "firewall", word(enforcing));
    println!("{:<24}: {}", "abs", word(s.abs.is_some()));
    println!("{:<24}: {}", "abs attack", word(s.abs_blocking));
    println!("{:<24}: {}", "ase detected attack", word(s.detections));
}

pub(super) fn status(cli: &Cli, json: bool) -> anyhow::Result<()> {
    let r = call(cli, &Request::Status)?;
    if json {
        return print_json(&r);
    }
    let s: Status = decode(r)?;
    if cli.ase {
        ase_status(&s);
        return Ok(());
    }
    println!("mode: {}", s.mode.as_str());
    if s.interfaces.is_empty() {
        println!("interfaces: none attached");
    }
    for i in &s.interfaces {
        let fb = i
            .fell_back
            .as_ref()
            .map(|s| format!(" (native refused: {})", printable(s)))
            .unwrap_or_default();
        let name = printable(&i.iface);
        match (i.state, i.xdp_mode) {
            (LinkState::Attached, Some(m)) => println!("interface {name}: XDP {}{fb}", m.as_str()),
            (LinkState::Attached, None) => println!("interface {name}: XDP (mode unknown){fb}"),
            (LinkState::Detached, _) => println!(
                "interface {name}: DETACHED, no XDP filtering here (the L7 checker, if on, still checks; `portcullis attach --iface {name}` puts XDP back)"
            ),
        }
    }
    println!("database: {}", printable(&s.database.to_string_lossy()));
    let word = |on: bool| if on { "on" } else { "OFF" };
    println!(
        "real-time detections: {}; ABS blocking: {}",
        word(s.detections),
        word(s.abs_blocking)
    );
    for (api, on) in &s.api_blocking {
        println!(
            "API {}: blocking {} (set by `portcullis switch api-blocking`)",
            printable(api),
            word(*on)
        );
    }
    println!("kernel IP entries: {}", s.kernel_ip_entries);
    println!("uptime: {}s", s.uptime_secs);
    if let Some(abs) = &s.abs {
        let last = abs.last_success.map_or("never".to_string(), |t| {
            format!("{}s ago", crate::service::unix_now() - t)
        });
        let held = match (abs.removals_held, abs.shrink_held, abs.unreadable) {
            (0, _, _) => String::new(),
            (n, true, _) => format!(", {n} removals held until the next poll confirms the shrink"),
            (n, false, u) => format!(", {n} removals held ({u} items could not be read)"),
        };
        println!(
            "ABS {}: last sync {last}, {} listed, {} failed polls{held}{}",
            printable(&abs.url),
            abs.listed,
            abs.failures,
            abs.last_error
                .as_ref()
                .map(|e| format!(", last error: {}", printable(e)))
                .unwrap_or_default()
        );
    }
    if let Some(f) = &s.fleet {
        println!(
            "fleet {} on {}: {}, {} queued, lag {}{}",
            f.fleet,
            printable(&f.redis),
            f.state,
            f.queued,
            f.lag_ms.map_or("-".into(), |l| format!("{l} ms")),
            f.last_error
                .as_ref()
                .map(|e| format!(", last error: {}", printable(e)))
                .unwrap_or_default()
        );
    }
    println!(
        "{:<6} {:<9} {:<8} {:>10}",
        "LIST", "KIND", "SOURCE", "ENTRIES"
    );
    for l in &s.lists {
        println!(
            "{:<6} {:<9} {:<8} {:>10}",
            l.list.as_str(),
            l.kind.as_str(),
            printable(&l.source),
            l.count
        );
    }
    Ok(())
}

fn print_refused(errors: &[String]) {
    for e in errors {
        eprintln!("refused: {}", printable(e));
    }
}

pub(super) fn api(cli: &Cli, verb: &ApiVerb) -> anyhow::Result<()> {
    match verb {
        ApiVerb::List(j) => {
            let r = call(cli, &Request::ApiList)?;
            if j.json {
                return print_json(&r);
            }
            let r: ApiList = decode(r)?;
            println!(
                "{:<16} {:<20} {:<16} {:<9} SERVERS",
                "API", "HOSTNAME", "URL", "BLOCKING"
            );
            for a in &r.apis {
                println!(
                    "{:<16} {:<20} {:<16} {:<9} {}{}",
                    printable(&a.name),
                    printable(&a.hostname),
                    printable(&a.url),
                    if a.enable_blocking { "yes" } else { "no" },
                    printable(&a.servers.join(",")),
                    if a.decoy { "  (decoys armed)" } else { "" }
                );
            }
            print_refused(&r.errors);
        }
        ApiVerb::Show { name } => {
            print_json(&call(cli, &Request::ApiShow { name: name.clone() })?)?
        }
        ApiVerb::Reload(j) => {
            let r = call(cli, &Request::ApiReload)?;
            if j.json {
                return print_json(&r);
            }
            let r: ApiReloaded = decode(r)?;
            println!("{} API definitions loaded", r.loaded);
            print_refused(&r.errors);
        }
    }
    Ok(())
}

pub(super) fn stats(cli: &Cli, json: bool) -> anyhow::Result<()> {
    let r = call(cli, &Request::Stats)?;
    if json {
        return print_json(&r);
    }
    let s: Stats = decode(r)?;
    println!("{:<20} {:>14} {:>16}", "XDP VERDICT", "PACKETS", "BYTES");
    for (name, c) in &s.kernel {
        println!("{name:<20} {:>14} {:>16}", c.packets, c.bytes);
    }
    if !s.l7.is_empty() {
        println!("\n{:<20} {:>14}", "L7 OUTCOME", "REQUESTS");
        for (name, n) in &s.l7 {
            println!("{name:<20} {n:>14}");
        }
    }
    Ok(())
}

/// `portcullis reload`: the agent reads its configuration again (as on SIGHUP) and says what
/// changed and what waits for a restart; a refused file fails with the reason.
pub(super) fn reload(cli: &Cli, json: bool) -> anyhow::Result<()> {
    let r = call(cli, &Request::Reload)?;
    if json {
        return print_json(&r);
    }
    let r: crate::control::answer::Reloaded = decode(r)?;
    if r.applied.is_empty() {
        println!("reloaded: nothing to change");
    }
    for a in &r.applied {
        println!("applied: {a}");
    }
    if !r.restart_needed.is_empty() {
        println!(
            "needs a restart to take effect: {}",
            r.restart_needed.join(", ")
        );
    }
    Ok(())
}

/// `portcullis events`: the live event stream, a line per event (`--json`: as the agent
/// sends them). Ctrl-C ends it at once with status 0; the agent notices the closed socket.
pub(super) fn events(cli: &Cli, json: bool) -> anyhow::Result<()> {
    extern "C" fn interrupted(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe; nothing is left to flush (lines are written
        // whole, and stdout is flushed after each).
        unsafe { libc::_exit(0) }
    }
    // SAFETY: installs a handler that only calls an async-signal-safe function.
    unsafe { libc::signal(libc::SIGINT, interrupted as *const () as libc::sighandler_t) };
    let mut client = Client::connect(&cli.socket)?;
    unwrap(client.call(&Request::Events)?)?;
    let mut out = std::io::stdout().lock();
    while let Some(line) = client.next_line()? {
        if json {
            out.write_all(line.as_bytes())?;
        } else {
            let event: crate::events::Event = serde_json::from_str(&line).context(
                "an event this CLI does not know (are the CLI and the agent the same version?)",
            )?;
            writeln!(out, "{}", event.line())?;
        }
        out.flush()?;
    }
    bail!("the agent closed the event stream (stopped or restarted)")
}
