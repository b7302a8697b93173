//! The Debian package (`cargo xtask deb`, which `cargo xtask test` builds and names in
//! `PORTCULLIS_DEB`): installed with dpkg, its files, config check, units, agent, upgrade,
//! remove and purge (`tests/src/package.sh`), in throwaway network and mount namespaces; then
//! nothing may be left but dpkg's own records.

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis_tests::netns::NetnsPair;
use portcullis_tests::privileged;

const SCRIPT: &str = include_str!("../src/package.sh");

/// Files the package's life may leave: dpkg's records and logs, and the backups the group
/// tools write next to /etc/group and friends.
fn dpkg_bookkeeping(path: &str) -> bool {
    [
        "var/lib/dpkg/",
        "var/log/dpkg.log",
        "var/log/apt/",
        "var/cache/debconf/",
        "var/cache/man/",
    ]
    .iter()
    .any(|p| path.starts_with(p))
        || [
            "etc/group-",
            "etc/gshadow-",
            "etc/passwd-",
            "etc/shadow-",
            "etc/ld.so.cache",
        ]
        .contains(&path)
}

/// What an upper layer holds that the machine does not: new files and directories, changed
/// files and deletions (whiteouts), other than dpkg's bookkeeping.
fn left_behind(upper: &Path, lower: &Path, rel: &str, out: &mut Vec<String>) {
    use std::os::unix::fs::FileTypeExt as _;
    let Ok(entries) = std::fs::read_dir(upper.join(rel)) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let Ok(kind) = e.file_type() else { continue };
        let full = format!("{}/{rel}", lower.display());
        if dpkg_bookkeeping(full.trim_start_matches('/')) {
            continue;
        }
        let host = lower.join(&rel);
        if kind.is_dir() {
            if !host.is_dir() {
                out.push(format!("{full}/"));
            }
            left_behind(upper, lower, &rel, out);
        } else if kind.is_char_device() {
            out.push(format!("{full} (deleted from the machine)"));
        } else if kind.is_symlink() {
            // Compared as links (a dangling one reads as nothing on both sides).
            if std::fs::read_link(e.path()).ok() != std::fs::read_link(&host).ok() {
                out.push(format!("{full} (link)"));
            }
        } else if std::fs::read(e.path()).ok() != std::fs::read(&host).ok() {
            out.push(full);
        }
    }
}

#[test]
fn the_package_installs_runs_upgrades_and_purges_without_a_trace() {
    let Some(deb) = std::env::var_os("PORTCULLIS_DEB").map(PathBuf::from) else {
        portcullis_tests::skip(
            "package",
            "PORTCULLIS_DEB unset: run through `cargo xtask test`, which builds the package",
        );
        return;
    };
    let pair = privileged!(NetnsPair::new().expect("namespaces"));
    let scratch = std::env::temp_dir().join(portcullis_tests::unique("pc-package-"));
    std::fs::create_dir_all(&scratch).expect("scratch");
    let out = Command::new("timeout")
        .args([
            "--kill-after=10",
            "300",
            "ip",
            "netns",
            "exec",
            &pair.server,
        ])
        .args([
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            SCRIPT,
            "package.sh",
        ])
        .arg(&deb)
        .arg(&pair.server_if)
        .arg(&scratch)
        .output()
        .expect("package.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for step in [
        "ok: installed: portcullis ",
        "ok: agent --check-config on the shipped config",
        "ok: systemd-analyze verify: service and socket",
        "ok: systemd-analyze security",
        "ok: agent from the package enforces on eth0",
        "ok: upgrade keeps the edited config, the lists and the filter",
        "ok: remove keeps config, lists and enforcement",
        "ok: purge detaches the filter and removes pins, state, config and group",
    ] {
        assert!(
            stdout.contains(step),
            "{step:?} missing:\n{stdout}\n{stderr}"
        );
    }
    let mut left = Vec::new();
    for d in ["usr", "etc", "var", "run"] {
        left_behind(
            &scratch.join(format!("ovl/{d}-up")),
            &Path::new("/").join(d),
            "",
            &mut left,
        );
    }
    // The veth end was renamed in the namespace; the pair's cleanup deletes it by the other end.
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(
        left.is_empty(),
        "left on the machine after purge: {left:#?}"
    );
}
