//! The `portcullis` command line: the daemon verb and the client verbs that talk to it.
//!
//! ASE's verbs (`add_blacklist ip 1.1.1.1`, `view_whitelist`, ...) are rewritten to ours by
//! [`rewrite_ase`] before parsing, and answered with ASE-style lines.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::config::{Config, Mode, XdpMode};
use crate::control::client::Client;
use crate::control::proto::{AddRequest, ImportDefaults, Request, Response};
use crate::ident::Kind;
use crate::kernel::List;
use crate::paths;

/// Portcullis: keeps known-bad API clients out, down to the XDP layer.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about, propagate_version = true)]
pub struct Cli {
    /// Control socket of the agent.
    #[arg(long, global = true, env = "PORTCULLIS_SOCKET", default_value = paths::CONTROL_SOCKET)]
    pub socket: PathBuf,
    /// Answer in ASE's style (set by the ASE verb aliases).
    #[arg(long, hide = true, global = true)]
    pub ase: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent daemon (as root or with CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON).
    Agent(Box<AgentArgs>),
    /// Manage the deny list.
    Deny {
        /// What to do with it.
        #[command(subcommand)]
        verb: ListVerb,
    },
    /// Manage the allow list (it always wins over the deny list).
    Allow {
        /// What to do with it.
        #[command(subcommand)]
        verb: ListVerb,
    },
    /// Interfaces, XDP mode, list sizes.
    Status(JsonFlag),
    /// The L7 checker's API definitions.
    Api {
        /// What to do.
        #[command(subcommand)]
        verb: ApiVerb,
    },
    /// Kernel counters per verdict.
    Stats(JsonFlag),
    /// Remove the XDP filter from interfaces; works whether or not the agent runs.
    Detach {
        /// Only this interface (default: all).
        #[arg(long)]
        iface: Option<String>,
        /// Pin directory.
        #[arg(long, default_value = paths::PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Print shell completions.
    #[command(hide = true)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    #[command(hide = true)]
    Man,
}

/// `portcullis api ...`.
#[derive(Debug, Subcommand)]
pub enum ApiVerb {
    /// Loaded APIs and refused files.
    List(JsonFlag),
    /// One API's definition.
    Show {
        /// The API's name (its file name without .json).
        name: String,
    },
    /// Re-read the API directory (also done on SIGHUP).
    Reload(JsonFlag),
}

/// `--json`.
#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// `portcullis agent` options; flags override the config file.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// The global --socket, when given (set by `run`).
    #[arg(skip)]
    pub socket_override: Option<PathBuf>,
    /// Configuration file.
    #[arg(long, default_value = paths::CONFIG)]
    pub config: PathBuf,
    /// Attach to this interface (repeatable; replaces the config's list).
    #[arg(long = "iface")]
    pub ifaces: Vec<String>,
    /// native (falls back to generic) or generic.
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpMode>,
    /// enforce or monitor.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Database directory.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Pin directory on bpffs.
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
    /// Metrics address ("" disables).
    #[arg(long)]
    pub metrics: Option<String>,
    /// Directory of API JSON definitions (ASE format) for the L7 checker.
    #[arg(long)]
    pub api_dir: Option<PathBuf>,
    /// HTTPS listen address of the L7 checker.
    #[arg(long)]
    pub https: Option<String>,
    /// Plain HTTP listen address of the L7 checker.
    #[arg(long)]
    pub http: Option<String>,
    /// PEM certificate chain for HTTPS.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// A proxy in front of the checker (CIDR, repeatable; replaces the config's list):
    /// X-Forwarded-For is read only from these.
    #[arg(long = "trusted-proxy")]
    pub trusted_proxies: Vec<String>,
    /// Base URL of the ABS engine whose attack list is mirrored.
    #[arg(long)]
    pub abs_url: Option<String>,
    /// ABS access key.
    #[arg(long)]
    pub abs_access_key: Option<String>,
    /// File with the ABS secret key.
    #[arg(long)]
    pub abs_secret_key_file: Option<PathBuf>,
    /// How often to poll ABS (e.g. 30s, 10m).
    #[arg(long)]
    pub abs_poll: Option<String>,
    /// PEM CA bundle for ABS over HTTPS.
    #[arg(long)]
    pub abs_ca: Option<PathBuf>,
    /// Check the configuration and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// What to do with a list.
#[derive(Debug, Subcommand)]
pub enum ListVerb {
    /// Add an identifier: `ip ADDR|CIDR`, `cookie NAME VALUE`, `token VALUE`,
    /// `api-key NAME VALUE` (or `api-key --any-name VALUE`), `username "NAME"`.
    Add {
        /// Kind: ip, cookie, token, api-key, username.
        kind: String,
        /// Name and/or value.
        #[arg(required = true, num_args = 1..=2)]
        values: Vec<String>,
        /// api-key only: the key matches under any header or query parameter name.
        #[arg(long)]
        any_name: bool,
        /// Expire after this long (30s, 15m, 1h, 7d).
        #[arg(long)]
        ttl: Option<String>,
        /// Why (shown in list and logs).
        #[arg(long)]
        reason: Option<String>,
        /// Only for this API.
        #[arg(long)]
        api: Option<String>,
        /// Allow a deny that covers every address, this host, or a management network.
        #[arg(long)]
        force: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Remove an identifier (from every source unless --source).
    Remove {
        /// Kind.
        kind: String,
        /// Name and/or value.
        #[arg(required = true, num_args = 1..=2)]
        values: Vec<String>,
        /// api-key only: the entry that matches any name.
        #[arg(long)]
        any_name: bool,
        /// Only the entry from this source.
        #[arg(long)]
        source: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show entries.
    List {
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Remove every entry (of a kind, of a source).
    Clear {
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Add entries from a file: one per line (`KIND [NAME] VALUE`, or a bare IP/CIDR) or
    /// NDJSON (`{"kind":"ip","value":"203.0.113.7","ttl":"1h"}`); `-` reads stdin.
    Import {
        /// The file.
        file: PathBuf,
        /// Expire after this long.
        #[arg(long)]
        ttl: Option<String>,
        /// Reason for every entry.
        #[arg(long)]
        reason: Option<String>,
        /// Source label (default manual).
        #[arg(long)]
        source: Option<String>,
        /// Allow world-blocking denies.
        #[arg(long)]
        force: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// Rewrites ASE's verbs to Portcullis's: `add_blacklist ip 1.1.1.1` → `--ase deny add ip 1.1.1.1`.
pub fn rewrite_ase(args: Vec<String>) -> Vec<String> {
    // Skip global options before the verb.
    let mut at = 1;
    while let Some(a) = args.get(at) {
        match a.as_str() {
            "--socket" => at += 2,
            s if s.starts_with("--socket=") || s == "--ase" => at += 1,
            _ => break,
        }
    }
    let Some(verb) = args.get(at) else {
        return args;
    };
    let (list, action) = match verb.as_str() {
        "add_blacklist" => ("deny", "add"),
        "add_whitelist" => ("allow", "add"),
        "delete_blacklist" => ("deny", "remove"),
        "delete_whitelist" => ("allow", "remove"),
        "view_blacklist" => ("deny", "list"),
        "view_whitelist" => ("allow", "list"),
        "clear_blacklist" => ("deny", "clear"),
        "clear_whitelist" => ("allow", "clear"),
        _ => return args,
    };
    let mut out: Vec<String> = args[..at].to_vec();
    out.extend(["--ase".into(), list.into(), action.into()]);
    let rest = &args[at + 1..];
    // ASE's view/clear take the kind positionally.
    if matches!(action, "list" | "clear") && !rest.is_empty() && !rest[0].starts_with('-') {
        out.push("--kind".into());
    }
    out.extend(rest.iter().cloned());
    out
}

fn kind(s: &str) -> anyhow::Result<Kind> {
    Ok(s.parse::<Kind>()?)
}

/// Splits the positional values of add/remove into (name, value) by kind.
fn name_value(
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

fn call(cli: &Cli, req: &Request) -> anyhow::Result<serde_json::Value> {
    let mut client = Client::connect(&cli.socket)?;
    unwrap(client.call(req)?)
}

fn unwrap(r: Response) -> anyhow::Result<serde_json::Value> {
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

fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn when(unix: Option<i64>) -> String {
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

fn describe(e: &serde_json::Value) -> String {
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

fn print_entries(entries: &[serde_json::Value]) {
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
        Command::Detach { iface, pin_dir } => detach(iface.as_deref(), pin_dir),
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
    let explicit = argv
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
    if a.check_config {
        // The effective configuration, file and flags merged: what the agent would run with.
        // The whole output is valid TOML (the verdict is a comment), so it can be saved and
        // used as a config file; the ABS access key is not repeated into logs and tickets.
        let mut shown = cfg.clone();
        if !shown.abs.access_key.is_empty() {
            let fp = crate::ident::fingerprint(&crate::ident::digest(&shown.abs.access_key));
            shown.abs.access_key = format!("(set; not shown: {fp})");
        }
        let effective = toml::to_string(&shown).context("printing the effective configuration")?;
        println!(
            "# configuration OK: {} interface(s), mode {}\n# effective configuration (file and flags merged); the ABS access key is shown\n# as a fingerprint only: put the real key back before using this as a config file\n{effective}",
            cfg.interfaces.len(),
            if cfg.mode == crate::config::Mode::Monitor {
                "monitor"
            } else {
                "enforce"
            },
        );
        return Ok(());
    }
    crate::daemon::run(cfg)
}

fn list_verb(cli: &Cli, list: List, verb: &ListVerb) -> anyhow::Result<()> {
    match verb {
        ListVerb::Add {
            kind: k,
            values,
            any_name,
            ttl,
            reason,
            api,
            force,
            json,
        } => {
            let k = kind(k)?;
            let (name, value) = name_value(k, values, *any_name)?;
            let ttl_secs = ttl
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
                reason: reason.clone(),
                api: api.clone(),
                source: None,
                force: *force,
            });
            let r = call(cli, &req)?;
            if *json {
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
        }
        ListVerb::Remove {
            kind: k,
            values,
            any_name,
            source,
            json,
        } => {
            let k = kind(k)?;
            let (name, value) = name_value(k, values, *any_name)?;
            let r = call(
                cli,
                &Request::Remove {
                    list,
                    kind: k,
                    name,
                    value,
                    source: source.clone(),
                },
            )?;
            if *json {
                return print_json(&r);
            }
            let removed = r.as_array().cloned().unwrap_or_default();
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
        }
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
            json,
        } => {
            let k = k.as_deref().map(kind).transpose()?;
            let r = call(
                cli,
                &Request::Clear {
                    list,
                    kind: k,
                    source: source.clone(),
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

fn import(
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
        let r = unwrap(client.call(&Request::Import {
            list,
            lines: std::mem::take(batch),
            defaults: defaults.clone(),
        })?)?;
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

fn status(cli: &Cli, json: bool) -> anyhow::Result<()> {
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
        println!(
            "interface {}: XDP {}{fb}",
            i["iface"].as_str().unwrap_or("?"),
            i["xdp_mode"].as_str().unwrap_or("?")
        );
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

fn api(cli: &Cli, verb: &ApiVerb) -> anyhow::Result<()> {
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

fn stats(cli: &Cli, json: bool) -> anyhow::Result<()> {
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

fn detach(iface: Option<&str>, pin_dir: &std::path::Path) -> anyhow::Result<()> {
    let ifaces: Vec<String> = match iface {
        Some(i) => vec![i.to_owned()],
        None => std::fs::read_dir(pin_dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_prefix("link_"))
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    if ifaces.is_empty() {
        println!(
            "nothing attached (no pinned links under {})",
            pin_dir.display()
        );
    }
    for i in ifaces {
        if crate::kernel::detach(pin_dir, &i)? {
            println!("detached from {i}");
        } else {
            println!("{i}: not attached");
        }
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
    fn ase_verbs_are_rewritten() {
        assert_eq!(
            rewrite_ase(v("p add_blacklist ip 1.1.1.1")),
            v("p --ase deny add ip 1.1.1.1")
        );
        assert_eq!(
            rewrite_ase(v("p view_whitelist ip")),
            v("p --ase allow list --kind ip")
        );
        assert_eq!(rewrite_ase(v("p clear_blacklist")), v("p --ase deny clear"));
        assert_eq!(
            rewrite_ase(v("p deny add ip 1.1.1.1")),
            v("p deny add ip 1.1.1.1")
        );
        assert_eq!(
            rewrite_ase(v("p --socket /s add_blacklist ip 1.1.1.1")),
            v("p --socket /s --ase deny add ip 1.1.1.1")
        );
        Cli::command().debug_assert();
    }
}
