//! The durable allow and deny lists: one SQLite database file in the state directory.
//!
//! Each row is one identifier on one list from one source (the same address can be denied by
//! an operator and by ABS; removing ABS's row keeps the operator's). Writes are transactions
//! in WAL mode with `synchronous=FULL`, so a crash or `kill -9` loses nothing that was
//! acknowledged. A second connection on its own thread (`checkpoint`) copies the WAL back
//! into the database file; the WAL file is cut back to 64 MiB once it restarts.

use std::path::Path;

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use crate::model::{Entry, Identifier, Kind, List, Source};

mod backup;
mod checkpoint;
mod fleet;
mod migrate;

pub use backup::Copy;
use checkpoint::Checkpointer;
pub use fleet::Outgoing;

/// Which entries a query or a clear applies to.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Filter {
    /// Only this list.
    pub list: Option<List>,
    /// Only this kind.
    pub kind: Option<Kind>,
    /// Only this source.
    pub source: Option<String>,
}

/// The schema version this build reads and writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 2;

/// Store errors: the database file and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A backup could not be written, or a copy to restore is not one.
    #[error("{0}")]
    BadCopy(String),
    /// The file was written by another, incompatible version.
    #[error("state database has schema version {found}, this build reads version {SCHEMA_VERSION}")]
    Schema {
        /// Version found.
        found: i64,
    },
    /// An older database could not be brought to this schema; it is unchanged, and a copy
    /// of it was made before trying.
    #[error(
        "state database of schema version {from} could not be migrated ({why}); the file is unchanged and a copy of it is at {copy}"
    )]
    Migration {
        /// Version found.
        from: i64,
        /// The copy made before migrating.
        copy: String,
        /// Why it failed.
        why: String,
    },
    /// SQLite failed.
    #[error("state database {op}: {source}")]
    Sql {
        /// What we were doing.
        op: &'static str,
        /// Why.
        source: rusqlite::Error,
    },
}

fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sql { op, source }
}

/// The open database.
pub struct Store {
    conn: Connection,
    /// Copies the WAL back into the database file beside the writer (stops on drop).
    _checkpointer: Checkpointer,
}

/// Rows are appended in a rowid table; identity goes through a dense unique index on a
/// 128-bit key (`ident_key`, two integers) plus scope and source, rather than a B-tree keyed
/// by 70-byte digests, so a bulk import of random tokens touches few pages per row.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    id      INTEGER PRIMARY KEY,
    ikey    INTEGER NOT NULL,
    ikey2   INTEGER NOT NULL,
    list    TEXT NOT NULL,
    kind    TEXT NOT NULL,
    name    TEXT NOT NULL,
    value   TEXT NOT NULL,
    api     TEXT NOT NULL,
    source  TEXT NOT NULL,
    reason  TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS entries_identity ON entries(ikey, ikey2, api, source);
CREATE INDEX IF NOT EXISTS entries_expires ON entries(expires) WHERE expires IS NOT NULL;
PRAGMA user_version = 2;
";

/// An identifier's 128-bit key on one list, as the store's identity index holds it.
pub type IdentKey = (i64, i64);

/// The 128-bit identity key of an identifier on a list: SHA-256 over its fields, first 16
/// bytes as two integers (stable across versions, unlike std's hasher; collisions are out of
/// reach at any list size).
pub fn ident_key(list: List, ident: &Identifier) -> IdentKey {
    hash_fields(&[
        list.as_str(),
        ident.kind.as_str(),
        &ident.name,
        &ident.value,
    ])
}

/// SHA-256 over length-prefixed fields, first 16 bytes as two integers.
pub fn hash_fields(parts: &[&str]) -> (i64, i64) {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u32).to_le_bytes());
        h.update(part.as_bytes());
    }
    let d = h.finalize();
    let half = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[i..i + 8]);
        i64::from_le_bytes(b)
    };
    (half(0), half(8))
}

