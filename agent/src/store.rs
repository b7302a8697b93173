//! The durable allow and deny lists: one SQLite database file in the state directory.
//!
//! Each row is one identifier on one list from one source (the same address can be denied by
//! an operator and by ABS; removing ABS's row keeps the operator's). Writes are transactions
//! in WAL mode with `synchronous=FULL`, so a crash or `kill -9` loses nothing that was
//! acknowledged.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::ident::{Identifier, Kind};
use crate::kernel::List;

/// One entry: an identifier on a list, with where it came from and until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Allow or deny.
    pub list: List,
    /// The identifier (secrets as digests).
    #[serde(flatten)]
    pub ident: Identifier,
    /// `manual`, `abs`, `checker` or `fleet`.
    pub source: String,
    /// Free text (for `checker`, the detection).
    pub reason: String,
    /// API name the entry is scoped to; empty = every API (and the kernel, for IPs).
    pub api: String,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds; `None` = never expires.
    pub expires: Option<i64>,
}

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

/// Store errors: the database file and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
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
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    list    TEXT NOT NULL,
    kind    TEXT NOT NULL,
    name    TEXT NOT NULL,
    value   TEXT NOT NULL,
    api     TEXT NOT NULL,
    source  TEXT NOT NULL,
    reason  TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER,
    PRIMARY KEY (list, kind, name, value, api, source)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_expires ON entries(expires) WHERE expires IS NOT NULL;
CREATE INDEX IF NOT EXISTS entries_source ON entries(source, list, kind);
";

fn kind_of(s: &str) -> Kind {
    s.parse().unwrap_or(Kind::Username)
}

fn list_of(s: &str) -> List {
    if s == "allow" { List::Allow } else { List::Deny }
}

