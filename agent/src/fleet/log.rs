//! The fleet's keys in Redis and the only ways they are written: one Lua script publishes
//! (log and snapshot together, refused when the caller's epoch is not the fleet's), one
//! creates or replaces the epoch (emptying both), and reads are pinned snapshots (`MULTI`)
//! and blocking stream reads.

use redis::aio::MultiplexedConnection;
use redis::{RedisError, Script, Value};

/// Publishes a batch: `KEYS` log, snapshot, epoch; `ARGV` epoch, max length, min id (`0`:
/// none), then (op, key, record) triples. An add whose record the snapshot holds already,
/// and a removal of a key it lacks, change nothing and log nothing (echoes die here).
const PUBLISH: &str = r"
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return redis.error_reply('EPOCH the fleet epoch changed')
end
local last = ''
for i = 4, #ARGV, 3 do
  local op, k, r = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if op == 'a' then
    if redis.call('HGET', KEYS[2], k) ~= r then
      redis.call('HSET', KEYS[2], k, r)
      last = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'o', 'a', 'r', r)
    end
  elseif redis.call('HDEL', KEYS[2], k) == 1 then
    last = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'o', 'r', 'r', r)
  end
end
if ARGV[3] ~= '0' then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[3])
end
return last
";

/// Creates the epoch when there is none (`ARGV[2]` empty), or replaces `ARGV[2]` with
/// `ARGV[1]`; either empties the log and the snapshot (a new epoch is a new truth). Returns
/// the epoch in force.
const NEW_EPOCH: &str = r"
local now = redis.call('GET', KEYS[3])
if ARGV[2] == '' then
  if now then return now end
elseif now ~= ARGV[2] then
  return now or ''
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('XADD', KEYS[1], 'MAXLEN', '0', '*', 'o', 'epoch')
redis.call('SET', KEYS[3], ARGV[1])
return ARGV[1]
";

/// Where the log stands: epoch (empty: none), last generated id, first id held (empty: no
/// entries), and whether any entry was ever trimmed (`entries-added` above `length`; Redis
/// 7.0 leaves `max-deleted-entry-id` alone when trimming).
const POSITION: &str = r"
local e = redis.call('GET', KEYS[3]) or ''
if redis.call('EXISTS', KEYS[1]) == 0 then return {e, '0-0', '', '0'} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last, first, len, added = '0-0', '', 0, 0
for i = 1, #info, 2 do
  local k, v = info[i], info[i + 1]
  if k == 'last-generated-id' then last = v
  elseif k == 'length' then len = v
  elseif k == 'entries-added' then added = v
  elseif k == 'first-entry' and type(v) == 'table' then first = v[1] end
end
return {e, last, first, added > len and '1' or '0'}
";

/// The snapshot's (key, record) pairs.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// A stream id, `ms-seq`, ordered as Redis orders them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Id(pub u64, pub u64);

impl Id {
    /// Parses `ms-seq` (a bare `ms` is `ms-0`).
    pub fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// The log's position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// The fleet's epoch; empty when Redis has none (new, or restarted empty).
    pub epoch: String,
    /// The last id the log ever generated.
    pub last: Id,
    /// The oldest record still held (`None`: none held).
    pub first: Option<Id>,
    /// Records were trimmed from the head of the log.
    pub trimmed: bool,
}

impl Position {
    /// Whether a reader that has applied everything up to `from` can go on reading: every
    /// record after `from` is still in the log. Trimming only cuts the head, so that holds
    /// when `from` is at or past the oldest record held, or at the end, or nothing was ever
    /// trimmed.
    pub fn resumable(&self, from: Id) -> bool {
        from >= self.last || !self.trimmed || self.first.is_some_and(|f| from >= f)
    }

    fn read((epoch, last, first, trimmed): (String, String, String, String)) -> Self {
        Self {
            epoch,
            last: Id::parse(&last).unwrap_or_default(),
            first: Id::parse(&first),
            trimmed: trimmed == "1",
        }
    }
}

/// One record read from the log.
pub struct Logged {
    /// Its id.
    pub id: Id,
    /// `a` or `r` (anything else is skipped by the caller).
    pub op: Vec<u8>,
    /// The record.
    pub record: Vec<u8>,
}

/// One fleet's keys.
#[derive(Clone)]
pub struct Keys {
    log: String,
    snapshot: String,
    epoch: String,
    publish: Script,
    new_epoch: Script,
    position: Script,
}

impl Keys {
    /// The keys of fleet `name` (a hash tag keeps them in one Redis Cluster slot).
    pub fn new(name: &str) -> Self {
        Self {
            log: format!("portcullis:{{{name}}}:log"),
            snapshot: format!("portcullis:{{{name}}}:snapshot"),
            epoch: format!("portcullis:{{{name}}}:epoch"),
            publish: Script::new(PUBLISH),
            new_epoch: Script::new(NEW_EPOCH),
            position: Script::new(POSITION),
        }
    }

