//! The fleet's keys in Redis and the only ways they are used: one Lua script publishes
//! (log and snapshot together, refused when the caller's epoch is not the fleet's), one
//! creates or replaces the epoch (emptying both), one reads records with the position
//! checked in the same step; snapshots are read pinned to a position (`MULTI`), and a
//! blocking `XREAD` only wakes the reader.

use redis::aio::MultiplexedConnection;
use redis::{RedisError, Script, Value};

/// The position every reader checks: epoch (empty: none), last generated id, and the
/// number of the last record logged.
const POSITION: &str = r"
local e = redis.call('GET', KEYS[3]) or ''
local seq = redis.call('GET', KEYS[4]) or '0'
local last = '0-0'
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
end
return {e, last, seq}
";

/// Publishes a batch: `KEYS` log, snapshot, epoch, sequence, sweep cursor; `ARGV` epoch,
/// max length, max age in seconds (`0`: none), then (op, key, record) triples.
/// - `a` adds; `r` removes (an operator's removal, whoever listed it); `w` withdraws (a
///   feed or a detection no longer listing it: only when the snapshot's record for the key
///   is this origin's, so another host's entry stays).
/// - An add whose record the snapshot holds already, and a removal of a key it lacks,
///   change nothing and log nothing (echoes die here). Records over 4 KiB are not taken.
/// - Each logged record carries the next number of a gapless sequence (`s`): a reader that
///   sees it jump missed records, one that sees it repeat follows a Redis that lost writes.
/// - Each call also drops up to 100 expired records from the snapshot (every host expires
///   its rows itself; Redis must not keep them forever) and trims by age on Redis's clock.
const PUBLISH: &str = r"
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return redis.error_reply('EPOCH the fleet epoch changed')
end
local now = tonumber(redis.call('TIME')[1])
local last = ''
local function log(op, r)
  local s = redis.call('INCR', KEYS[4])
  last = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'o', op, 'r', r, 's', s)
end
local function origin(r)
  local ok, v = pcall(cjson.decode, r)
  if ok and type(v) == 'table' then return v[7] end
  return nil
end
for i = 4, #ARGV, 3 do
  local op, k, r = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if #r > 4096 then
  elseif op == 'a' then
    if redis.call('HGET', KEYS[2], k) ~= r then
      redis.call('HSET', KEYS[2], k, r)
      log('a', r)
    end
  elseif op == 'w' then
    local held = redis.call('HGET', KEYS[2], k)
    if held and origin(held) ~= nil and origin(held) == origin(r) then
      redis.call('HDEL', KEYS[2], k)
      log('w', r)
    end
  elseif redis.call('HDEL', KEYS[2], k) == 1 then
    redis.call('HSET', KEYS[6], k, now)
    log('r', r)
  end
  if op == 'a' then redis.call('HDEL', KEYS[6], k) end
end
local tomb = redis.call('HSCAN', KEYS[6], redis.call('GET', KEYS[7]) or '0', 'COUNT', 100)
redis.call('SET', KEYS[7], tomb[1])
for i = 1, #tomb[2], 2 do
  if (tonumber(tomb[2][i + 1]) or 0) + 2592000 < now then redis.call('HDEL', KEYS[6], tomb[2][i]) end
end
local scan = redis.call('HSCAN', KEYS[2], redis.call('GET', KEYS[5]) or '0', 'COUNT', 100)
redis.call('SET', KEYS[5], scan[1])
for i = 1, #scan[2], 2 do
  local ok, v = pcall(cjson.decode, scan[2][i + 1])
  if ok and type(v) == 'table' and type(v[10]) == 'number' and v[10] <= now then
    redis.call('HDEL', KEYS[2], scan[2][i])
  end
end
local age = tonumber(ARGV[3])
if age and age > 0 and now > age then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', tostring((now - age) * 1000) .. '-0')
end
return last
";

/// Creates the epoch when there is none (`ARGV[2]` empty), or replaces `ARGV[2]` with
/// `ARGV[1]`; either empties the log, the snapshot and the sequence (a new epoch is a new
/// truth). Returns the epoch in force.
const NEW_EPOCH: &str = r"
local now = redis.call('GET', KEYS[3])
if ARGV[2] == '' then
  if now then return now end
