//! `portcullis backup` and `restore`: a copy taken while the agent runs holds every entry,
//! digests included; restoring it brings back exactly those lists, in the store, the kernel
//! and the checker; a bad or hostile copy changes nothing; only root may ask.

use portcullis_tests::agent::{Agent, AgentDirs, AgentOpts, err, ok};
use portcullis_tests::kernel_check::assert_kernel_matches_lists;
use portcullis_tests::privileged;

fn lists(agent: &Agent) -> (String, String) {
    (
        ok(&agent.cli(&["allow", "list", "--json"])),
        ok(&agent.cli(&["deny", "list", "--json"])),
    )
}

#[test]
fn backup_then_restore_brings_back_exactly_the_lists() {
    privileged!();
    let dirs = AgentDirs::new();
    let agent = Agent::start(&dirs, &AgentOpts::default()).expect("agent");
    for args in [
        &["deny", "add", "ip", "198.18.80.0/24", "--reason", "scan"][..],
        &["deny", "add", "ip", "2001:db8:80::/48", "--ttl", "1h"],
        &["deny", "add", "token", "stolen-token"],
        &["deny", "add", "cookie", "JSESSIONID", "stolen-session"],
        &[
            "deny",
            "add",
            "api-key",
            "X-API-Key",
            "leaked-key",
            "--api",
            "shop",
        ],
        &["deny", "add", "username", "mallory"],
        &["allow", "add", "ip", "198.18.80.7"],
    ] {
        ok(&agent.cli(args));
    }
    let before = lists(&agent);
    let copy = dirs.root.join("lists.backup");
    let text = ok(&agent.cli(&["backup", copy.to_str().expect("utf8")]));
    assert!(text.contains("backup written"), "{text}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&copy).expect("copy").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "digests of secrets stay private");
    // A backup never overwrites.
    let e = err(&agent.cli(&["backup", copy.to_str().expect("utf8")]));
    assert!(e.contains("exists"), "{e}");
    // The secrets are in the copy only as digests.
    let raw = std::fs::read(&copy).expect("read copy");
    for secret in ["stolen-token", "stolen-session", "leaked-key"] {
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} in clear in the backup"
        );
    }

    // Change everything, then restore: exactly the lists of the backup come back.
    ok(&agent.cli(&["deny", "clear", "--all"]));
    ok(&agent.cli(&["allow", "clear", "--all"]));
    ok(&agent.cli(&["deny", "add", "ip", "198.18.81.1"]));
    let text = ok(&agent.cli(&["restore", copy.to_str().expect("utf8")]));
    assert!(text.contains("restored 7 entries"), "{text}");
    assert_eq!(lists(&agent), before);
    assert_kernel_matches_lists(&agent, &dirs);
    let status = agent.status();
    let counted: u64 = status.lists.iter().map(|l| l.count).sum();
    assert_eq!(
        counted, 7,
        "the status board counts the restored rows: {status:?}"
    );
    // The lists before the restore were kept: restoring that copy undoes the restore.
    let previous = text
        .rsplit(' ')
        .next()
        .expect("previous copy path")
        .trim()
        .to_owned();
    ok(&agent.cli(&["restore", &previous]));
    let deny = ok(&agent.cli(&["deny", "list", "--json"]));
    assert!(
        deny.contains("198.18.81.1/32") && !deny.contains("198.18.80.0/24"),
        "{deny}"
    );
    // Each restore keeps a copy of what it replaced, the newest three only; a file the
    // agent did not write is left alone.
    let planted = dirs.root.join("pre-restore-keep-me.db");
    std::fs::write(&planted, "not a copy").expect("planted");
    let mut last = String::new();
    for _ in 0..4 {
        last = ok(&agent.cli(&["restore", copy.to_str().expect("utf8")]));
    }
    let kept: Vec<String> = std::fs::read_dir(&dirs.root)
        .expect("state dir")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("pre-restore-") && n != "pre-restore-keep-me.db")
        .collect();
    assert_eq!(kept.len(), 3, "{kept:?}");
    let newest = last.rsplit(' ').next().expect("previous copy path").trim();
    assert!(
        std::path::Path::new(newest).exists(),
        "{newest} was removed"
    );
    assert!(
        planted.exists(),
        "a file the agent did not write was removed"
    );
}

#[test]
fn bad_or_hostile_copies_change_nothing() {
    privileged!();
    let dirs = AgentDirs::new();
    let agent = Agent::start(&dirs, &AgentOpts::default()).expect("agent");
    ok(&agent.cli(&["deny", "add", "ip", "198.18.82.1"]));
    ok(&agent.cli(&["allow", "add", "token", "good-token"]));
    let before = lists(&agent);
    let path = |name: &str| dirs.root.join(name).to_str().expect("utf8").to_owned();

    std::fs::write(dirs.root.join("garbage.db"), b"not a database at all").expect("write");
    let e = err(&agent.cli(&["restore", &path("garbage.db")]));
    assert!(e.contains("not a") || e.contains("database"), "{e}");
    let e = err(&agent.cli(&["restore", &path("missing.db")]));
    assert!(!e.is_empty());

    // A real copy, edited to deny the whole world: refused without --force.
    ok(&agent.cli(&["backup", &path("world.db")]));
    let sqlite = |db: &str, sql: &str| {
        let c = rusqlite::Connection::open(db).expect("open copy");
        c.execute_batch(sql).expect("edit copy");
    };
    sqlite(
        &path("world.db"),
        "UPDATE entries SET value = '0.0.0.0/0' WHERE kind = 'ip';",
    );
    let e = err(&agent.cli(&["restore", &path("world.db")]));
    assert!(e.contains("--force"), "{e}");
    // Nor an allow list so wide it turns enforcement off.
    ok(&agent.cli(&["backup", &path("open.db")]));
    sqlite(
        &path("open.db"),
        "UPDATE entries SET list = 'allow', value = '0.0.0.0/1' WHERE kind = 'ip';",
    );
    let e = err(&agent.cli(&["restore", &path("open.db")]));
    assert!(e.contains("--force"), "{e}");
    // The agent itself opens only copies in its state directory, whatever a client names.
    let raw = portcullis_tests::agent::control_line(
        &dirs.socket(),
        r#"{"op":"restore","path":"/etc/passwd"}"#,
    );
    assert!(
        raw.contains("\"ok\":false") && raw.contains("state directory"),
        "{raw}"
    );
    // A copy with a kind this build does not know.
    ok(&agent.cli(&["backup", &path("strange.db")]));
    sqlite(
        &path("strange.db"),
        "UPDATE entries SET kind = 'shoe-size';",
    );
    let e = err(&agent.cli(&["restore", &path("strange.db")]));
    assert!(e.contains("unknown list or kind"), "{e}");
    assert_eq!(lists(&agent), before, "nothing changed");
    assert_kernel_matches_lists(&agent, &dirs);
}
