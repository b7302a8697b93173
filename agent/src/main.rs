//! `portcullis`: the agent daemon and its CLI. Thin: parse arguments, set up logging, call
//! the library, map errors to exit codes (1: refused or failed, 2: usage).

use clap::Parser as _;

fn main() {
    let mut args = Vec::new();
    for (i, a) in std::env::args_os().enumerate() {
        match a.into_string() {
            Ok(s) => args.push(s),
            Err(bad) => {
                eprintln!(
                    "portcullis: argument {i} ({}) is not valid UTF-8",
                    bad.to_string_lossy()
                );
                std::process::exit(2);
            }
        }
    }
    let args = portcullis::cli::rewrite_ase(args);
    let cli = portcullis::cli::Cli::parse_from(args);
    if !matches!(cli.command, portcullis::cli::Command::Agent(_)) {
        // Client verbs behave like other Unix tools when piped into `head`: end quietly on
        // SIGPIPE instead of panicking on a failed print. The daemon keeps Rust's default
        // (ignored), so a vanished client only costs it an EPIPE.
        // SAFETY: restoring a default signal disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        portcullis::cli::LogFormat::Json => log
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        portcullis::cli::LogFormat::Text => {
            use std::io::IsTerminal as _;
            log.with_ansi(std::io::stderr().is_terminal()).init();
        }
    }
    if let Err(e) = portcullis::cli::run(cli) {
        // Print the chain, skipping causes a message already quotes.
        let mut msg = e.to_string();
        for cause in e.chain().skip(1) {
            let c = cause.to_string();
            if !msg.contains(&c) {
                msg.push_str(": ");
                msg.push_str(&c);
            }
        }
        eprintln!("portcullis: {msg}");
        std::process::exit(1);
    }
}