elseif now ~= ARGV[2] then
  return now or ''
end
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
redis.call('SET', KEYS[3], ARGV[1])
return ARGV[1]
";

/// Reads up to `ARGV[2]` records after id `ARGV[1]`, with the epoch and the sequence in
/// the same step: `{epoch, seq, id, op, record, seq, ...}`. Fields over 16 KiB come back
/// empty (skipped as malformed). Whether records were trimmed past the reader shows in the
/// numbers: the first one read does not follow on from the reader's, or none is left to
/// read while the sequence moved on.
const READ: &str = r"
local out = {redis.call('GET', KEYS[3]) or '', redis.call('GET', KEYS[4]) or '0'}
if redis.call('EXISTS', KEYS[1]) == 0 then return out end
for _, e in ipairs(redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])) do
  local f = {o = '', r = '', s = ''}
  for i = 1, #e[2], 2 do
    local v = e[2][i + 1]
    if #v > 16384 then v = '' end
    f[e[2][i]] = v
  end
  table.insert(out, e[1]); table.insert(out, f.o); table.insert(out, f.r); table.insert(out, f.s)
end
return out
";

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

/// The snapshot's (key, record) pairs.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// The log's position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// The fleet's epoch; empty when Redis has none (new, or restarted empty).
    pub epoch: String,
    /// The last id the log ever generated.
    pub last: Id,
    /// The number of the last record logged.
    pub seq: u64,
}

impl Position {
    fn read((epoch, last, seq): (String, String, String)) -> Self {
        Self {
            epoch,
            last: Id::parse(&last).unwrap_or_default(),
            seq: seq.parse().unwrap_or(0),
        }
    }
}

/// One record read from the log.
pub struct Logged {
    /// Its id.
    pub id: Id,
    /// `a`, `r` or `w` (anything else is skipped by the caller).
    pub op: Vec<u8>,
    /// The record.
    pub record: Vec<u8>,
    /// Its sequence number (`None`: not written by the publish script).
    pub seq: Option<u64>,
}

/// What a read found.
pub struct Read {
    /// The fleet's epoch now.
    pub epoch: String,
    /// The number of the last record logged now.
    pub seq: u64,
    /// Records after the position asked for (none: nothing new).
    pub records: Vec<Logged>,
}

/// One fleet's keys.
#[derive(Clone)]
pub struct Keys {
    log: String,
    snapshot: String,
    epoch: String,
    seq: String,
    sweep: String,
    removed: String,
    removed_sweep: String,
    publish: Script,
    new_epoch: Script,
    position: Script,
    read: Script,
}

impl Keys {
    /// The keys of fleet `name` (a hash tag keeps them in one Redis Cluster slot, though
    /// only a single Redis server is supported).
    pub fn new(name: &str) -> Self {
        Self {
            log: format!("portcullis:{{{name}}}:log"),
            snapshot: format!("portcullis:{{{name}}}:snapshot"),
            epoch: format!("portcullis:{{{name}}}:epoch"),
            seq: format!("portcullis:{{{name}}}:seq"),
            sweep: format!("portcullis:{{{name}}}:sweep"),
            removed: format!("portcullis:{{{name}}}:removed"),
            removed_sweep: format!("portcullis:{{{name}}}:removed-sweep"),
            publish: Script::new(PUBLISH),
            new_epoch: Script::new(NEW_EPOCH),
            position: Script::new(POSITION),
            read: Script::new(READ),
        }
    }

