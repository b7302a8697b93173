//! Online backup and restore of the lists. A backup is a consistent copy of the database
//! taken while the agent runs (digests included: `list --json` is no backup, it shows only
//! fingerprints). A restore checks a copy first, then replaces every row with the copy's in
//! one transaction.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::{COLUMNS, SCHEMA_VERSION, Store, StoreError, sql};

/// What a copy holds, checked before anything is replaced.
#[derive(Debug, Default)]
pub struct CopyInfo {
    /// Rows in the copy.
    pub rows: u64,
    /// The values of its deny-list IP rows, for the safety rules.
    pub deny_ips: Vec<String>,
}

fn bad(msg: impl Into<String>) -> StoreError {
    StoreError::BadCopy(msg.into())
}

impl Store {
    /// Writes a consistent copy of the database to `path`, which must be absolute and must
    /// not exist; the copy is readable by its owner only. Returns its size in bytes.
    pub fn backup_to(&self, path: &Path) -> Result<u64, StoreError> {
        if !path.is_absolute() {
            return Err(bad("the backup path must be absolute"));
        }
        if path.exists() {
            return Err(bad(format!(
                "{} exists; a backup never overwrites a file",
                path.display()
            )));
        }
        let text = path
            .to_str()
            .ok_or_else(|| bad("the backup path must be UTF-8"))?;
        // The agent's umask (077) makes the file 0600: digests of secrets stay private.
        self.conn
            .execute("VACUUM INTO ?1", [text])
            .map_err(sql("writing the backup"))?;
        std::fs::metadata(path)
            .map(|m| m.len())
            .map_err(|e| bad(format!("reading back {}: {e}", path.display())))
    }

    /// Checks that `path` is a copy this build can restore: a SQLite file of this schema
    /// version that passes SQLite's quick check and holds only known lists and kinds.
    pub fn check_copy(path: &Path) -> Result<CopyInfo, StoreError> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(sql("opening the copy"))?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|_| bad(format!("{} is not a Portcullis database", path.display())))?;
        if version != SCHEMA_VERSION {
            return Err(bad(format!(
                "the copy has schema version {version}; this build restores version {SCHEMA_VERSION}"
            )));
        }
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(sql("checking the copy"))?;
        if check != "ok" {
            return Err(bad(format!("the copy is damaged: {check}")));
        }
        let strange: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM entries WHERE list NOT IN ('allow', 'deny') OR kind NOT IN ('ip', 'cookie', 'token', 'api-key', 'username')",
                [],
                |r| r.get(0),
            )
            .map_err(sql("reading the copy"))?;
        if strange > 0 {
            return Err(bad(format!(
                "the copy has {strange} rows with an unknown list or kind"
            )));
        }
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM entries", [], |r| r.get(0))
            .map_err(sql("reading the copy"))?;
        let mut q = conn
            .prepare("SELECT value FROM entries WHERE list = 'deny' AND kind = 'ip'")
            .map_err(sql("reading the copy"))?;
        let deny_ips = q
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(sql("reading the copy"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql("reading the copy"))?;
        Ok(CopyInfo {
            rows: rows.try_into().unwrap_or(0),
            deny_ips,
        })
    }

    /// Replaces every row with the rows of the copy at `path` (checked with
    /// [`Store::check_copy`] first), in one transaction. Returns how many rows it holds now.
    pub fn restore_from(&mut self, path: &Path) -> Result<u64, StoreError> {
        let text = path
            .to_str()
            .ok_or_else(|| bad("the copy's path must be UTF-8"))?;
        self.conn
            .execute("ATTACH DATABASE ?1 AS copy", [text])
            .map_err(sql("opening the copy"))?;
        let swapped = (|| {
            let tx = self.conn.transaction().map_err(sql("begin"))?;
            tx.execute("DELETE FROM main.entries", [])
                .map_err(sql("restore"))?;
            let n = tx
                .execute(
                    &format!(
                        "INSERT INTO main.entries (ikey, ikey2, {COLUMNS}) SELECT ikey, ikey2, {COLUMNS} FROM copy.entries"
                    ),
                    [],
                )
                .map_err(sql("restore"))?;
            tx.commit().map_err(sql("commit"))?;
            Ok(n as u64)
        })();
        let detached = self
            .conn
            .execute("DETACH DATABASE copy", [])
            .map_err(sql("closing the copy"));
        let n = swapped?;
        detached?;
        Ok(n)
    }
}