fn row_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        list: list_of(&r.get::<_, String>(0)?),
        ident: Identifier { kind: kind_of(&r.get::<_, String>(1)?), name: r.get(2)?, value: r.get(3)? },
        api: r.get(4)?,
        source: r.get(5)?,
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
    let clause = if conds.is_empty() { String::new() } else { format!(" WHERE {}", conds.join(" AND ")) };
    (clause, args)
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(sql("open"))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(sql("enabling WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(sql("setting synchronous"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sql("setting busy timeout"))?;
        conn.execute_batch(SCHEMA).map_err(sql("creating schema"))?;
        Ok(Self { conn })
    }

    /// Inserts or updates entries in one transaction; returns how many rows were new.
    pub fn upsert(&mut self, entries: &[Entry]) -> Result<usize, StoreError> {
        let tx = self.conn.transaction().map_err(sql("begin"))?;
        let mut added = 0;
        {
            let mut exists = tx
                .prepare_cached("SELECT 1 FROM entries WHERE list=?1 AND kind=?2 AND name=?3 AND value=?4 AND api=?5 AND source=?6")
                .map_err(sql("prepare"))?;
            let mut put = tx
                .prepare_cached(
                    "INSERT INTO entries (list, kind, name, value, api, source, reason, created, expires)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (list, kind, name, value, api, source)
                     DO UPDATE SET reason = excluded.reason, expires = excluded.expires",
                )
                .map_err(sql("prepare"))?;
            for e in entries {
                let key = params![e.list.as_str(), e.ident.kind.as_str(), e.ident.name, e.ident.value, e.api, e.source];
                if exists.query_row(key, |_| Ok(())).optional().map_err(sql("lookup"))?.is_none() {
                    added += 1;
                }
                put.execute(params![
                    e.list.as_str(),
                    e.ident.kind.as_str(),
                    e.ident.name,
                    e.ident.value,
                    e.api,
                    e.source,
                    e.reason,
                    e.created,
                    e.expires
                ])
                .map_err(sql("insert"))?;
            }
        }
        tx.commit().map_err(sql("commit"))?;
        Ok(added)
    }

    /// Removes one identifier from a list (every source, or one); returns the rows removed.
    pub fn remove(&mut self, list: List, ident: &Identifier, source: Option<&str>) -> Result<Vec<Entry>, StoreError> {
        let tx = self.conn.transaction().map_err(sql("begin"))?;
        let removed = {
            let mut q = tx
                .prepare_cached(
                    "DELETE FROM entries WHERE list=?1 AND kind=?2 AND name=?3 AND value=?4 AND (?5 IS NULL OR source=?5)
                     RETURNING list, kind, name, value, api, source, reason, created, expires",
                )
                .map_err(sql("prepare"))?;
            q.query_map(params![list.as_str(), ident.kind.as_str(), ident.name, ident.value, source], row_entry)
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

    /// Every row of one identifier on one list (all sources and scopes).
    pub fn rows_of(&self, list: List, ident: &Identifier) -> Result<Vec<Entry>, StoreError> {
        let mut q = self
            .conn
            .prepare_cached(
                "SELECT list, kind, name, value, api, source, reason, created, expires FROM entries
                 WHERE list=?1 AND kind=?2 AND name=?3 AND value=?4",
            )
            .map_err(sql("prepare"))?;
        q.query_map(params![list.as_str(), ident.kind.as_str(), ident.name, ident.value], row_entry)
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
            Ok((list_of(&r.get::<_, String>(0)?), kind_of(&r.get::<_, String>(1)?), r.get(2)?, r.get::<_, i64>(3)? as u64))
        })
        .map_err(sql("count"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql("count"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(list: List, kind: Kind, name: Option<&str>, value: &str, source: &str, expires: Option<i64>) -> Entry {
        Entry {
            list,
            ident: Identifier::parse(kind, name, value).expect("valid"),
            source: source.into(),
            reason: String::new(),
            api: String::new(),
            created: 1,
            expires,
        }
    }

    #[test]
    fn survives_reopen_and_keeps_sources_apart() {
        let dir = std::env::temp_dir().join(format!("pc-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let path = dir.join("state.db");
        let _ = std::fs::remove_file(&path);
        {
            let mut s = Store::open(&path).expect("open");
            let added = s
                .upsert(&[
                    entry(List::Deny, Kind::Ip, None, "203.0.113.7", "manual", None),
                    entry(List::Deny, Kind::Ip, None, "203.0.113.7", "abs", None),
                    entry(List::Deny, Kind::Token, None, "s3cr3t-T0ken", "manual", Some(10)),
                    entry(List::Allow, Kind::Username, None, "your name", "manual", None),
                ])
                .expect("upsert");
            assert_eq!(added, 4);
            assert_eq!(s.upsert(&[entry(List::Deny, Kind::Ip, None, "203.0.113.7", "abs", None)]).expect("again"), 0);
        }
        // Nothing in the file is a clear-text secret.
        let bytes = std::fs::read(&path).expect("read");
        assert!(!bytes.windows(12).any(|w| w == b"s3cr3t-T0ken"));
        let mut s = Store::open(&path).expect("reopen");
        assert_eq!(s.list(&Filter::default()).expect("list").len(), 4);
        let ip = Identifier::parse(Kind::Ip, None, "203.0.113.7").expect("ip");
        let gone = s.remove(List::Deny, &ip, Some("abs")).expect("remove");
        assert_eq!(gone.len(), 1);
        assert_eq!(s.rows_of(List::Deny, &ip).expect("rows").len(), 1, "manual row stays");
        let pruned = s.prune_expired(10).expect("prune");
        assert_eq!(pruned.len(), 1);
        assert_eq!(pruned[0].ident.kind, Kind::Token);
        let cleared = s.clear(&Filter { list: Some(List::Allow), ..Filter::default() }).expect("clear");
        assert_eq!(cleared.len(), 1);
        assert_eq!(s.counts().expect("counts"), vec![(List::Deny, Kind::Ip, "manual".to_string(), 1)]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
