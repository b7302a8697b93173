//! `cargo xtask deb`: a Debian package of the agent, built with `dpkg-deb` from a staged
//! tree (no debhelper source package: the tree is small and says exactly what ships), then
//! checked with lintian.
//!
//! | path | what |
//! |---|---|
//! | `/usr/bin/portcullis` | the agent and CLI, stripped |
//! | `/usr/lib/systemd/system/portcullis.{service,socket}` | the units (`ExecStart=/usr/bin/…`) |
//! | `/etc/portcullis/portcullis.toml` | the example config, a conffile |
//! | `/usr/share/man/man1/portcullis.1.gz` | the man page |
//! | bash, zsh and fish completion directories | completions |
//! | `/usr/share/portcullis/grafana/portcullis.json` | the Grafana dashboard |
//! | `/usr/share/doc/portcullis/` | copyright, changelog |
//!
//! Maintainer scripts (`dist/debian/`): the `portcullis` group and `/var/lib/portcullis` on
//! install; stop on remove; on purge the pins go (which detaches the filter), then the state.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// Builds the package; returns its path.
pub fn build(env: &crate::setup::Env) -> anyhow::Result<PathBuf> {
    crate::cargo(
        env,
        &["build", "--release", "-p", "portcullis-agent", "--bins"],
    )?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .context("the workspace root")?;
    let binary = root.join("target/release/portcullis");
    let version = version(&binary)?;
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    let out_dir = root.join("target/debian");
    let stage = out_dir.join(format!("portcullis_{version}_{arch}"));
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage).context("creating the staging directory")?;
    stage_files(&root, &binary, &stage, &version)?;
    control(&binary, &stage, &version, &arch)?;
    let deb = out_dir.join(format!("portcullis_{version}_{arch}.deb"));
    status(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    lintian(&deb)?;
    println!("{}", deb.display());
    Ok(deb)
}

/// `portcullis --version` → `0.1.0`.
fn version(binary: &Path) -> anyhow::Result<String> {
    let v = output(Command::new(binary).arg("--version"))?;
    v.split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("unexpected --version output {v:?}"))
}

fn stage_files(root: &Path, binary: &Path, stage: &Path, version: &str) -> anyhow::Result<()> {
    let put = |rel: &str, bytes: &[u8], mode: u32| -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = stage.join(rel);
        std::fs::create_dir_all(path.parent().context("parent")?)?;
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let read = |rel: &str| std::fs::read(root.join(rel)).with_context(|| format!("reading {rel}"));
    // The binary, without its debug info (release builds keep it for profiling).
    let bin = stage.join("usr/bin/portcullis");
    std::fs::create_dir_all(bin.parent().context("parent")?)?;
    status(
        Command::new("strip")
            .args(["--strip-unneeded", "--remove-section=.comment", "-o"])
            .arg(&bin)
            .arg(binary),
    )?;
    let unit = String::from_utf8(read("dist/portcullis.service")?)?
        .replace("/usr/local/bin/portcullis", "/usr/bin/portcullis");
    if !unit.contains("ExecStart=/usr/bin/portcullis ") {
        bail!("dist/portcullis.service: ExecStart= no longer names /usr/local/bin/portcullis");
    }
    put(
        "usr/lib/systemd/system/portcullis.service",
        unit.as_bytes(),
        0o644,
    )?;
    put(
        "usr/lib/systemd/system/portcullis.socket",
        &read("dist/portcullis.socket")?,
        0o644,
    )?;
    put(
        "etc/portcullis/portcullis.toml",
        &read("dist/portcullis.toml")?,
        0o644,
    )?;
    put(
        "usr/share/portcullis/grafana/portcullis.json",
        &read("dist/grafana/portcullis.json")?,
        0o644,
    )?;
    let run = |args: &[&str]| output_bytes(Command::new(binary).args(args));
    put(
        "usr/share/man/man1/portcullis.1.gz",
        &gzip(&run(&["man"])?)?,
        0o644,
    )?;
    put(
        "usr/share/bash-completion/completions/portcullis",
        &run(&["completions", "bash"])?,
        0o644,
    )?;
    put(
        "usr/share/zsh/vendor-completions/_portcullis",
        &run(&["completions", "zsh"])?,
        0o644,
    )?;
    put(
        "usr/share/fish/vendor_completions.d/portcullis.fish",
        &run(&["completions", "fish"])?,
        0o644,
    )?;
    put(
        "usr/share/doc/portcullis/copyright",
        &read("dist/debian/copyright")?,
        0o644,
    )?;
    let date = output(Command::new("date").args(["-u", "-R"]))?;
    let changelog = format!(
        "portcullis ({version}) unstable; urgency=medium\n\n  * Built from the Portcullis source tree by `cargo xtask deb`.\n\n -- {MAINTAINER}  {date}\n"
    );
    put(
        "usr/share/doc/portcullis/changelog.gz",
        &gzip(changelog.as_bytes())?,
        0o644,
    )?;
    for script in ["postinst", "prerm", "postrm"] {
        put(
            &format!("DEBIAN/{script}"),
            &read(&format!("dist/debian/{script}"))?,
            0o755,
        )?;
    }
    put(
        "DEBIAN/conffiles",
        b"/etc/portcullis/portcullis.toml\n",
        0o644,
    )?;
    Ok(())
}

