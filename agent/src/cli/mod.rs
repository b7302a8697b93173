//! The `portcullis` command line: the daemon verb and the client verbs that talk to it.
//!
//! ASE's verbs (`add_blacklist ip 1.1.1.1`, `view_whitelist`, ...) are rewritten to ours by
//! [`rewrite_ase`] before parsing, and answered with ASE-style lines.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::config::{Config, Mode, XdpMode};
use crate::control::answer::{Added, EntryView, Imported};
use crate::control::client::Client;
use crate::control::proto::{AddRequest, ImportDefaults, Request, Response};
use crate::model::Kind;
use crate::model::List;
use crate::paths;

mod args;
mod ase;
mod backup;
mod doctor;
mod fleet;
mod iface;
mod lists;
mod output;
mod show;
mod sideband;

pub use args::{
    AddArgs, AgentArgs, ApiVerb, Cli, Command, EntryOptions, JsonFlag, ListVerb, LogFormat,
    RemoveArgs, Selection, rewrite_ase,
};
pub use fleet::FleetVerb;
use lists::list_verb;
use output::*;
use show::{api, stats, status};
pub use sideband::{RestVerb, SidebandVerb};

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Agent(a) => {
            let mut a = (**a).clone();
            a.socket_override = Some(cli.socket.clone());
            agent(&a)
        }
        Command::Deny { verb } => list_verb(&cli, List::Deny, verb),
        Command::Allow { verb } => list_verb(&cli, List::Allow, verb),
        Command::Status(j) => status(&cli, j.json),
        Command::Api { verb } => api(&cli, verb),
        Command::Stats(j) => stats(&cli, j.json),
        Command::Reload(j) => show::reload(&cli, j.json),
        Command::Events(j) => show::events(&cli, j.json),
        Command::Detach { iface, pin_dir } => iface::detach(&cli, iface.as_deref(), pin_dir),
        Command::Backup { file } => backup::backup(&cli, file),
        Command::Restore { file, force } => backup::restore(&cli, file, *force),
        Command::Attach { iface, xdp_mode } => iface::attach(&cli, iface.as_deref(), *xdp_mode),
        Command::Sideband { verb } => sideband::sideband(&cli, verb),
        Command::Rest { verb } => sideband::rest(&cli, verb),
        Command::Fleet { verb } => fleet::fleet(&cli, verb),
        Command::Switch { which, rest, out } => show::switch(&cli, *which, rest, out.json),
        Command::Doctor { config, iface, out } => doctor::doctor(config, iface, out.json),
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "portcullis",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
    }
}

fn agent(a: &AgentArgs) -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let cfg = effective_config(a, &argv, false)?;
    let problems = crate::preflight::problems(&cfg);
    if a.check_config {
        return check_config(&cfg, &problems);
    }
    if !problems.is_empty() {
        // Before anything is loaded or attached: a start that cannot finish does not begin.
        bail!("not starting:\n  {}", problems.join("\n  "));
    }
    // SIGHUP and `portcullis reload` read the file again, with the same flags over it.
    let args = a.clone();
    // A file there at start must still be there: one gone (mid-rename, purged) is not "the
    // defaults".
    let existed = a.config.exists();
    let source = move || effective_config(&args, &argv, existed);
    crate::daemon::run(cfg, Box::new(source))
}

/// The configuration the agent runs with: the file, then the flags over it, validated (not
/// yet checked against this machine: see [`crate::preflight`]).
pub fn effective_config(
    a: &AgentArgs,
    argv: &[String],
    must_exist: bool,
) -> anyhow::Result<Config> {
    let explicit = must_exist
        || argv
            .iter()
            .any(|x| x == "--config" || x.starts_with("--config="));
    let mut cfg = Config::load(&a.config, explicit)?;
    if !a.ifaces.is_empty() {
        cfg.interfaces = a.ifaces.clone();
    }
    /// A flag given on the command line replaces the file's value.
    fn over<T: Clone>(dst: &mut T, flag: &Option<T>) {
        if let Some(v) = flag {
            *dst = v.clone();
        }
    }
    over(&mut cfg.xdp_mode, &a.xdp_mode);
    over(&mut cfg.mode, &a.mode);
    over(&mut cfg.state_dir, &a.state_dir);
    over(&mut cfg.pin_dir, &a.pin_dir);
    over(&mut cfg.metrics, &a.metrics);
    over(&mut cfg.checker.api_dir, &a.api_dir);
    over(&mut cfg.checker.https, &a.https);
    over(&mut cfg.checker.http, &a.http);
    over(&mut cfg.checker.tls_cert, &a.tls_cert);
    over(&mut cfg.checker.tls_key, &a.tls_key);
    if !a.trusted_proxies.is_empty() {
        cfg.checker.trusted_proxies.clone_from(&a.trusted_proxies);
    }
    over(&mut cfg.abs.url, &a.abs_url);
    over(&mut cfg.abs.access_key, &a.abs_access_key);
    over(&mut cfg.abs.secret_key_file, &a.abs_secret_key_file);
    over(&mut cfg.abs.poll, &a.abs_poll);
    if a.abs_ca.is_some() {
        cfg.abs.ca_file.clone_from(&a.abs_ca);
    }
    let socket_flag = argv
        .iter()
        .any(|x| x == "--socket" || x.starts_with("--socket="));
    if socket_flag || std::env::var_os("PORTCULLIS_SOCKET").is_some() {
        cfg.socket = a.socket_override.clone().unwrap_or(cfg.socket);
    }
    cfg.validate()?;
    Ok(cfg)
}

