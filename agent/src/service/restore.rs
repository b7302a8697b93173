//! Backup and restore through the list writer: a backup is a consistent copy taken between
//! writes; a restore checks the copy and the safety rules, keeps the current lists as a copy
//! beside the database (so a restore can be undone with another restore), swaps the rows in
//! one transaction, and rebuilds the kernel maps and the checker's lists from them.

use std::path::Path;

use super::{Service, ServiceError, unix_now};
use crate::model::{Identifier, Kind, List};
use crate::store::Store;

impl Service {
    /// Writes a consistent copy of the lists to `path` (absolute, new).
    pub(super) fn backup(&self, path: &Path) -> Result<serde_json::Value, ServiceError> {
        let bytes = self.store.backup_to(path)?;
        tracing::info!(path = %path.display(), bytes, "backup written");
        Ok(serde_json::json!({ "path": path, "bytes": bytes }))
    }

    /// Replaces the lists with the copy at `path`. A copy whose deny list would cut off
    /// everyone or this host is refused unless `force`, as an add would be.
    pub(super) fn restore(
        &mut self,
        path: &Path,
        force: bool,
    ) -> Result<serde_json::Value, ServiceError> {
        let copy = Store::check_copy(path)?;
        for v in &copy.deny_ips {
            let ident = Identifier::parse(Kind::Ip, None, v).map_err(|e| {
                ServiceError::BadRequest(format!(
                    "the copy holds a deny entry that is not an IP/CIDR: {e}"
                ))
            })?;
            self.check_safety(List::Deny, &ident, force)?;
        }
        let dir = self
            .config
            .db_path()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let now = unix_now();
        let previous = (0..)
            .map(|n| dir.join(format!("pre-restore-{now}-{n}.db")))
            .find(|p| !p.exists())
            .unwrap_or_default();
        let previous = std::path::absolute(&previous).unwrap_or(previous);
        self.store.backup_to(&previous)?;
        self.store.restore_from(path)?;
        if let Err(e) = self.recover() {
            tracing::error!(
                "the restored lists could not be applied ({e}); putting the previous lists back"
            );
            self.store.restore_from(&previous)?;
            self.recover()?;
            return Err(e);
        }
        tracing::warn!(from = %path.display(), rows = copy.rows, previous = %previous.display(), "lists restored");
        Ok(serde_json::json!({ "rows": copy.rows, "previous": previous }))
    }
}