const MAINTAINER: &str = "Portcullis developers <portcullis@example.com>";

/// `DEBIAN/control` and `DEBIAN/md5sums`.
fn control(binary: &Path, stage: &Path, version: &str, arch: &str) -> anyhow::Result<()> {
    let glibc =
        glibc_needed(&std::fs::read(binary)?).context("no GLIBC_ symbol versions in the binary")?;
    let md5 = output(
        Command::new("sh")
            .arg("-c")
            .arg("find . -type f ! -path './DEBIAN/*' -printf '%P\\0' | sort -z | xargs -0 md5sum")
            .current_dir(stage),
    )?;
    std::fs::write(stage.join("DEBIAN/md5sums"), format!("{md5}\n"))?;
    let kib = output(
        Command::new("du")
            .args(["-sk", "--exclude=DEBIAN"])
            .arg(stage),
    )?;
    let kib = kib.split_whitespace().next().unwrap_or("0");
    let text = format!(
        "Package: portcullis\n\
Version: {version}\n\
Architecture: {arch}\n\
Maintainer: {MAINTAINER}\n\
Installed-Size: {kib}\n\
Depends: libc6 (>= {glibc}), libgcc-s1, adduser\n\
Section: net\n\
Priority: optional\n\
Homepage: https://example.com/portcullis\n\
Description: API-security enforcer with an XDP deny list\n \
Portcullis keeps known-bad API clients out as early as possible: an XDP\n \
program drops packets from denied addresses and networks in the driver,\n \
and a TLS-terminating L7 checker blocks requests carrying denied cookies,\n \
OAuth2 tokens, API keys or usernames. An agent keeps the allow and deny\n \
lists (CLI, ABS feed, its own detections, a fleet through Redis) in a\n \
SQLite database and the kernel maps in step with them.\n"
    );
    std::fs::write(stage.join("DEBIAN/control"), text)?;
    Ok(())
}

/// The newest `GLIBC_2.N` symbol version the binary names (what `libc6 (>= …)` must say).
fn glibc_needed(binary: &[u8]) -> Option<String> {
    let tag = b"GLIBC_2.";
    let mut best: Option<(u32, u32)> = None;
    let mut at = 0;
    while let Some(i) = binary[at..].windows(tag.len()).position(|w| w == tag) {
        let start = at + i + tag.len();
        let digits: Vec<u8> = binary[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit() || **b == b'.')
            .copied()
            .collect();
        let text = String::from_utf8_lossy(&digits);
        let mut parts = text.split('.');
        if let Some(Ok(minor)) = parts.next().map(str::parse::<u32>) {
            let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            best = best.max(Some((minor, patch)));
        }
        at = start;
    }
    best.map(|(minor, patch)| {
        if patch == 0 {
            format!("2.{minor}")
        } else {
            format!("2.{minor}.{patch}")
        }
    })
}

/// Lintian (`cargo xtask deb` installs it): errors fail the build; other tags are printed.
/// With `--pedantic -I` three informational tags remain, explained in README ("Install from
/// the package"); no overrides are shipped.
fn lintian(deb: &Path) -> anyhow::Result<()> {
    let out = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--tag-display-limit", "0"])
        .arg(deb)
        .output()
        .context("running lintian")?;
    let tags = String::from_utf8_lossy(&out.stdout);
    if tags.trim().is_empty() {
        println!("lintian: clean");
    } else {
        println!("lintian:\n{tags}");
    }
    if !out.status.success() {
        bail!(
            "lintian failed on {}: {}{}",
            deb.display(),
            tags,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn gzip(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut child = Command::new("gzip")
        .args(["-9", "-n"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running gzip")?;
    let mut stdin = child.stdin.take().context("gzip stdin")?;
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("gzip writer panicked"))??;
    if !out.status.success() {
        bail!("gzip failed");
    }
    Ok(out.stdout)
}

fn output_bytes(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    Ok(String::from_utf8(output_bytes(cmd)?)?.trim().to_owned())
}

fn status(cmd: &mut Command) -> anyhow::Result<()> {
    output_bytes(cmd).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_glibc_version_wins() {
        let bin = b"\0GLIBC_2.2.5\0GLIBC_2.34\0GLIBC_2.17\0GLIBC_PRIVATE\0";
        assert_eq!(glibc_needed(bin).as_deref(), Some("2.34"));
        assert_eq!(glibc_needed(b"GLIBC_2.3.4").as_deref(), Some("2.3.4"));
        assert_eq!(glibc_needed(b"none"), None);
    }
}