/// `agent --check-config`: the effective configuration, file and flags merged (what the
/// agent would run with), then what on this machine would stop a start. The output is valid
/// TOML (the verdict is a comment), so it can be saved and used as a config file; the ABS
/// access key and the Redis password are not repeated into logs and tickets.
fn check_config(cfg: &Config, problems: &[String]) -> anyhow::Result<()> {
    let mut shown = cfg.clone();
    if !shown.abs.access_key.is_empty() {
        let fp = crate::model::fingerprint(&crate::model::digest(&shown.abs.access_key));
        shown.abs.access_key = format!("(set; not shown: {fp})");
    }
    shown.fleet.redis = shown.fleet.redacted_url();
    let effective = toml::to_string(&shown).context("printing the effective configuration")?;
    let verdict = if problems.is_empty() {
        "configuration OK"
    } else {
        "configuration parses, but the agent would not start here (reasons on stderr)"
    };
    println!(
        "# {verdict}: {} interface(s), mode {}\n# effective configuration (file and flags merged); the ABS access key is shown\n# as a fingerprint only: put the real key back before using this as a config file\n{effective}",
        cfg.interfaces.len(),
        if cfg.mode == Mode::Monitor {
            "monitor"
        } else {
            "enforce"
        },
    );
    if !problems.is_empty() {
        bail!(
            "the agent would not start with this configuration here:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn what_the_agent_sends_cannot_drive_the_terminal() {
        assert_eq!(printable("ok ünï ✓"), "ok ünï ✓");
        let shown = printable("bad\u{1b}[2J\u{1b}]0;owned\u{7}\r\n");
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.starts_with("bad\\u{1b}[2J"), "{shown:?}");
        // A right-to-left override would make "admin\u{202E}nimda" read otherwise.
        assert_eq!(
            printable("jo\u{202E}eod\u{200B}"),
            "jo\\u{202e}eod\\u{200b}"
        );
    }

    #[test]
    fn ase_verbs_are_rewritten() {
        for (ase, ours) in [
            ("p add_blacklist ip 1.1.1.1", "p --ase deny add ip 1.1.1.1"),
            ("p view_whitelist ip", "p --ase allow list --ase-view ip"),
            ("p clear_blacklist", "p --ase deny clear --all"),
            ("p clear_blacklist ip", "p --ase deny clear --kind ip"),
            ("p clear_blacklist all", "p --ase deny clear --all"),
            ("p clear_blacklist abs", "p --ase deny clear --source abs"),
            (
                "p view_blacklist realtime",
                "p --ase deny list --ase-view realtime",
            ),
            (
                "p view_blacklist decoy",
                "p --ase deny list --ase-view decoy",
            ),
            ("p view_blacklist", "p --ase deny list"),
            (
                "p -u admin -p admin add_blacklist ip 1.1.1.1",
                "p --ase deny add ip 1.1.1.1",
            ),
            ("p deny add ip 1.1.1.1", "p deny add ip 1.1.1.1"),
            ("p -u admin -p admin list_api", "p api list"),
            ("p api_info shop", "p api show shop"),
            (
                "p -u admin -p admin disable_ase_detected_attack",
                "p switch detections off",
            ),
            ("p enable_abs_attack", "p switch abs on"),
            (
                "p enable_ase_detected_attack -u admin -p admin",
                "p switch detections on",
            ),
            ("p -u admin -p admin status", "p --ase status"),
            ("p status", "p status"),
            ("p disable_blocking shop", "p switch api-blocking shop off"),
            (
                "p --socket /s add_blacklist ip 1.1.1.1",
                "p --socket /s --ase deny add ip 1.1.1.1",
            ),
        ] {
            assert_eq!(rewrite_ase(v(ase)), v(ours), "{ase}");
        }
        Cli::command().debug_assert();
    }
}