const COLUMNS: &str = "list, kind, name, value, api, source, reason, created, expires";
const SAME_IDENT: &str = "ikey=?1 AND ikey2=?2";
/// Inserts a row unless its identity (key, scope, source) is there already.
const INSERT: &str = "INSERT OR IGNORE INTO entries (ikey, ikey2, list, kind, name, value, api, source, reason, created, expires) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

/// Binds [`INSERT`]'s parameters for `e` under identity key `key`. The columns `e` shares
/// with `prev`, the row bound before it on this statement, keep their binding (SQLite keeps
/// bindings across executions): in an import most rows share list, kind, scope, source,
/// reason and times, and binding a text copies it.
fn bind_row(
    stmt: &mut rusqlite::Statement<'_>,
    key: IdentKey,
    e: &Entry,
    prev: Option<&Entry>,
) -> rusqlite::Result<()> {
    let changed = |same: fn(&Entry, &Entry) -> bool| prev.is_none_or(|p| !same(p, e));
    stmt.raw_bind_parameter(1, key.0)?;
    stmt.raw_bind_parameter(2, key.1)?;
    if changed(|a, b| a.list == b.list) {
        stmt.raw_bind_parameter(3, e.list.as_str())?;
    }
    if changed(|a, b| a.ident.kind == b.ident.kind) {
        stmt.raw_bind_parameter(4, e.ident.kind.as_str())?;
    }
    if changed(|a, b| a.ident.name == b.ident.name) {
        stmt.raw_bind_parameter(5, &e.ident.name)?;
    }
    stmt.raw_bind_parameter(6, &e.ident.value)?;
    if changed(|a, b| a.api == b.api) {
        stmt.raw_bind_parameter(7, &e.api)?;
    }
    if changed(|a, b| a.source == b.source) {
        stmt.raw_bind_parameter(8, e.source.as_str())?;
    }
    if changed(|a, b| a.reason == b.reason) {
        stmt.raw_bind_parameter(9, &e.reason)?;
    }
    if changed(|a, b| a.created == b.created) {
        stmt.raw_bind_parameter(10, e.created)?;
    }
    if changed(|a, b| a.expires == b.expires) {
        stmt.raw_bind_parameter(11, e.expires)?;
    }
    Ok(())
}

fn kind_of(s: &str) -> Kind {
    s.parse().unwrap_or(Kind::Username)
}

fn list_of(s: &str) -> List {
    if s == "allow" {
        List::Allow
    } else {
        List::Deny
    }
}

fn row_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        list: list_of(&r.get::<_, String>(0)?),
        ident: Identifier {
            kind: kind_of(&r.get::<_, String>(1)?),
            name: r.get(2)?,
            value: r.get(3)?,
        },
        api: r.get(4)?,
        source: Source::parse(&r.get::<_, String>(5)?),
        reason: r.get(6)?,
        created: r.get(7)?,
        expires: r.get(8)?,
    })
}

