//! `cargo xtask readme`: puts the benchmark tables from `target/bench/<name>.json` into
//! README.md, between `<!-- bench:<name> -->` and `<!-- /bench:<name> -->`. The numbers in the
//! README are then exactly what the last run measured, formatted once, by the benchmarks.

use std::path::Path;

use anyhow::{Context as _, bail};

/// The benchmarks whose tables the README shows.
pub const BENCHES: [&str; 9] = [
    "agent",
    "checker",
    "abs",
    "xdp",
    "restart",
    "sideband",
    "fleet",
    "wire",
    "wire-flood",
];

/// Replaces the README block of every benchmark that has a report; returns the names updated.
pub fn update(root: &Path) -> anyhow::Result<Vec<&'static str>> {
    let readme_path = root.join("README.md");
    let mut readme = std::fs::read_to_string(&readme_path).context("reading README.md")?;
    let mut done = Vec::new();
    for name in BENCHES {
        let report = root.join("target/bench").join(format!("{name}.json"));
        let Ok(text) = std::fs::read_to_string(&report) else {
            continue;
        };
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", report.display()))?;
        let Some(table) = json["table"]["markdown"].as_str() else {
            bail!(
                "{} has no table (written by an older benchmark?): run `cargo xtask bench {name}` again",
                report.display()
            );
        };
        let mut block = table.to_owned();
        for note in json["notes"].as_array().into_iter().flatten() {
            if let Some(n) = note.as_str() {
                block.push_str(&format!("\n{n}\n"));
            }
        }
        readme = replace_block(&readme, name, &block)?;
        done.push(name);
    }
    std::fs::write(&readme_path, readme).context("writing README.md")?;
    Ok(done)
}

/// `readme` with the block of `name` holding `table`.
fn replace_block(readme: &str, name: &str, table: &str) -> anyhow::Result<String> {
    let open = format!("<!-- bench:{name} -->\n");
    let close = format!("<!-- /bench:{name} -->");
    let start = readme
        .find(&open)
        .with_context(|| format!("README.md has no {open:?} marker"))?
        + open.len();
    let end = readme[start..]
        .find(&close)
        .with_context(|| format!("README.md has no {close:?} marker"))?
        + start;
    Ok(format!("{}{table}{}", &readme[..start], &readme[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_marked_block_changes() {
        let readme = "a\n<!-- bench:agent -->\n| old |\n<!-- /bench:agent -->\nb\n";
        let out = replace_block(readme, "agent", "| new |\n").expect("replaced");
        assert_eq!(
            out,
            "a\n<!-- bench:agent -->\n| new |\n<!-- /bench:agent -->\nb\n"
        );
        assert!(replace_block("no markers", "agent", "x").is_err());
    }
}
