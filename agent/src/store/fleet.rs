//! The fleet's durable state beside the lists: the queue of local changes not yet published
//! (an outbox: it survives a restart and a Redis outage), and where in the fleet's log this
//! host stands.

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, sql};

/// The fleet tables (created on open; older files gain them without a migration).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS fleet_outbox (
    id      INTEGER PRIMARY KEY,
    remove  INTEGER NOT NULL,   -- 0 add, 1 remove, 2 withdraw
    key     BLOB NOT NULL,
    record  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fleet_state (
    name    TEXT PRIMARY KEY,
    value   TEXT NOT NULL
);
";

/// One queued local change, as it will be published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Queue order.
    pub id: i64,
    /// A removal (else an addition).
    pub remove: bool,
    /// A removal that only withdraws this host's own record (a feed's or a detection's).
    pub withdraw: bool,
    /// The identity's key in the fleet's snapshot.
    pub key: Vec<u8>,
    /// The record, in the fleet's wire form.
    pub record: String,
}

impl Store {
    /// Appends local changes (`(op, key, record)`, op 0 add, 1 remove, 2 withdraw) to the
    /// outbox in one transaction.
    pub fn fleet_queue(&self, items: &[(u8, Vec<u8>, String)]) -> Result<(), StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(sql("begin"))?;
        {
            let mut q = tx
                .prepare_cached(
                    "INSERT INTO fleet_outbox (remove, key, record) VALUES (?1, ?2, ?3)",
                )
                .map_err(sql("prepare"))?;
            for (remove, key, record) in items {
                q.execute(params![remove, key, record])
                    .map_err(sql("queue"))?;
            }
        }
        tx.commit().map_err(sql("commit"))
    }

    /// The oldest `limit` queued changes.
    pub fn fleet_pending(&self, limit: usize) -> Result<Vec<Outgoing>, StoreError> {
        let mut q = self
            .conn
            .prepare_cached("SELECT id, remove, key, record FROM fleet_outbox ORDER BY id LIMIT ?1")
            .map_err(sql("prepare"))?;
        q.query_map(params![limit as i64], |r| {
            let op: i64 = r.get(1)?;
            Ok(Outgoing {
                id: r.get(0)?,
                remove: op != 0,
                withdraw: op == 2,
                key: r.get(2)?,
                record: r.get(3)?,
            })
        })
        .map_err(sql("outbox"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql("outbox"))
    }

    /// Drops the queued changes up to `upto` (published); returns how many.
    pub fn fleet_published(&self, upto: i64) -> Result<u64, StoreError> {
        self.conn
            .execute("DELETE FROM fleet_outbox WHERE id <= ?1", params![upto])
            .map(|n| n as u64)
            .map_err(sql("outbox"))
    }

    /// Empties the outbox (its changes are superseded by a full republish).
    pub fn fleet_clear_queue(&self) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM fleet_outbox", [])
            .map(drop)
            .map_err(sql("outbox"))
    }

    /// How many changes wait.
    pub fn fleet_queued(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM fleet_outbox", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(sql("outbox"))
    }

    /// The keys of queued changes (not yet in the fleet's snapshot).
    pub fn fleet_queued_keys(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut q = self
            .conn
            .prepare("SELECT DISTINCT key FROM fleet_outbox")
            .map_err(sql("prepare"))?;
        q.query_map([], |r| r.get(0))
            .map_err(sql("outbox"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql("outbox"))
    }

    /// A fleet state value (`epoch`, `last_id`, `overflowed`).
    pub fn fleet_get(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row(
                "SELECT value FROM fleet_state WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("fleet state"))
    }

    /// Sets fleet state values in one transaction (`None` deletes).
    pub fn fleet_set(&self, values: &[(&str, Option<&str>)]) -> Result<(), StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(sql("begin"))?;
        for (name, value) in values {
            match value {
                Some(v) => tx.execute(
                    "INSERT INTO fleet_state (name, value) VALUES (?1, ?2)
                     ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    params![name, v],
                ),
                None => tx.execute("DELETE FROM fleet_state WHERE name = ?1", params![name]),
            }
            .map_err(sql("fleet state"))?;
        }
        tx.commit().map_err(sql("commit"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbox_keeps_order_across_a_reopen_and_forgets_what_was_published() {
        let dir = std::env::temp_dir().join(format!("portcullis-outbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("state.db");
        {
            let store = Store::open(&path).expect("open");
            store
                .fleet_queue(&[
                    (0, vec![1], "a".into()),
                    (2, vec![2], "b".into()),
                    (0, vec![1], "c".into()),
                ])
                .expect("queue");
            store
                .fleet_set(&[("epoch", Some("e1")), ("last_id", Some("5-0"))])
                .expect("state");
        }
        let store = Store::open(&path).expect("reopen");
        let pending = store.fleet_pending(10).expect("pending");
        let records: Vec<_> = pending.iter().map(|o| o.record.as_str()).collect();
        assert_eq!(records, ["a", "b", "c"]);
        assert!(pending[1].remove && pending[1].withdraw && !pending[0].remove);
        assert_eq!(store.fleet_queued_keys().expect("keys").len(), 2);
        store.fleet_published(pending[1].id).expect("ack");
        assert_eq!(store.fleet_queued().expect("count"), 1);
        assert_eq!(
            store.fleet_get("epoch").expect("get").as_deref(),
            Some("e1")
        );
        store.fleet_set(&[("epoch", None)]).expect("delete");
        assert_eq!(store.fleet_get("epoch").expect("get"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
