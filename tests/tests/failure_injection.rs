//! The rollback paths, with real failures injected: the database on a filesystem that fills
//! up, and a kernel map filled behind the agent's back so the kernel write fails mid-batch.
//! Whatever fails, the store and the kernel maps are left as they were, and the agent says
//! why.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis::control::answer::Imported;
use portcullis::control::client::Client;
use portcullis::control::proto::{ImportDefaults, Request};
use portcullis::model::List;
use portcullis_tests::agent::{Agent, AgentDirs, AgentOpts, err, ok};
use portcullis_tests::kernel_check::assert_kernel_matches_lists;
use portcullis_tests::privileged;

/// How many lines an `import --json` run accepted.
fn accepted(out: &str) -> usize {
    let r: Imported = serde_json::from_str(out).expect("the import's JSON report");
    r.accepted
}

fn feed(dir: &Path, name: &str, from: u32, n: u32) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).expect("feed");
    for i in from..from + n {
        writeln!(f, "198.19.{}.{}", i >> 8, i & 255).expect("write");
    }
    writeln!(f, "token fed-token-{from}").expect("write");
    path
}

/// A small tmpfs, unmounted on drop.
struct TinyFs(PathBuf);

impl TinyFs {
    fn mount(at: PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&at).expect("mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&at)
            .output()
            .expect("mount");
        assert!(out.status.success(), "mount tmpfs: {out:?}");
        Self(at)
    }

