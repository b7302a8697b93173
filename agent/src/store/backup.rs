//! Online backup and restore of the lists. A backup is a consistent copy of the database
//! taken while the agent runs (digests included: `list --json` is no backup, it shows only
//! fingerprints), written into the state directory for the CLI to move where the operator
//! wants it. A restore reads only a copy the CLI put into the state directory: it is checked,
//! every row is read back as an entry (so the caller can apply the rules an add applies), and
//! the rows are replaced in one transaction with their identity keys computed afresh.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::{
    COLUMNS, INSERT, SCHEMA_VERSION, Store, StoreError, bind_row, ident_key, row_entry, sql,
};
use crate::model::Entry;

fn bad(msg: impl Into<String>) -> StoreError {
    StoreError::BadCopy(msg.into())
}

/// A copy to restore, opened read-only after it was checked.
pub struct Copy {
    conn: Connection,
}

impl Store {
    /// Writes a consistent copy of the database to a new file in `dir` (the state
    /// directory, 0700; the file is 0600 under the agent's umask) and returns its path.
    pub fn backup_into(&self, dir: &Path, prefix: &str) -> Result<PathBuf, StoreError> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = dir.join(format!("{prefix}-{stamp:024}.db"));
        let text = path
            .to_str()
            .ok_or_else(|| bad("the state directory's path must be UTF-8"))?;
        if let Err(e) = self.conn.execute("VACUUM INTO ?1", [text]) {
            // A full disk may leave part of a copy behind.
            let _ = std::fs::remove_file(&path);
            return Err(sql("writing the backup")(e));
        }
        Ok(path)
    }

    /// Replaces every row with the copy's, in one transaction, computing each row's identity
    /// key afresh (a copy's keys are not trusted). Returns how many rows it holds now.
    pub fn restore_from(&mut self, copy: &Copy) -> Result<u64, StoreError> {
        let tx = self.conn.transaction().map_err(sql("begin"))?;
        tx.execute("DELETE FROM entries", [])
            .map_err(sql("restore"))?;
        let mut n = 0u64;
        {
            let mut insert = tx.prepare(INSERT).map_err(sql("prepare"))?;
            copy.for_each(|e| {
                bind_row(&mut insert, ident_key(e.list, &e.ident), e, None)
                    .map_err(sql("restore"))?;
                n += insert.raw_execute().map_err(sql("restore"))? as u64;
                Ok(())
            })?;
        }
        tx.commit().map_err(sql("commit"))?;
        Ok(n)
    }
}

impl Copy {
    /// Opens and checks the copy at `path`: a regular file (not a link, pipe or device), a
    /// Portcullis database of this schema version whose `entries` is a table, that passes
    /// SQLite's quick check and holds only known lists and kinds. Opened read-only and
    /// query-only, with the schema untrusted, so nothing in it runs and nothing is written
    /// beside it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let meta =
            std::fs::symlink_metadata(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        if !meta.file_type().is_file() {
            return Err(bad(format!("{} is not a regular file", path.display())));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let conn = Connection::open_with_flags(path, flags).map_err(sql("opening the copy"))?;
        conn.pragma_update(None, "trusted_schema", false)
            .map_err(sql("opening the copy"))?;
        conn.pragma_update(None, "query_only", true)
            .map_err(sql("opening the copy"))?;
        let not_ours = || bad(format!("{} is not a Portcullis database", path.display()));
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|_| not_ours())?;
        let kind: Option<String> = conn
            .query_row(
                "SELECT type FROM sqlite_master WHERE name = 'entries'",
                [],
                |r| r.get(0),
            )
            .ok();
        if kind.as_deref() != Some("table") {
            return Err(not_ours());
        }
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
        Ok(Self { conn })
    }

    /// Every row of the copy, as an entry.
    pub fn for_each(
        &self,
        mut f: impl FnMut(&Entry) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut q = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM entries"))
            .map_err(sql("reading the copy"))?;
        let rows = q
            .query_map([], row_entry)
            .map_err(sql("reading the copy"))?;
        for r in rows {
            f(&r.map_err(sql("reading the copy"))?)?;
        }
        Ok(())
    }
}
