//! The command line's shape (clap) and the rewriting of ASE's verbs to ours.

use super::*;

/// Portcullis: keeps known-bad API clients out, down to the XDP layer.
#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about,
    propagate_version = true,
    after_help = "ASE's verbs work too (add_blacklist, view_blacklist, delete_whitelist, ..., list_api, api_info, \
enable_blocking API, disable_ase_detected_attack, enable_abs_attack, ...), with ASE's output. \
ASE's `-u USER -p PASS` before the verb are accepted and ignored: access is the control socket's \
(root, or the socket group)."
)]
pub struct Cli {
    /// Control socket of the agent.
    #[arg(long, global = true, env = "PORTCULLIS_SOCKET", default_value = paths::CONTROL_SOCKET)]
    pub socket: PathBuf,
    /// Log lines as text, or as one JSON object per line for journald/Loki pipelines
    /// (schema in README, "Operating it").
    #[arg(
        long,
        global = true,
        value_enum,
        env = "PORTCULLIS_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Answer in ASE's style (set by the ASE verb aliases).
    #[arg(long, hide = true, global = true)]
    pub ase: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written (stderr; the journal under systemd).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`, then the event's
    /// own fields.
    Json,
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
    /// Follow what the filter does, live: sampled XDP drops (interface, source, verdict,
    /// matched deny entry) and the L7 checker's blocks and detections. Ctrl-C ends it.
    Events(JsonFlag),
    /// Read the configuration file again and apply it, as SIGHUP does (root): interfaces,
    /// mode, drop sampling, safety limits, the checker's certificate and APIs, ABS. A file
    /// that does not validate is refused with the reason; the running one stays.
    Reload(JsonFlag),
    /// Write a consistent copy of the lists (digests included) while the agent runs. Root.
    Backup {
        /// The new file (never overwritten).
        file: PathBuf,
    },
    /// Replace the lists with a backup; the lists before are kept beside the database. Root.
    Restore {
        /// The backup.
        file: PathBuf,
        /// Restore even a deny list that would cut off everyone or this host.
        #[arg(long)]
        force: bool,
    },
    /// Put the XDP filter back on interfaces after a detach (through the running agent).
    Attach {
        /// Only this interface (default: the configured ones).
        #[arg(long)]
        iface: Option<String>,
        /// native (falls back to generic) or generic (default: the configured mode).
        #[arg(long, value_enum)]
        xdp_mode: Option<XdpMode>,
    },
    /// Take the XDP filter off interfaces at once; works whether or not the agent runs, and
    /// a running agent leaves it off until `attach`.
    Detach {
        /// Only this interface (default: all).
        #[arg(long)]
        iface: Option<String>,
        /// Pin directory.
        #[arg(long, default_value = paths::PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Turn ASE's switches on or off: real-time detections, ABS blocking, or one API's
    /// blocking (`api-blocking NAME`). Kept across restarts; off takes the detections' or
    /// ABS's entries off the deny list.
    Switch {
        /// detections, abs or api-blocking.
        #[arg(value_enum)]
        which: crate::control::proto::SwitchName,
        /// The API (api-blocking only), then on or off.
        #[arg(num_args = 1..=2, value_names = ["[API] on|off"])]
        rest: Vec<String>,
        /// `--json`.
        #[command(flatten)]
        out: JsonFlag,
    },
    /// ASE's sideband: the tokens gateways present (`ASE-Token`), and whether they must.
    Sideband {
        /// What to do.
        #[command(subcommand)]
        verb: super::SidebandVerb,
    },
    /// The management REST API (ASE's port 8010 layout).
    Rest {
        /// What to do.
        #[command(subcommand)]
        verb: super::RestVerb,
    },
    /// The fleet: one allow and deny list on every host, through Redis.
    Fleet {
        /// What to do.
        #[command(subcommand)]
        verb: super::FleetVerb,
    },
    /// Check this machine: kernel, BTF, bpffs, capabilities, and native XDP per interface;
    /// each failed check says what to do. Exit 1 when one fails.
    Doctor {
        /// The config whose interfaces (when no --iface) and pin_dir to check.
        #[arg(long, default_value = paths::CONFIG)]
        config: PathBuf,
        /// Check this interface (repeatable; default: the config's, else every one but lo).
        #[arg(long)]
        iface: Vec<String>,
        /// `--json`.
        #[command(flatten)]
        out: JsonFlag,
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
    Add(AddArgs),
    /// Remove an identifier (from every source unless --source).
    Remove(RemoveArgs),
    /// Show entries.
    List {
        /// Which entries.
        #[command(flatten)]
        which: Selection,
        /// The IP entries traffic hits instead, most first: packets and bytes the XDP filter
        /// let through (allow) or dropped (deny) for each since the agent started, and when.
        #[arg(long)]
        hits: bool,
        /// `--json`.
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Remove every entry of a kind or of a source (or, with --all, every entry).
    Clear {
        /// Which entries.
        #[command(flatten)]
        which: Selection,
        /// Without --kind or --source: yes, the whole list.
        #[arg(long)]
        all: bool,
        /// `--json`.
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Add entries from a file: one per line (`KIND [NAME] VALUE`, or a bare IP/CIDR) or
    /// NDJSON (`{"kind":"ip","value":"203.0.113.7","ttl":"1h"}`); `-` reads stdin.
    Import {
        /// The file.
        file: PathBuf,
        /// Expiry, reason and --force for every entry.
        #[command(flatten)]
        options: EntryOptions,
        /// Source label (default manual).
        #[arg(long)]
        source: Option<String>,
        /// `--json`.
        #[command(flatten)]
        out: JsonFlag,
    },
}

/// Rewrites ASE's verbs to Portcullis's: `add_blacklist ip 1.1.1.1` → `--ase deny add ip 1.1.1.1`.
/// ASE scripts pass `-u USER -p PASS` before the verb (`cli.sh -u admin -p admin ...`) or
/// after it; the socket's own access rules replace them, so they are dropped. `status`
/// with them is ASE's `status`, answered in ASE's form.
pub fn rewrite_ase(mut args: Vec<String>) -> Vec<String> {
    // Skip global options before the verb.
    let mut at = 1;
    let mut credentials = false;
    while let Some(a) = args.get(at) {
        match a.as_str() {
            "-u" | "-p" if args.get(at + 2).is_some() => {
                args.drain(at..at + 2);
                credentials = true;
            }
            "--socket" => at += 2,
            s if s.starts_with("--socket=") || s == "--ase" => at += 1,
            _ => break,
        }
    }
    let Some(verb) = args.get(at) else {
        return args;
    };
    let ase_verb = verb.contains('_') || (verb == "status" && credentials);
    if ase_verb {
        // `-u USER -p PASS` after the verb, as some of Ping's examples write them.
        let mut i = at + 1;
        while i < args.len() {
            if matches!(args[i].as_str(), "-u" | "-p") && i + 1 < args.len() {
                args.drain(i..i + 2);
                credentials = true;
            } else {
                i += 1;
            }
        }
    }
    let Some(verb) = args.get(at) else {
        return args;
    };
    if verb == "status" && credentials {
        let mut out: Vec<String> = args[..at].to_vec();
        out.push("--ase".into());
        out.extend(args[at..].iter().cloned());
        return out;
    }
    // ASE's switches: `enable_ase_detected_attack`, `disable_blocking NAME`, ...
    let switch = match verb.as_str() {
        "enable_ase_detected_attack" => Some(("detections", "on")),
        "disable_ase_detected_attack" => Some(("detections", "off")),
        "enable_abs_attack" => Some(("abs", "on")),
        "disable_abs_attack" => Some(("abs", "off")),
        "enable_blocking" => Some(("api-blocking", "on")),
        "disable_blocking" => Some(("api-blocking", "off")),
        _ => None,
    };
    if let Some((which, on)) = switch {
        let mut out: Vec<String> = args[..at].to_vec();
        out.extend(["switch".into(), which.into()]);
        out.extend(args[at + 1..].iter().cloned());
        out.push(on.into());
        return out;
    }
    // ASE's sideband and REST credential verbs.
    let credential: Option<&[&str]> = match verb.as_str() {
        "create_sideband_token" => Some(&["sideband", "create-token"]),
        "list_sideband_token" => Some(&["sideband", "list-tokens"]),
        "delete_sideband_token" => Some(&["sideband", "delete-token"]),
        "enable_sideband_authentication" => Some(&["sideband", "authentication", "on"]),
        "disable_sideband_authentication" => Some(&["sideband", "authentication", "off"]),
        "update_password" => Some(&["rest", "password"]),
        _ => None,
    };
    if let Some(words) = credential {
        let mut out: Vec<String> = args[..at].to_vec();
        out.extend(words.iter().map(|w| (*w).to_owned()));
        out.extend(args[at + 1..].iter().cloned());
        return out;
    }
    // ASE's API verbs: `list_api`, `api_info NAME`.
    let api = match verb.as_str() {
        "list_api" => Some("list"),
        "api_info" => Some("show"),
        _ => None,
    };
    if let Some(action) = api {
        let mut out: Vec<String> = args[..at].to_vec();
        out.extend(["api".into(), action.into()]);
        out.extend(args[at + 1..].iter().cloned());
        return out;
    }
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
    let mut rest = rest.to_vec();
    // ASE's view/clear take an option word (all, manual, abs, realtime, and for views
    // decoy, method, protocol, content-type) or a kind. A view shows ASE's sections.
    let word = rest.first().filter(|w| !w.starts_with('-')).cloned();
    if action == "list" {
        if let Some(w) = word {
            rest.remove(0);
            out.extend(["--ase-view".into(), w]);
        }
        out.extend(rest);
        return out;
    }
    let source = match word.as_deref() {
        Some("all") => Some(None),
        Some("manual") => Some(Some("manual")),
        Some("abs") => Some(Some("abs")),
        Some("realtime") => Some(Some("checker")),
        _ => None,
    };
    match (action, source) {
        ("clear", Some(src)) => {
            rest.remove(0);
            if let Some(src) = src {
                out.extend(["--source".into(), src.into()]);
            } else {
                out.push("--all".into());
            }
        }
        ("clear", None) if word.is_some() => out.push("--kind".into()),
        // ASE's clear without a kind empties the list: say so explicitly.
        ("clear", None) => out.push("--all".into()),
        _ => {}
    }
    out.extend(rest);
    out
}

/// The identifier `allow|deny add` and `remove` name: `KIND [NAME] VALUE`.
#[derive(Debug, Args)]
pub struct IdentArgs {
    /// Kind: ip, cookie, token, api-key, username.
    pub kind: String,
    /// Name and/or value.
    #[arg(required = true, num_args = 1..=2)]
    pub values: Vec<String>,
    /// api-key only: the entry that matches the key under any header or query parameter name.
    #[arg(long)]
    pub any_name: bool,
}

/// `allow|deny add`'s arguments.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// What to put on the list.
    #[command(flatten)]
    pub ident: IdentArgs,
    /// Expiry, reason and --force.
    #[command(flatten)]
    pub options: EntryOptions,
    /// Only for this API, at L7 (`'*'`: every API, at L7 only, never in the kernel).
    #[arg(long)]
    pub api: Option<String>,
    /// `--json`.
    #[command(flatten)]
    pub out: JsonFlag,
}

/// What `add` and `import` record with each entry.
#[derive(Debug, Args)]
pub struct EntryOptions {
    /// Expire after this long (30s, 15m, 1h, 7d); import: every line without its own.
    #[arg(long)]
    pub ttl: Option<String>,
    /// Why (shown in list and logs); import: every line without its own.
    #[arg(long)]
    pub reason: Option<String>,
    /// Do what the safety rules refuse: a deny of every address, of this host or of a
    /// management network, or an allow so wide it turns enforcement off.
    #[arg(long)]
    pub force: bool,
}

impl EntryOptions {
    /// `--ttl` in seconds.
    pub fn ttl_secs(&self) -> anyhow::Result<Option<u64>> {
        self.ttl
            .as_deref()
            .map(crate::config::parse_duration)
            .transpose()
            .map_err(anyhow::Error::msg)
    }
}

/// Which entries of a list `list` and `clear` take.
#[derive(Debug, Args)]
pub struct Selection {
    /// Only this kind.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only this source.
    #[arg(long)]
    pub source: Option<String>,
    /// ASE's view word (`view_blacklist WORD`), set by the alias.
    #[arg(long, hide = true)]
    pub ase_view: Option<String>,
}

/// `allow|deny remove`'s arguments.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// What to take off the list.
    #[command(flatten)]
    pub ident: IdentArgs,
    /// Only the entry from this source.
    #[arg(long)]
    pub source: Option<String>,
    /// `--json`.
    #[command(flatten)]
    pub out: JsonFlag,
}
