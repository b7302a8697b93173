//! `portcullis doctor`: the machine checks of [`crate::doctor`], for the configured
//! interfaces (or the ones named, or every interface but `lo`).

use std::path::Path;

use anyhow::bail;

use crate::doctor::{Check, Outcome};

/// Runs the checks and prints them; fails (exit 1) when any check failed.
pub(super) fn doctor(config: &Path, ifaces: &[String], json: bool) -> anyhow::Result<()> {
    let mut config_problem = None;
    let cfg = match configured(config) {
        Ok(cfg) => cfg,
        Err(e) => {
            config_problem = Some(e);
            None
        }
    };
    let pin_dir = cfg.as_ref().map_or_else(
        || std::path::PathBuf::from(crate::paths::PIN_DIR),
        |c| c.pin_dir.clone(),
    );
    let ifaces = match (ifaces.is_empty(), cfg) {
        (false, _) => ifaces.to_vec(),
        (true, Some(c)) if !c.interfaces.is_empty() => c.interfaces,
        (true, _) => every_interface(),
    };
    let mut checks = crate::doctor::run(&ifaces, &pin_dir);
    if let Some(e) = config_problem {
        checks.push(crate::doctor::Check {
            check: "config".into(),
            outcome: Outcome::Fail,
            found: format!("{}: {e}", config.display()),
            fix: "fix the file (`portcullis agent --config FILE --check-config` names every problem); every interface was checked instead".into(),
        });
    }
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

/// The config file (`None`: there is none); a file that does not load is an error.
fn configured(config: &Path) -> Result<Option<crate::config::Config>, String> {
    if !config.exists() {
        return Ok(None);
    }
    crate::config::Config::load(config, true)
        .map(Some)
        .map_err(|e| e.to_string())
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
