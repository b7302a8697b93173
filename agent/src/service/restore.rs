//! Backup and restore through the list writer. A backup is a consistent copy taken between
//! writes, left in the state directory for the CLI to move. A restore reads only a copy in
//! the state directory (the CLI puts it there), applies to every row the rules an add
//! applies, keeps the current lists as a copy (so a restore can be undone with another
//! restore), swaps the rows in one transaction, and rebuilds the kernel maps and the
//! checker's lists from them.

use std::path::{Path, PathBuf};

use super::{Service, ServiceError};
use crate::control::answer::{BackupMade, Restored};
use crate::model::{Identifier, Kind, List};
use crate::store::Copy;

/// Name prefix of the copies a restore keeps of the lists it replaced.
const BEFORE_RESTORE: &str = "pre-restore";
/// How many of them stay (older ones are removed after each restore).
const KEPT_BEFORE_RESTORE: usize = 3;

/// Removes all but the newest `keep` copies `{prefix}-<stamp>.db` the agent wrote in `dir`
/// (by stamp), never `current`, the one just written (whatever the clock did), and nothing
/// named otherwise.
fn keep_newest(dir: &Path, prefix: &str, keep: usize, current: &Path) {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "could not list old pre-restore copies: {e}");
            return;
        }
    };
    let stamp = |p: &Path| -> Option<u128> {
        let name = p.file_name()?.to_str()?;
        let digits = name
            .strip_prefix(prefix)?
            .strip_prefix('-')?
            .strip_suffix(".db")?;
        (digits.len() == 24 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    };
    let mut copies: Vec<(u128, PathBuf)> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p != current)
        .filter_map(|p| Some((stamp(&p)?, p)))
        .collect();
    copies.sort();
    for (_, old) in copies.iter().rev().skip(keep.saturating_sub(1)) {
        if let Err(e) = std::fs::remove_file(old) {
            tracing::warn!(path = %old.display(), "could not remove an old pre-restore copy: {e}");
        }
    }
}

impl Service {
    /// The state directory: the only place backups are written to and restored from.
    fn state_dir(&self) -> PathBuf {
        let db = self.config.db_path();
        let dir = db.parent().map(Path::to_path_buf).unwrap_or_default();
        std::fs::canonicalize(&dir).unwrap_or(dir)
    }

    /// Writes a consistent copy of the lists into the state directory; returns its path.
    pub(super) fn backup(&self) -> Result<BackupMade, ServiceError> {
        let path = self.store.backup_into(&self.state_dir(), "backup")?;
        tracing::info!(path = %path.display(), "backup written");
        Ok(BackupMade { path })
    }

    /// Replaces the lists with the copy at `path`, which must be a file directly in the
    /// state directory. A copy the safety rules would refuse row by row (a deny covering
    /// everyone or this host, an allow so wide it turns enforcement off, an automatic deny
    /// of infrastructure) is refused unless `force`.
    pub(super) fn restore(&mut self, path: &Path, force: bool) -> Result<Restored, ServiceError> {
        let dir = self.state_dir();
        let parent = path.parent().and_then(|p| std::fs::canonicalize(p).ok());
        if parent.as_deref() != Some(dir.as_path()) {
            return Err(ServiceError::BadRequest(format!(
                "the agent restores only copies in its state directory {} (`portcullis restore FILE` puts one there)",
                dir.display()
            )));
        }
        let copy = Copy::open(path)?;
        copy.for_each(|e| {
            if e.ident.kind != Kind::Ip {
                return Ok(());
            }
            let refuse = |m: String| crate::store::StoreError::BadCopy(m);
            let ident = Identifier::parse(Kind::Ip, None, &e.ident.value).map_err(|err| {
                refuse(format!(
                    "the copy holds an IP entry that is not an IP/CIDR: {err}"
                ))
            })?;
            self.check_safety(e.list, &ident, force).map_err(|err| {
                refuse(format!("the copy holds {} {}: {err}", e.list, ident.value))
            })?;
            if e.list == List::Deny && e.source.is_automatic() {
                self.check_automatic(&ident)
                    .map_err(|err| refuse(format!("the copy holds {}: {err}", ident.value)))?;
            }
            Ok(())
        })?;
        let previous = self.store.backup_into(&dir, BEFORE_RESTORE)?;
        let rows = self.store.restore_from(&copy)?;
        if let Err(e) = self.recover() {
            tracing::error!(
                "the restored lists could not be applied ({e}); putting the previous lists back"
            );
            let undo = Copy::open(&previous)
                .and_then(|c| self.store.restore_from(&c))
                .map_err(ServiceError::from)
                .and_then(|_| self.recover());
            if let Err(u) = undo {
                tracing::error!("putting the previous lists back failed too: {u}");
            }
            return Err(e);
        }
        tracing::warn!(rows, previous = %previous.display(), "lists restored");
        // The fleet cannot tell what a restore changed: every host rebuilds from its own.
        self.fleet_rebuild_needed("the lists were restored from a backup");
        keep_newest(&dir, BEFORE_RESTORE, KEPT_BEFORE_RESTORE, &previous);
        Ok(Restored { rows, previous })
    }
}
