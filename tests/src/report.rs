//! One report writer for every benchmark: the measurements and the markdown table go to
//! `target/bench/<name>.json`, and the table to stdout. `cargo xtask readme` puts the tables
//! into README.md, so the README shows what was measured, in plain numbers (`203 k/s`,
//! `284 B`), never copied by hand.

use std::path::PathBuf;

/// A markdown table: a header, and rows of already formatted cells.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    /// Right-aligned (numeric) columns.
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns; a column named with a leading `>` is right-aligned.
    pub fn new(columns: &[&str]) -> Self {
        Self {
            header: columns
                .iter()
                .map(|c| c.trim_start_matches('>').to_owned())
                .collect(),
            right: columns.iter().map(|c| c.starts_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// The table as markdown.
    pub fn markdown(&self) -> String {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        let mut out = line(&self.header);
        let rule: Vec<String> = self
            .right
            .iter()
            .map(|r| if *r { "---:" } else { "---" }.to_owned())
            .collect();
        out.push_str(&format!("|{}|\n", rule.join("|")));
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "markdown": self.markdown(), "header": self.header, "rows": self.rows })
    }
}

/// The workspace's `target/bench` (cargo runs benches from the package directory).
pub fn dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("bench")
}

/// Writes `target/bench/<name>.json` (`{"data": ..., "table": ..., "notes": [...]}`) and
/// prints the table and the notes.
pub fn write(
    name: &str,
    data: serde_json::Value,
    table: &Table,
    notes: &[String],
) -> anyhow::Result<PathBuf> {
    let dir = dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    let json = serde_json::json!({ "data": data, "table": table.json(), "notes": notes });
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    print!("{}", table.markdown());
    for n in notes {
        println!("\n{n}");
    }
    println!("\nwrote {}", path.display());
    Ok(path)
}

/// `x` with about three significant digits, never in e-notation: `0.593`, `2.7`, `58`, `1376`.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let a = x.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// A quantity with a k/M prefix and a unit: `203 k/s`, `1.2 M/s`, `870 /s` (`unit` = "/s").
pub fn si(x: f64, unit: &str) -> String {
    let (v, prefix) = if x.abs() >= 1e6 {
        (x / 1e6, "M")
    } else if x.abs() >= 1e3 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    format!("{} {prefix}{unit}", num(v))
}

/// Milliseconds: `0.593 ms`, `2.7 ms`, `1020 ms`.
pub fn ms(x: f64) -> String {
    format!("{} ms", num(x))
}

/// Seconds: `7.1 s`.
pub fn secs(x: f64) -> String {
    format!("{} s", num(x))
}

/// Bytes with decimal prefixes: `284 B`, `712 MB`.
pub fn bytes(x: f64) -> String {
    if x >= 1e9 {
        format!("{} GB", num(x / 1e9))
    } else if x >= 1e6 {
        format!("{} MB", num(x / 1e6))
    } else if x >= 1e3 {
        format!("{} kB", num(x / 1e3))
    } else {
        format!("{} B", num(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_plain() {
        assert_eq!(si(203_456.0, "/s"), "203 k/s");
        assert_eq!(si(1_234_567.0, "/s"), "1.23 M/s");
        assert_eq!(si(870.0, "/s"), "870 /s");
        assert_eq!(bytes(284.4), "284 B");
        assert_eq!(bytes(712_000_000.0), "712 MB");
        assert_eq!(ms(0.5934), "0.593 ms");
        assert_eq!(ms(1020.4), "1020 ms");
        assert_eq!(secs(7.08), "7.08 s");
        assert_eq!(num(58.0), "58.0");
        for s in [si(2e5, "/s"), bytes(3e2), secs(7.0), num(7e4)] {
            assert!(!s.contains('e'), "{s}");
        }
        let mut t = Table::new(&["measure", ">value"]);
        t.row(["a", "1 ms"]);
        assert_eq!(
            t.markdown(),
            "| measure | value |\n|---|---:|\n| a | 1 ms |\n"
        );
    }
}