    fn on<'a>(&self, script: &'a Script) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.key(&self.log).key(&self.snapshot).key(&self.epoch);
        inv
    }

    /// Where the log stands.
    pub async fn position(&self, con: &mut MultiplexedConnection) -> Result<Position, RedisError> {
        Ok(Position::read(
            self.on(&self.position).invoke_async(con).await?,
        ))
    }

    /// Sets `fresh` as the epoch if there is none (`replacing` `None`) or if the epoch is
    /// still `replacing`; returns the epoch in force.
    pub async fn new_epoch(
        &self,
        con: &mut MultiplexedConnection,
        fresh: &str,
        replacing: Option<&str>,
    ) -> Result<String, RedisError> {
        let mut inv = self.on(&self.new_epoch);
        inv.arg(fresh).arg(replacing.unwrap_or(""));
        inv.invoke_async(con).await
    }

    /// Publishes `(op, key, record)` items under `epoch`; `Ok(None)`: the epoch changed
    /// (resync, then publish again), `Ok(Some(id))` the last id logged (empty: nothing new).
    pub async fn publish(
        &self,
        con: &mut MultiplexedConnection,
        epoch: &str,
        max_len: u64,
        min_id: Option<Id>,
        items: &[(&str, &[u8], &str)],
    ) -> Result<Option<String>, RedisError> {
        let mut inv = self.on(&self.publish);
        inv.arg(epoch)
            .arg(max_len)
            .arg(min_id.map_or_else(|| "0".to_owned(), |i| i.to_string()));
        for (op, key, record) in items {
            inv.arg(*op).arg(*key).arg(*record);
        }
        match inv.invoke_async::<String>(con).await {
            Ok(last) => Ok(Some(last)),
            Err(e) if e.code() == Some("EPOCH") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The snapshot with the position it equals, read atomically (`MULTI`).
    pub async fn snapshot(
        &self,
        con: &mut MultiplexedConnection,
    ) -> Result<(Position, Rows), RedisError> {
        let script = &self.position;
        // Loaded first: EVALSHA inside MULTI cannot fall back to EVAL.
        script.prepare_invoke().load_async(con).await?;
        let (at, rows): ((String, String, String, String), Rows) = redis::pipe()
            .atomic()
            .cmd("EVALSHA")
            .arg(script.get_hash())
            .arg(3)
            .arg(&self.log)
            .arg(&self.snapshot)
            .arg(&self.epoch)
            .cmd("HGETALL")
            .arg(&self.snapshot)
            .query_async(con)
            .await?;
        Ok((Position::read(at), rows))
    }

    /// Up to `count` records after `after`, waiting up to `block_ms` for the first.
    pub async fn read(
        &self,
        con: &mut MultiplexedConnection,
        after: Id,
        count: usize,
        block_ms: u64,
    ) -> Result<Vec<Logged>, RedisError> {
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&self.log)
            .arg(after.to_string())
            .query_async(con)
            .await?;
        Ok(logged(reply))
    }
}

/// The records of an `XREAD` reply; entries of another shape come out with an empty op
/// (counted and skipped by the caller, never a reason to stop reading).
fn logged(reply: Value) -> Vec<Logged> {
    let mut out = Vec::new();
    let streams = match reply {
        Value::Array(v) => v,
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return out,
    };
    // RESP2: [[name, entries], ...]; RESP3 map flattened: name, entries, ...
    let entries = streams.into_iter().flat_map(|s| match s {
        Value::Array(mut pair) if pair.len() == 2 => match pair.pop() {
            Some(Value::Array(entries)) => entries,
            _ => Vec::new(),
        },
        Value::Array(entries) => entries,
        _ => Vec::new(),
    });
    for entry in entries {
        let Value::Array(mut parts) = entry else {
            continue;
        };
        if parts.len() != 2 {
            continue;
        }
        let fields = parts.pop();
        let id = match parts.pop() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
            Some(Value::SimpleString(s)) => s,
            _ => continue,
        };
        let Some(id) = Id::parse(&id) else { continue };
        let mut op = Vec::new();
        let mut record = Vec::new();
        if let Some(Value::Array(kv)) = fields {
            for pair in kv.chunks(2) {
                if let [Value::BulkString(k), Value::BulkString(v)] = pair {
                    match k.as_slice() {
                        b"o" => op = v.clone(),
                        b"r" => record = v.clone(),
                        _ => {}
                    }
                }
            }
        }
        out.push(Logged { id, op, record });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_resumes_only_when_nothing_after_it_was_trimmed() {
        let at = |first: Option<Id>, trimmed| Position {
            epoch: "e".into(),
            last: Id(100, 0),
            first,
            trimmed,
        };
        assert!(
            at(Some(Id(1, 0)), false).resumable(Id(0, 0)),
            "never trimmed"
        );
        assert!(at(Some(Id(50, 0)), true).resumable(Id(50, 0)));
        assert!(at(Some(Id(50, 0)), true).resumable(Id(70, 3)));
        assert!(
            !at(Some(Id(50, 0)), true).resumable(Id(49, 9)),
            "records cut after it"
        );
        assert!(
            at(None, true).resumable(Id(100, 0)),
            "at the end of an empty log"
        );
        assert!(!at(None, true).resumable(Id(99, 0)));
    }

    #[test]
    fn ids_order_as_redis_orders_them() {
        assert!(Id::parse("1700000000000-2") > Id::parse("1700000000000-1"));
        assert!(Id::parse("1700000000001-0") > Id::parse("1700000000000-99"));
        assert_eq!(Id::parse("5"), Some(Id(5, 0)));
        assert_eq!(Id::parse("x-1"), None);
        assert_eq!(Id(5, 3).to_string(), "5-3");
    }

    #[test]
    fn odd_stream_entries_are_kept_as_skippable_not_dropped_silently() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![Value::Array(vec![
            b("log"),
            Value::Array(vec![
                Value::Array(vec![
                    b("1-0"),
                    Value::Array(vec![b("o"), b("a"), b("r"), b("[]")]),
                ]),
                Value::Array(vec![b("2-0"), Value::Array(vec![b("junk")])]),
                Value::Array(vec![b("not-an-id"), Value::Nil]),
            ]),
        ])]);
        let got = logged(reply);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].op, b"a");
        assert_eq!(got[0].record, b"[]");
        assert!(got[1].op.is_empty());
        assert_eq!(got[1].id, Id(2, 0));
    }
}
