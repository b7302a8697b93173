//! `portcullis fleet status|resync`: the fleet link (see `crate::fleet`).

use super::*;
use crate::control::answer::FleetState;

/// `portcullis fleet …`.
#[derive(Debug, Subcommand)]
pub enum FleetVerb {
    /// The link to Redis, the queue, the lag, and this host's list digest (equal on every
    /// host in step).
    Status(JsonFlag),
    /// Reload the fleet's snapshot now: the `fleet` rows become exactly what Redis holds.
    Resync(JsonFlag),
}

pub(super) fn fleet(cli: &Cli, verb: &FleetVerb) -> anyhow::Result<()> {
    let (resync, json) = match verb {
        FleetVerb::Status(j) => (false, j.json),
        FleetVerb::Resync(j) => (true, j.json),
    };
    let r = call(cli, &Request::Fleet { resync })?;
    if json {
        return print_json(&r);
    }
    let f: FleetState = decode(r)?;
    if resync {
        println!("Resync requested.");
    }
    println!("fleet     {} (as {}) on {}", f.fleet, f.host, f.redis);
    println!("state     {}", f.state);
    if let Some(e) = &f.last_error {
        println!("error     {}", printable(e));
    }
    println!("epoch     {}  position {}", f.epoch, f.position);
    if let Some(lag) = f.lag_ms {
        println!("lag       {lag} ms");
    }
    println!(
        "queued {}  published {}  applied {}  skipped {}  refused {}  resyncs {}",
        f.queued, f.published, f.applied, f.skipped, f.refused, f.resyncs
    );
    println!("digest    {} over {} entries", f.digest, f.entries);
    Ok(())
}
