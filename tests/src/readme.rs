//! README.md read as a list of things an operator is told to do: the commands of its `sh`
//! blocks, the `$ ` lines of its `console` blocks with the output shown under them, and the
//! control API's example requests. `tests/tests/readme.rs` runs them in order.

/// A fenced block of README.md.
pub struct Block {
    /// The last `##`/`###` heading above it.
    pub heading: String,
    /// Its info string (`sh`, `console`, `json`, …).
    pub lang: String,
    /// README line of its first body line.
    pub line: usize,
    /// Its lines.
    pub body: Vec<String>,
}

/// Every fenced block, in order.
pub fn blocks(readme: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let (mut heading, mut open): (String, Option<Block>) = (String::new(), None);
    for (i, l) in readme.lines().enumerate() {
        match (&mut open, l.strip_prefix("```")) {
            (None, Some(lang)) => {
                open = Some(Block {
                    heading: heading.clone(),
                    lang: lang.trim().to_owned(),
                    line: i + 2,
                    body: Vec::new(),
                })
            }
            (Some(_), Some(_)) => out.extend(open.take()),
            (Some(b), None) => b.body.push(l.to_owned()),
            (None, None) if l.starts_with("## ") || l.starts_with("### ") => {
                heading = l.trim_start_matches('#').trim().to_owned()
            }
            (None, None) => {}
        }
    }
    out
}

/// `line` without a trailing comment: `#` after at least two spaces.
fn strip_comment(line: &str) -> &str {
    match line.find("  #") {
        Some(at) => line[..at].trim_end(),
        None => line.trim_end(),
    }
}

/// One thing the README tells the operator to do.
#[derive(Debug)]
pub enum Step {
    /// A shell command, and the output lines the README shows for it.
    Run {
        line: usize,
        heading: String,
        cmd: String,
        shows: Vec<String>,
    },
    /// A control request (one JSON object).
    Request { line: usize, json: String },
}

/// The README's steps, in order.
pub fn steps(readme: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for b in blocks(readme) {
        match b.lang.as_str() {
            "sh" if b.heading == "The two commands" => {
                let commands: Vec<&str> = b
                    .body
                    .iter()
                    .map(|l| strip_comment(l))
                    .filter(|l| !l.is_empty())
                    .collect();
                assert_eq!(
                    commands,
                    ["cargo xtask demo", "cargo xtask test"],
                    "the two commands' block holds only what CI runs"
                )
            }
            "sh" => {
                for (i, l) in b.body.iter().enumerate() {
                    let cmd = strip_comment(l);
                    if !cmd.is_empty() {
                        steps.push(Step::Run {
                            line: b.line + i,
                            heading: b.heading.clone(),
                            cmd: cmd.to_owned(),
                            shows: Vec::new(),
                        });
                    }
                }
            }
            "console" => {
                for (i, l) in b.body.iter().enumerate() {
                    if let Some(cmd) = l.strip_prefix("$ ") {
                        steps.push(Step::Run {
                            line: b.line + i,
                            heading: b.heading.clone(),
                            cmd: strip_comment(cmd).to_owned(),
                            shows: Vec::new(),
                        });
                    } else if let Some(Step::Run { shows, .. }) = steps.last_mut() {
                        shows.push(l.trim_end().to_owned());
                    }
                }
            }
            "text" if b.heading == "Control API" => {
                for (i, l) in b.body.iter().enumerate() {
                    // Requests, several to a line, each an object starting with "op".
                    let mut rest = l.as_str();
                    while let Some(at) = rest.find("{\"op\"") {
                        let end = object_end(&rest[at..])
                            .unwrap_or_else(|| panic!("README:{}: unbalanced request", b.line + i));
                        steps.push(Step::Request {
                            line: b.line + i,
                            json: rest[at..at + end].to_owned(),
                        });
                        rest = &rest[at + end..];
                    }
                }
            }
            _ => {}
        }
    }
    steps
}

/// The length of the JSON object `s` starts with (strings may hold braces).
fn object_end(s: &str) -> Option<usize> {
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_str => escaped = true,
            '"' => in_str = !in_str,
            '{' if !in_str => depth += 1,
            '}' if !in_str => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// The API definition the L7 checker section shows.
pub fn api_example(readme: &str) -> String {
    blocks(readme)
        .into_iter()
        .find(|b| b.lang == "json" && b.heading == "The L7 checker")
        .expect("the L7 checker section shows an API file")
        .body
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"# Title
## The two commands
```sh
cargo xtask demo   # the demo
cargo xtask test   # every test
                   # (a comment's second line)
```
### Install
```sh
install -d /etc/x   # a comment
echo "a  b#c"

```
```console
$ portcullis deny list          # also --json
LIST   KIND
deny   ip
$ portcullis status
```
### Control API
```text
{"op":"add","value":"}{"}     {"op":"list","list":"deny"}
{"ok":true,"result":{"entry":{...}}}
```
"#;

    #[test]
    fn steps_are_the_commands_outputs_and_requests_in_order() {
        let got = format!("{:?}", steps(SAMPLE));
        let want = format!(
            "{:?}",
            [
                Step::Run {
                    line: 10,
                    heading: "Install".into(),
                    cmd: "install -d /etc/x".into(),
                    shows: vec![],
                },
                Step::Run {
                    line: 11,
                    heading: "Install".into(),
                    cmd: "echo \"a  b#c\"".into(),
                    shows: vec![],
                },
                Step::Run {
                    line: 15,
                    heading: "Install".into(),
                    cmd: "portcullis deny list".into(),
                    shows: vec!["LIST   KIND".into(), "deny   ip".into()],
                },
                Step::Run {
                    line: 18,
                    heading: "Install".into(),
                    cmd: "portcullis status".into(),
                    shows: vec![],
                },
                Step::Request {
                    line: 22,
                    json: r#"{"op":"add","value":"}{"}"#.into(),
                },
                Step::Request {
                    line: 22,
                    json: r#"{"op":"list","list":"deny"}"#.into(),
                },
            ]
        );
        assert_eq!(got, want);
    }
}