/// `WHERE` clause and parameters for a filter.
fn where_clause(f: &Filter) -> (String, Vec<String>) {
    let mut conds = Vec::new();
    let mut args = Vec::new();
    if let Some(l) = f.list {
        conds.push("list = ?");
        args.push(l.as_str().to_owned());
    }
    if let Some(k) = f.kind {
        conds.push("kind = ?");
        args.push(k.as_str().to_owned());
    }
    if let Some(s) = &f.source {
        conds.push("source = ?");
        args.push(s.clone());
    }
    let clause = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    (clause, args)
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path).map_err(sql("open"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql("enabling WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql("setting synchronous"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql("setting busy timeout"))?;
        // 32 MiB of page cache: bulk imports insert digests at random B-tree positions.
        conn.pragma_update(None, "cache_size", -32_768)
            .map_err(sql("setting cache size"))?;
        // The checkpointer thread copies the WAL back; the writer does it only as a backstop.
        conn.pragma_update(
            None,
            "wal_autocheckpoint",
            checkpoint::WRITER_BACKSTOP_PAGES,
        )
        .map_err(sql("setting checkpoint interval"))?;
        // A bulk import grows the WAL to hundreds of MiB; once it restarts, give that back.
        conn.pragma_update(None, "journal_size_limit", 64i64 << 20)
            .map_err(sql("setting the WAL size limit"))?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql("reading schema version"))?;
        let has_table: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'entries'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(sql("reading schema"))?
            > 0;
        if has_table && version > SCHEMA_VERSION {
            // Written by a newer build: a downgrade keeps its file, untouched.
            return Err(StoreError::Schema { found: version });
        }
        if has_table && version != SCHEMA_VERSION {
            migrate::run(&mut conn, path, version)?;
        }
        conn.execute_batch(SCHEMA).map_err(sql("creating schema"))?;
        conn.execute_batch(fleet::SCHEMA)
            .map_err(sql("creating the fleet tables"))?;
        Ok(Self {
            conn,
            _checkpointer: Checkpointer::start(path),
        })
    }

    /// Inserts or updates entries in one transaction; returns how many rows were new.
    pub fn upsert(&mut self, entries: &[Entry]) -> Result<usize, StoreError> {
        Ok(self.upsert_new(entries)?.iter().filter(|n| **n).count())
    }

    /// Like [`Store::upsert`], telling for each entry whether its row is new.
    pub fn upsert_new(&mut self, entries: &[Entry]) -> Result<Vec<bool>, StoreError> {
        let keys: Vec<IdentKey> = entries
            .iter()
            .map(|e| ident_key(e.list, &e.ident))
            .collect();
        self.upsert_keyed(entries, &keys)
    }

    /// [`Store::upsert_new`] with each entry's [`ident_key`] given (`keys[i]` is that of
    /// `entries[i]`): an import computes them before its batch reaches the list writer.
    pub fn upsert_keyed(
        &mut self,
        entries: &[Entry],
        keys: &[IdentKey],
    ) -> Result<Vec<bool>, StoreError> {
        assert_eq!(entries.len(), keys.len(), "one key per entry");
        // In key order, consecutive inserts land on neighbouring index pages; rows of the
        // same identity in the order given, so the last one's reason and expiry stay.
        let mut order: Vec<(IdentKey, usize)> = keys.iter().copied().zip(0..).collect();
        order.sort_unstable();
        let tx = self.conn.transaction().map_err(sql("begin"))?;
        let mut new = vec![false; entries.len()];
        {
            let mut insert = tx.prepare_cached(INSERT).map_err(sql("prepare"))?;
            let mut update = tx
                .prepare_cached("UPDATE entries SET reason = ?5, expires = ?6 WHERE ikey=?1 AND ikey2=?2 AND api=?3 AND source=?4")
                .map_err(sql("prepare"))?;
            let mut prev = None;
            for ((k1, k2), i) in order {
                let e = &entries[i];
                bind_row(&mut insert, (k1, k2), e, prev).map_err(sql("insert"))?;
                prev = Some(e);
                let n = insert.raw_execute().map_err(sql("insert"))?;
                if n == 1 {
                    new[i] = true;
                } else {
                    update
                        .execute(params![
                            k1,
                            k2,
                            e.api,
                            e.source.as_str(),
                            e.reason,
                            e.expires
                        ])
                        .map_err(sql("update"))?;
                }
            }
        }
        tx.commit().map_err(sql("commit"))?;
        Ok(new)
    }

    /// Removes one identifier from a list (every source, or one); returns the rows removed.
    pub fn remove(
        &mut self,
        list: List,
        ident: &Identifier,
        source: Option<&str>,
    ) -> Result<Vec<Entry>, StoreError> {
        let tx = self.conn.transaction().map_err(sql("begin"))?;
        let removed = {
            let mut q = tx
                .prepare_cached(&format!("DELETE FROM entries WHERE {SAME_IDENT} AND (?3 IS NULL OR source=?3) RETURNING {COLUMNS}"))
                .map_err(sql("prepare"))?;
            let (k1, k2) = ident_key(list, ident);
            q.query_map(params![k1, k2, source], row_entry)
                .map_err(sql("delete"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql("delete"))?
        };
        tx.commit().map_err(sql("commit"))?;
        Ok(removed)
    }

    /// Removes every entry the filter selects; returns them.
    pub fn clear(&mut self, f: &Filter) -> Result<Vec<Entry>, StoreError> {
        let (clause, args) = where_clause(f);
        let tx = self.conn.transaction().map_err(sql("begin"))?;
        let removed = {
            let mut q = tx
                .prepare(&format!(
                    "DELETE FROM entries{clause} RETURNING list, kind, name, value, api, source, reason, created, expires"
                ))
                .map_err(sql("prepare"))?;
            q.query_map(rusqlite::params_from_iter(args.iter()), row_entry)
                .map_err(sql("clear"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql("clear"))?
        };
        tx.commit().map_err(sql("commit"))?;
        Ok(removed)
    }

    /// Entries the filter selects, ordered by list, kind and value.
    pub fn list(&self, f: &Filter) -> Result<Vec<Entry>, StoreError> {
        let (clause, args) = where_clause(f);
        let mut q = self
            .conn
            .prepare(&format!(
                "SELECT list, kind, name, value, api, source, reason, created, expires FROM entries{clause}
                 ORDER BY list, kind, name, value, source"
            ))
            .map_err(sql("prepare"))?;
        q.query_map(rusqlite::params_from_iter(args.iter()), row_entry)
            .map_err(sql("list"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql("list"))
    }

    /// Calls `f` for every row, streaming (the start-up load of the L7 lists).
    pub fn for_each(&self, mut f: impl FnMut(&Entry)) -> Result<(), StoreError> {
        let mut q = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM entries"))
            .map_err(sql("prepare"))?;
        let rows = q.query_map([], row_entry).map_err(sql("scan"))?;
        for r in rows {
            f(&r.map_err(sql("scan"))?);
        }
        Ok(())
    }

    /// Every row of one identifier on one list (all sources and scopes).
    pub fn rows_of(&self, list: List, ident: &Identifier) -> Result<Vec<Entry>, StoreError> {
        let mut q = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM entries WHERE {SAME_IDENT}"))
            .map_err(sql("prepare"))?;
        let (k1, k2) = ident_key(list, ident);
        q.query_map(params![k1, k2], row_entry)
            .map_err(sql("lookup"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql("lookup"))
    }

    /// Removes entries that expired at or before `now` (unix seconds); returns them.
    pub fn prune_expired(&mut self, now: i64) -> Result<Vec<Entry>, StoreError> {
        let tx = self.conn.transaction().map_err(sql("begin"))?;
        let removed = {
            let mut q = tx
                .prepare_cached(
                    "DELETE FROM entries WHERE expires IS NOT NULL AND expires <= ?1
                     RETURNING list, kind, name, value, api, source, reason, created, expires",
                )
                .map_err(sql("prepare"))?;
            q.query_map(params![now], row_entry)
                .map_err(sql("prune"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql("prune"))?
        };
        tx.commit().map_err(sql("commit"))?;
        Ok(removed)
    }

    /// Row counts per (list, kind, source).
    pub fn counts(&self) -> Result<Vec<(List, Kind, String, u64)>, StoreError> {
        let mut q = self
            .conn
            .prepare("SELECT list, kind, source, COUNT(*) FROM entries GROUP BY list, kind, source ORDER BY 1, 2, 3")
            .map_err(sql("prepare"))?;
        q.query_map([], |r| {
            Ok((
                list_of(&r.get::<_, String>(0)?),
                kind_of(&r.get::<_, String>(1)?),
                r.get(2)?,
                r.get::<_, i64>(3)? as u64,
            ))
        })
        .map_err(sql("count"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql("count"))
    }
}

#[cfg(test)]
mod tests;
