//! `portcullis backup FILE` and `restore FILE`: the agent copies its database while it runs
//! (digests included), and restores one in a single step. Both are for root: the agent reads
//! and writes the files.

use super::*;

/// `portcullis backup FILE`.
pub(super) fn backup(cli: &Cli, file: &std::path::Path) -> anyhow::Result<()> {
    let path = std::path::absolute(file).context("resolving the backup path")?;
    let r = call(cli, &Request::Backup { path: path.clone() })?;
    println!(
        "backup written to {} ({} bytes)",
        path.display(),
        r["bytes"].as_u64().unwrap_or(0)
    );
    Ok(())
}

/// `portcullis restore FILE [--force]`.
pub(super) fn restore(cli: &Cli, file: &std::path::Path, force: bool) -> anyhow::Result<()> {
    let path = std::path::absolute(file).context("resolving the backup path")?;
    let r = call(cli, &Request::Restore { path, force })?;
    println!(
        "restored {} entries from {}; the lists before the restore are kept in {}",
        r["rows"].as_u64().unwrap_or(0),
        file.display(),
        r["previous"].as_str().unwrap_or("?")
    );
    Ok(())
}