    fn on<'a>(&self, script: &'a Script) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.key(&self.log)
            .key(&self.snapshot)
            .key(&self.epoch)
            .key(&self.seq)
            .key(&self.sweep)
            .key(&self.removed)
            .key(&self.removed_sweep);
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
        max_age_secs: u64,
        items: &[(&str, &[u8], &str)],
    ) -> Result<Option<String>, RedisError> {
        let mut inv = self.on(&self.publish);
        inv.arg(epoch).arg(max_len).arg(max_age_secs);
        for (op, key, record) in items {
            inv.arg(*op).arg(*key).arg(*record);
        }
        match inv.invoke_async::<String>(con).await {
            Ok(last) => Ok(Some(last)),
            Err(e) if e.code() == Some("EPOCH") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The snapshot with the position it equals, and the keys operators removed in the
    /// last 30 days (tombstones), read atomically (`MULTI`).
    pub async fn snapshot(
        &self,
        con: &mut MultiplexedConnection,
    ) -> Result<(Position, Rows, Vec<Vec<u8>>), RedisError> {
        let script = &self.position;
        // Loaded first: EVALSHA inside MULTI cannot fall back to EVAL.
        script.prepare_invoke().load_async(con).await?;
        let (at, rows, removed): ((String, String, String), Rows, Vec<Vec<u8>>) = redis::pipe()
            .atomic()
            .cmd("EVALSHA")
            .arg(script.get_hash())
            .arg(7)
            .arg(&self.log)
            .arg(&self.snapshot)
            .arg(&self.epoch)
            .arg(&self.seq)
            .arg(&self.sweep)
            .arg(&self.removed)
            .arg(&self.removed_sweep)
            .cmd("HGETALL")
            .arg(&self.snapshot)
            .cmd("HKEYS")
            .arg(&self.removed)
            .query_async(con)
            .await?;
        Ok((Position::read(at), rows, removed))
    }

    /// Up to `count` records after `after`, checked against trimming in the same step.
    pub async fn read(
        &self,
        con: &mut MultiplexedConnection,
        after: Id,
        count: usize,
    ) -> Result<Read, RedisError> {
        let mut inv = self.on(&self.read);
        inv.arg(after.to_string()).arg(count);
        let reply: Vec<Vec<u8>> = inv.invoke_async(con).await?;
        Ok(parse_read(reply))
    }

    /// Waits up to `block_ms` for a record after `after` (a wake-up only: records are read
    /// with [`Keys::read`], which checks the position).
    pub async fn wait(
        &self,
        con: &mut MultiplexedConnection,
        after: Id,
        block_ms: u64,
    ) -> Result<(), RedisError> {
        let _: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&self.log)
            .arg(after.to_string())
            .query_async(con)
            .await?;
        Ok(())
    }
}

/// The read script's reply.
fn parse_read(reply: Vec<Vec<u8>>) -> Read {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let epoch = reply.first().map(|b| text(b)).unwrap_or_default();
    let seq = reply.get(1).and_then(|b| text(b).parse().ok()).unwrap_or(0);
    let records = reply
        .get(2..)
        .unwrap_or_default()
        .chunks_exact(4)
        .filter_map(|c| {
            Some(Logged {
                id: Id::parse(std::str::from_utf8(&c[0]).ok()?)?,
                op: c[1].clone(),
                record: c[2].clone(),
                seq: std::str::from_utf8(&c[3]).ok()?.parse().ok(),
            })
        })
        .collect();
    Read {
        epoch,
        seq,
        records,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_as_redis_orders_them() {
        assert!(Id::parse("1700000000000-2") > Id::parse("1700000000000-1"));
        assert!(Id::parse("1700000000001-0") > Id::parse("1700000000000-99"));
        assert_eq!(Id::parse("5"), Some(Id(5, 0)));
        assert_eq!(Id::parse("x-1"), None);
        assert_eq!(Id(5, 3).to_string(), "5-3");
    }

    #[test]
    fn a_read_reply_gives_the_position_and_the_records() {
        let b = |s: &str| s.as_bytes().to_vec();
        let r = parse_read(vec![
            b("e1"),
            b("9"),
            b("1-0"),
            b("a"),
            b("[]"),
            b("7"),
            b("2-0"),
            b("junk"),
            b(""),
            b(""),
        ]);
        assert_eq!((r.epoch.as_str(), r.seq), ("e1", 9));
        assert_eq!(r.records.len(), 2);
        assert_eq!(r.records[0].seq, Some(7));
        assert_eq!(r.records[1].op, b"junk");
        assert_eq!(r.records[1].seq, None);
        let empty = parse_read(vec![]);
        assert!(empty.epoch.is_empty() && empty.records.is_empty());
    }
}