    /// Writes a filler file until the filesystem is full.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

#[test]
fn a_full_disk_changes_neither_store_nor_kernel() {
    privileged!();
    let dirs = AgentDirs::new();
    let fs = TinyFs::mount(dirs.root.join("state"), "4m");
    let agent = Agent::start(
        &dirs,
        &AgentOpts {
            state_dir: Some(fs.0.clone()),
            ..AgentOpts::default()
        },
    )
    .expect("agent");
    ok(&agent.cli(&["deny", "add", "ip", "198.18.0.7"]));
    ok(&agent.cli(&["allow", "add", "ip", "198.18.0.8"]));
    let before = (agent.entries("deny"), agent.entries("allow"));
    let filler = fs.fill();
    // A batch (import), a single add and a remove on a full disk: each refused, each with
    // the store and the kernel as they were.
    let big = feed(&dirs.root, "feed.txt", 0, 20_000);
    let e = err(&agent.cli(&["deny", "import", big.to_str().expect("utf8")]));
    assert!(
        e.to_lowercase().contains("full") || e.contains("disk"),
        "{e}"
    );
    assert_eq!((agent.entries("deny"), agent.entries("allow")), before);
    assert_kernel_matches_lists(&agent, &dirs);
    // Single adds until the disk refuses one (the WAL may still hold a few pages).
    let mut refused = false;
    for i in 0..2000u32 {
        let out = agent.cli(&[
            "deny",
            "add",
            "ip",
            &format!("198.18.{}.{}", 10 + i / 256, i % 256),
        ]);
        if !out.status.success() {
            refused = true;
            break;
        }
    }
    assert!(refused, "a full disk never refused a single add");
    assert_kernel_matches_lists(&agent, &dirs);
    // With room again, everything works and still agrees.
    std::fs::remove_file(filler).expect("free space");
    let out = ok(&agent.cli(&["deny", "import", big.to_str().expect("utf8"), "--json"]));
    assert_eq!(accepted(&out), 20_001, "{out}");
    ok(&agent.cli(&["deny", "remove", "ip", "198.18.0.7"]));
    assert_kernel_matches_lists(&agent, &dirs);
    drop(agent);
}

#[test]
fn a_kernel_write_failing_mid_batch_changes_neither_store_nor_kernel() {
    privileged!();
    let dirs = AgentDirs::new();
    let agent = Agent::with_config(&dirs, "[capacity]\nv4_hosts = 4096\n".into()).expect("agent");
    ok(&agent.cli(&["deny", "add", "ip", "198.18.0.7"]));
    ok(&agent.cli(&["deny", "add", "ip", "198.18.1.0/24"]));
    let before = agent.entries("deny");
    // Fill V4_HOSTS behind the agent's back: its twin thinks there is room, the kernel
    // refuses the write part-way through the batch.
    let map = dirs.pins.0.join("V4_HOSTS");
    let junk: Vec<u32> = (0..4000u32).map(|i| 0x0a00_0000 | i).collect();
    fill_hash(&map, &junk);
    let f = feed(&dirs.root, "feed.txt", 0, 500);
    let e = err(&agent.cli(&["deny", "import", f.to_str().expect("utf8")]));
    assert!(e.contains("V4_HOSTS"), "{e}");
    assert_eq!(agent.entries("deny"), before, "store unchanged");
    let e = err(&agent.cli(&["deny", "add", "ip", "198.19.200.0/25"]));
    assert!(e.contains("V4_HOSTS"), "{e}");
    assert_eq!(agent.entries("deny"), before, "store unchanged");
    // Take the junk out again: the kernel holds exactly what it held before.
    drain_hash(&map, &junk);
    assert_kernel_matches_lists(&agent, &dirs);
    let out = ok(&agent.cli(&["deny", "import", f.to_str().expect("utf8"), "--json"]));
    assert_eq!(accepted(&out), 501, "{out}");
    assert_kernel_matches_lists(&agent, &dirs);
}

#[test]
fn a_batch_that_overflows_in_a_later_chunk_changes_nothing() {
    privileged!();
    let dirs = AgentDirs::new();
    let agent = Agent::with_config(&dirs, "[capacity]\nv4_hosts = 40000\n".into()).expect("agent");
    // 50 000 hosts: the kernel is written in chunks of 8 192 and only the fifth one
    // overflows V4_HOSTS, so the four before it must be taken back out of the kernel: once
    // into an empty table (its bulk-load path), once beside an entry.
    let big = feed(&dirs.root, "big.txt", 0, 50_000);
    for first in [None, Some("198.18.0.7")] {
        if let Some(ip) = first {
            ok(&agent.cli(&["deny", "add", "ip", ip]));
        }
        let before = agent.entries("deny");
        let e = err(&agent.cli(&["deny", "import", big.to_str().expect("utf8")]));
        assert!(e.contains("V4_HOSTS"), "{e}");
        assert_eq!(agent.entries("deny"), before, "store unchanged");
        assert_kernel_matches_lists(&agent, &dirs);
    }
    // The twin was taken back too: 39 998 other hosts still fit beside the one listed.
    let fits = feed(&dirs.root, "fits.txt", 10_000, 39_998);
    let out = ok(&agent.cli(&["deny", "import", fits.to_str().expect("utf8"), "--json"]));
    assert_eq!(accepted(&out), 39_999, "{out}");
    assert_kernel_matches_lists(&agent, &dirs);
}

/// The CLI sends each import batch before the answer to the one before it (the agent parses
/// one while it applies the other). When a batch fails, the one already sent behind it must
/// not be applied: an import stops at its first failed batch, whatever was in flight.
#[test]
fn the_batch_sent_behind_a_failed_one_is_not_applied() {
    privileged!();
    let dirs = AgentDirs::new();
    let agent = Agent::with_config(&dirs, "[capacity]\nv4_hosts = 40000\n".into()).expect("agent");
    let hosts = |from: u32, n: u32| -> Vec<(u64, String)> {
        (from..from + n)
            .map(|i| {
                let ip = format!("198.{}.{}.{}", 18 + (i >> 16), (i >> 8) & 255, i & 255);
                (u64::from(i) + 1, ip)
            })
            .collect()
    };
    let batch = |lines, continues| Request::Import {
        list: List::Deny,
        lines,
        defaults: ImportDefaults::default(),
        continues,
    };
    // Three batches written before any answer is read: the first fits, the second
    // overflows V4_HOSTS, the third would fit again beside the first.
    let mut client = Client::connect(&dirs.socket()).expect("control socket");
    let batches = [
        batch(hosts(0, 30_000), false),
        batch(hosts(30_000, 20_000), true),
        batch(hosts(50_000, 5_000), true),
    ];
    for b in &batches {
        client.send(b).expect("send");
    }
    let answers: Vec<_> = (0..3).map(|_| client.receive().expect("answer")).collect();
    assert!(answers[0].ok, "{:?}", answers[0]);
    let second = answers[1].error.clone().unwrap_or_default();
    assert!(second.contains("V4_HOSTS"), "{second}");
    let third = answers[2].error.clone().unwrap_or_default();
    assert!(third.contains("the import batch before it"), "{third}");
    assert_eq!(agent.entries("deny").len(), 30_000, "only the first batch");
    assert_kernel_matches_lists(&agent, &dirs);
    // An import that does not continue the failed one stands alone (a script's next feed
    // on the same socket): applied.
    client
        .send(&batch(hosts(50_000, 5_000), false))
        .expect("send");
    let fourth = client.receive().expect("answer");
    assert!(fourth.ok, "{fourth:?}");
    assert_eq!(agent.entries("deny").len(), 35_000);
    assert_kernel_matches_lists(&agent, &dirs);
}

/// Removals write the store first: when the kernel then refuses its part (here a host slot
/// taken out behind the agent's back, so deleting it fails), the rows go back, so neither
/// `remove`, `clear` nor the pruner leaves the kernel enforcing what the store no longer
/// lists.
#[test]
fn a_removal_the_kernel_refuses_leaves_the_entry_on_both_sides() {
    privileged!();
    let dirs = AgentDirs::new();
    let agent = Agent::start(&dirs, &AgentOpts::default()).expect("agent");
    let map = dirs.pins.0.join("V4_HOSTS");
    let key = |ip: [u8; 4]| u32::from(std::net::Ipv4Addr::from(ip));
    ok(&agent.cli(&["deny", "add", "ip", "198.18.0.7"]));
    ok(&agent.cli(&["deny", "add", "ip", "198.18.0.8"]));
    let before = agent.entries("deny");
    for args in [
        &["deny", "remove", "ip", "198.18.0.7"][..],
        &["deny", "clear", "--kind", "ip"],
    ] {
        // (A refused write puts back what it had changed: the slot is there again after.)
        drain_hash(&map, &[key([198, 18, 0, 7])]);
        let e = err(&agent.cli(args));
        assert!(e.contains("V4_HOSTS"), "{args:?}: {e}");
        assert_eq!(agent.entries("deny"), before, "{args:?} changed the store");
        let counted: u64 = agent.status().lists.iter().map(|l| l.count).sum();
        assert_eq!(counted, 2, "{args:?}: status still counts both");
    }
    // An expired entry whose removal the kernel refuses stays in the store, so the next
    // prune takes it out of both (without the row, the kernel would keep its slot).
    ok(&agent.cli(&["deny", "add", "ip", "198.18.0.9", "--ttl", "1s"]));
    drain_hash(&map, &[key([198, 18, 0, 9])]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(8);
    while agent.entries("deny").len() > 2 {
        assert!(std::time::Instant::now() < deadline, "the pruner retries");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        agent.log_text().contains("pruning expired entries failed"),
        "the first prune was refused: {}",
        agent.log_text()
    );
    assert_kernel_matches_lists(&agent, &dirs);
    ok(&agent.cli(&["deny", "remove", "ip", "198.18.0.7"]));
    ok(&agent.cli(&["deny", "clear", "--kind", "ip"]));
    assert!(agent.entries("deny").is_empty());
    assert_kernel_matches_lists(&agent, &dirs);
}

fn fill_hash(map: &Path, keys: &[u32]) {
    let fd = portcullis::kernel::sys::obj_get(map).expect("open pinned map");
    use std::os::fd::AsFd as _;
    let values = vec![portcullis_common::Deadlines::EMPTY; keys.len()];
    // Write one by one, stopping when the map is full.
    for (k, v) in keys.iter().zip(&values) {
        if portcullis::kernel::sys::update_elem(fd.as_fd(), k, v).is_err() {
            break;
        }
    }
}

fn drain_hash(map: &Path, keys: &[u32]) {
    let fd = portcullis::kernel::sys::obj_get(map).expect("open pinned map");
    use std::os::fd::AsFd as _;
    for k in keys {
        let _ = portcullis::kernel::sys::delete_elem(fd.as_fd(), k);
    }
}
