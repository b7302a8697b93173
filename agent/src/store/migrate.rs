//! Bringing a database written by an older build to this build's schema, in place, when the
//! agent opens it. The old file must hold exactly what that build created (no other tables,
//! views or triggers; only known lists and kinds) and is opened with `trusted_schema` off.
//! It is copied first (`<name>.pre-v<N>-from-v<M>`, beside it: one copy, replaced by the
//! next attempt, since a failed attempt leaves the file as it was); the migration is one
//! transaction, and the copy is removed only once the migrated file is committed. A failure
//! stops the start with the reason and where the copy is.
//!
//! Versions (`PRAGMA user_version`):
//! - 0: the first builds: `entries` a `WITHOUT ROWID` table keyed by every identity column.
//! - 2: rows appended in a rowid table, identity through the 128-bit `ident_key` index.
//!   (1 was never released.)

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::{COLUMNS, INSERT, SCHEMA, SCHEMA_VERSION, StoreError, bind_row, ident_key, sql};
use crate::model::{Entry, Identifier};

/// Versions this build migrates from.
const FROM: [i64; 1] = [0];

/// Migrates the open database at `path` from `version`, or says why it cannot.
pub(super) fn run(conn: &mut Connection, path: &Path, version: i64) -> Result<(), StoreError> {
    if !FROM.contains(&version) {
        return Err(StoreError::Schema { found: version });
    }
    conn.pragma_update(None, "trusted_schema", false)
        .map_err(sql("distrusting the old schema"))?;
    if let Err(why) = check_v0(conn) {
        return Err(StoreError::Migration {
            from: version,
            copy: "not made (nothing was changed)".into(),
            why,
        });
    }
    let copy = copy_aside(conn, path, version)?;
    let migrated = from_v0(conn);
    match migrated {
        Ok((read, written)) => {
            tracing::warn!(
                read,
                written,
                from = version,
                to = SCHEMA_VERSION,
                "state database migrated to this build's schema"
            );
            let _ = std::fs::remove_file(&copy);
            Ok(())
        }
        Err(e) => Err(StoreError::Migration {
            from: version,
            copy: copy.display().to_string(),
            why: e.to_string(),
        }),
    }
}

/// A consistent copy of the database beside it, kept until the migration is committed.
fn copy_aside(conn: &Connection, path: &Path, version: i64) -> Result<PathBuf, StoreError> {
    let name = path
        .file_name()
        .map_or_else(|| "portcullis.db".into(), |n| n.to_string_lossy());
    let copy = path.with_file_name(format!("{name}.pre-v{SCHEMA_VERSION}-from-v{version}"));
    // A failed attempt's copy: the file is still what it copied (VACUUM INTO will not
    // overwrite, and a link is removed, not followed).
    match std::fs::remove_file(&copy) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(StoreError::BadCopy(format!(
                "removing the earlier copy {}: {e}",
                copy.display()
            )));
        }
    }
    let text = copy.to_str().ok_or_else(|| {
        StoreError::BadCopy("the state directory's path must be UTF-8 to migrate".into())
    })?;
    if let Err(e) = conn.execute("VACUUM INTO ?1", [text]) {
        let _ = std::fs::remove_file(&copy);
        return Err(sql("copying the database before migrating it")(e));
    }
    Ok(copy)
}

/// Version 0 to 2 in one transaction: every row read back as an [`Entry`], its identifier
/// validated again (today's rules: a row the first builds stored in a form this build
/// spells differently gets this build's form), and written with its identity key. Rows that
/// become the same identity keep the longest-lived one. Returns the rows read and written.
fn from_v0(conn: &mut Connection) -> Result<(usize, usize), StoreError> {
    let tx = conn.transaction().map_err(sql("begin migration"))?;
    tx.execute_batch(
        "ALTER TABLE entries RENAME TO entries_v0;
         DROP INDEX IF EXISTS entries_expires;
         DROP INDEX IF EXISTS entries_source;",
    )
    .map_err(sql("setting the old table aside"))?;
    tx.execute_batch(SCHEMA)
        .map_err(sql("creating this build's schema"))?;
    let (mut read, mut written) = (0, 0);
    {
        // Never-expiring rows first, then the latest: an identity met again is ignored.
        let mut old = tx
            .prepare(&format!(
                "SELECT {COLUMNS} FROM entries_v0 ORDER BY expires IS NOT NULL, expires DESC"
            ))
            .map_err(sql("reading the old rows"))?;
        let mut insert = tx.prepare(INSERT).map_err(sql("prepare"))?;
        let rows = old
            .query_map([], super::row_entry)
            .map_err(sql("reading the old rows"))?;
        for row in rows {
            let e = renew(row.map_err(sql("reading an old row"))?);
            read += 1;
            bind_row(&mut insert, ident_key(e.list, &e.ident), &e, None)
                .map_err(sql("writing a row"))?;
            written += insert.raw_execute().map_err(sql("writing a row"))?;
        }
    }
    tx.execute_batch("DROP TABLE entries_v0;")
        .map_err(sql("dropping the old table"))?;
    tx.commit().map_err(sql("committing the migration"))?;
    Ok((read, written))
}

