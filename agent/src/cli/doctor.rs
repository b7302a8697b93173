//! `portcullis doctor`: the machine checks of [`crate::doctor`], for the configured
//! interfaces (or the ones named, or every interface but `lo`).

use std::path::Path;

use anyhow::bail;

use crate::doctor::{Check, Outcome};

/// Runs the checks and prints them; fails (exit 1) when any check failed.
pub(super) fn doctor(config: &Path, ifaces: &[String], json: bool) -> anyhow::Result<()> {
    let ifaces = if ifaces.is_empty() {
        configured(config).unwrap_or_else(every_interface)
    } else {
        ifaces.to_vec()
    };
    let checks = crate::doctor::run(&ifaces);
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        print!("{}", render(&checks));
    }
    let failed = checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
    if failed > 0 {
        bail!("{failed} check(s) failed: the agent cannot run here as it is (see `fix:` above)");
    }
    Ok(())
}

/// The config file's interfaces, when it can be read and names some.
fn configured(config: &Path) -> Option<Vec<String>> {
    let cfg = crate::config::Config::load(config, false).ok()?;
    (!cfg.interfaces.is_empty()).then_some(cfg.interfaces)
}

/// Every interface of this network namespace but loopback.
fn every_interface() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n != "lo")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// One line per check (`ok`, `warn`, `FAIL`), its fix under it.
fn render(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        let mark = match c.outcome {
            Outcome::Ok => "ok  ",
            Outcome::Warn => "warn",
            Outcome::Fail => "FAIL",
        };
        out.push_str(&format!("{mark}  {:<width$}  {}\n", c.check, c.found));
        if !c.fix.is_empty() {
            out.push_str(&format!("      {:<width$}  fix: {}\n", "", c.fix));
        }
    }
    out
}
