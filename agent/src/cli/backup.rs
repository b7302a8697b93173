//! `portcullis backup FILE` and `restore FILE`. The agent copies its database while it runs
//! (digests included) into its state directory, and restores only from there; this command
//! moves the copy between there and FILE with the caller's own rights, so it works under the
//! service's sandbox (the agent cannot see /root or the caller's /tmp) and the agent never
//! opens a path a client chose. Both are for root: the state directory is root's.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use super::*;
use crate::control::answer::{BackupMade, Restored};

/// Copies `from` to the new file `to` (never overwriting, never through a symlink), 0600.
fn copy_new(from: &Path, to: &Path) -> anyhow::Result<u64> {
    let mut src =
        std::fs::File::open(from).with_context(|| format!("reading {}", from.display()))?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(to)
        .with_context(|| format!("creating {} (it must not exist yet)", to.display()))?;
    let n = std::io::copy(&mut src, &mut dst)?;
    dst.flush()?;
    dst.sync_all()
        .with_context(|| format!("writing {}", to.display()))?;
    Ok(n)
}

/// `portcullis backup FILE`.
pub(super) fn backup(cli: &Cli, file: &Path) -> anyhow::Result<()> {
    let made = ask::<BackupMade>(cli, &Request::Backup)?.path;
    let copied = copy_new(&made, file);
    let _ = std::fs::remove_file(&made);
    let bytes = copied.context("the agent wrote the backup, but it could not be moved")?;
    println!("backup written to {} ({bytes} bytes)", file.display());
    Ok(())
}

/// `portcullis restore FILE [--force]`.
pub(super) fn restore(cli: &Cli, file: &Path, force: bool) -> anyhow::Result<()> {
    // Only the database is needed: a newer agent's status may hold what this CLI cannot read.
    #[derive(serde::Deserialize)]
    struct Where {
        database: std::path::PathBuf,
    }
    let db = ask::<Where>(cli, &Request::Status)?.database;
    let dir = db
        .parent()
        .context("the agent did not say where its database is")?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let staged = dir.join(format!("restore-{}-{stamp}.db", std::process::id()));
    copy_new(file, &staged)?;
    let r = ask::<Restored>(
        cli,
        &Request::Restore {
            path: staged.clone(),
            force,
        },
    );
    let _ = std::fs::remove_file(&staged);
    let r = r?;
    println!(
        "restored {} entries from {}; the lists before the restore are kept in {}",
        r.rows,
        file.display(),
        printable(&r.previous.to_string_lossy())
    );
    Ok(())
}