/// Whether the old file holds exactly what version 0 created (so nothing in it runs or
/// stands in the way of the new schema) and only lists and kinds this build knows (a row
/// is never rewritten into another list or kind).
fn check_v0(conn: &Connection) -> Result<(), String> {
    let objects = conn
        .prepare(
            "SELECT type, name FROM sqlite_master WHERE substr(name, 1, 7) <> 'sqlite_' ORDER BY name",
        )
        .and_then(|mut q| {
            q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| format!("reading its schema: {e}"))?;
    let expected = |(t, n): &(String, String)| {
        matches!(
            (t.as_str(), n.as_str()),
            ("table", "entries") | ("index", "entries_expires" | "entries_source")
        )
    };
    if let Some((t, n)) = objects.iter().find(|o| !expected(o)) {
        return Err(format!(
            "it holds a {t} {n:?} that version 0 never created: not a Portcullis database as written, or altered since"
        ));
    }
    let pairs = conn
        .prepare("SELECT DISTINCT list, kind FROM entries")
        .and_then(|mut q| {
            q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(|e| format!("reading its rows: {e}"))?;
    for (list, kind) in pairs {
        if !matches!(list.as_str(), "allow" | "deny") || kind.parse::<crate::model::Kind>().is_err()
        {
            return Err(format!(
                "it holds rows of list {list:?} and kind {kind:?}, which this build does not know"
            ));
        }
    }
    Ok(())
}

/// `e` with its identifier in this build's form; a row this build would refuse is kept as
/// it was (a migration loses nothing) and named in a warning.
fn renew(mut e: Entry) -> Entry {
    let name = (!e.ident.name.is_empty()).then_some(e.ident.name.as_str());
    match Identifier::parse(e.ident.kind, name, &e.ident.value) {
        Ok(ident) => e.ident = ident,
        Err(why) => tracing::warn!(
            kind = %e.ident.kind,
            "migration: a {} row this build would refuse is kept as stored: {why}",
            e.list
        ),
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Kind, List};
    use crate::store::{Filter, Store};

    /// The first builds' schema, as they created it.
    const V0: &str = "
        CREATE TABLE entries (
            list TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
            api TEXT NOT NULL, source TEXT NOT NULL, reason TEXT NOT NULL,
            created INTEGER NOT NULL, expires INTEGER,
            PRIMARY KEY (list, kind, name, value, api, source)
        ) WITHOUT ROWID;
        CREATE INDEX entries_expires ON entries(expires) WHERE expires IS NOT NULL;
        CREATE INDEX entries_source ON entries(source, list, kind);";

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pc-migrate-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tmp");
        d
    }

    fn leftovers(d: &Path) -> Vec<String> {
        std::fs::read_dir(d)
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.contains(".pre-v"))
            .collect()
    }

    #[test]
    fn a_first_build_database_is_migrated_in_place_and_its_copy_removed() {
        let d = dir("ok");
        let path = d.join("portcullis.db");
        {
            let c = Connection::open(&path).expect("open");
            c.execute_batch(V0).expect("v0 schema");
            let token = crate::model::ident::digest("stolen-token");
            c.execute_batch(&format!(
                "INSERT INTO entries VALUES ('deny','ip','','198.18.0.7/32','','manual','r1',1,NULL);
                 INSERT INTO entries VALUES ('deny','ip','','198.18.0.7/32','','abs','r2',2,500);
                 INSERT INTO entries VALUES ('deny','token','','{token}','shop','checker','decoy',3,900);
                 INSERT INTO entries VALUES ('allow','api-key','X-Key','{token}','','manual','',4,NULL);"
            ))
            .expect("v0 rows");
        }
        let mut s = Store::open(&path).expect("migrated");
        let rows = s.list(&Filter::default()).expect("list");
        assert_eq!(rows.len(), 4, "{rows:?}");
        let token = rows
            .iter()
            .find(|e| e.ident.kind == Kind::Token)
            .expect("token row");
        assert_eq!(
            (token.api.as_str(), token.reason.as_str(), token.expires),
            ("shop", "decoy", Some(900))
        );
        // Today's form: API-key names are lower-cased.
        let key = rows
            .iter()
            .find(|e| e.ident.kind == Kind::ApiKey)
            .expect("key row");
        assert_eq!((key.list, key.ident.name.as_str()), (List::Allow, "x-key"));
        // The identity index works: removing by identifier finds both sources' rows.
        let ip = Identifier::parse(Kind::Ip, None, "198.18.0.7").expect("ip");
        assert_eq!(s.remove(List::Deny, &ip, None).expect("remove").len(), 2);
        assert!(leftovers(&d).is_empty(), "{:?}", leftovers(&d));
        drop(s);
        assert_eq!(
            Store::open(&path)
                .expect("reopen")
                .list(&Filter::default())
                .expect("list")
                .len(),
            2
        );
    }

    #[test]
    fn a_file_holding_more_than_version_0_created_is_not_migrated() {
        for (tag, extra) in [
            ("index", "CREATE INDEX entries_identity ON entries(value);"),
            (
                "trigger",
                "CREATE TRIGGER t AFTER DELETE ON entries BEGIN SELECT 1; END;",
            ),
            (
                "kind",
                "INSERT INTO entries VALUES ('deny','mac','','aa:bb','','manual','',1,NULL);",
            ),
            (
                "list",
                "INSERT INTO entries VALUES ('grey','ip','','198.18.0.1/32','','manual','',1,NULL);",
            ),
        ] {
            let d = dir(tag);
            let path = d.join("portcullis.db");
            {
                let c = Connection::open(&path).expect("open");
                c.execute_batch(V0).expect("v0 schema");
                c.execute_batch(extra).expect("extra");
            }
            let e = Store::open(&path).err().map(|e| e.to_string());
            assert!(
                e.as_deref()
                    .is_some_and(|e| e.contains("not made (nothing was changed)")),
                "{tag}: {e:?}"
            );
            assert!(leftovers(&d).is_empty(), "{tag}");
        }
    }

    #[test]
    fn a_failed_migration_leaves_the_file_unchanged_and_keeps_its_copy() {
        let d = dir("bad");
        let path = d.join("portcullis.db");
        {
            let c = Connection::open(&path).expect("open");
            // A damaged first-build file: no `reason` column.
            c.execute_batch(
                "CREATE TABLE entries (list TEXT, kind TEXT, name TEXT, value TEXT, api TEXT,
                     source TEXT, created INTEGER, expires INTEGER);
                 INSERT INTO entries VALUES ('deny','ip','','198.18.0.9/32','','manual',1,NULL);",
            )
            .expect("v0-ish");
        }
        let e = match Store::open(&path) {
            Ok(_) => panic!("migrated a table without a reason column"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("could not be migrated") && e.contains(".pre-v"),
            "{e}"
        );
        assert_eq!(leftovers(&d).len(), 1);
        // A second attempt replaces the copy rather than adding one.
        assert!(Store::open(&path).is_err());
        assert_eq!(leftovers(&d).len(), 1, "{:?}", leftovers(&d));
        let c = Connection::open(&path).expect("open");
        let v: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM entries", [], |r| r.get(0))
            .expect("old table still there");
        assert_eq!((v, n), (0, 1));
        // A newer build's file is refused untouched, without a copy.
        c.pragma_update(None, "user_version", 9).expect("set");
        drop(c);
        let e = Store::open(&path).err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("version 9")),
            "{e:?}"
        );
        assert_eq!(leftovers(&d).len(), 1);
    }
}
