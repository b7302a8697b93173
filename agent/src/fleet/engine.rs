//! The fleet engine: one task per agent that keeps the lists in step with the fleet's log,
//! reconnecting with back-off and jitter while Redis is away.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo};
use tokio::sync::watch;

use super::log::{Id, Keys, Logged, Read};
use super::record::{self, Op};
use super::{FleetConfig, Shared};
use crate::service::{FleetCommand, FleetReply, Received, ServiceError, unix_now};
use crate::writer::Writer;

/// How long a blocking read waits for records before the engine looks around.
const BLOCK_MS: u64 = 2_000;
/// Records per read, and queued changes per publish.
const BATCH: usize = 1_000;
/// Longest wait between reconnects.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why a session with Redis ended.
#[derive(Debug, thiserror::Error)]
enum FleetError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("list writer: {0}")]
    Writer(#[from] ServiceError),
    #[error("{0}")]
    Other(String),
}

/// Runs until `stop`: connects, syncs, then publishes and applies.
pub async fn run(
    config: FleetConfig,
    writer: Writer,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    loop {
        let session = Session::open(&config, &writer, &shared);
        let ended = tokio::select! {
            r = async { session.await?.serve(&mut failures).await } => r,
            _ = stop.changed() => return,
        };
        if let Err(e) = ended {
            failures = failures.saturating_add(1);
            tracing::warn!(
                failures,
                "fleet: {e}; local enforcement goes on, changes queue"
            );
            shared.update(|s| {
                s.state = "unreachable".into();
                s.last_error = Some(e.to_string());
            });
        }
        let wait = crate::abs::backoff(failures.max(1), MAX_BACKOFF);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One connection's worth of work.
struct Session<'a> {
    config: &'a FleetConfig,
    writer: &'a Writer,
    shared: &'a Shared,
    keys: Keys,
    /// This host's name in records.
    origin: String,
    /// Publishes, snapshots, positions.
    con: MultiplexedConnection,
    /// Blocking reads only.
    reader: MultiplexedConnection,
    epoch: String,
    last: Id,
    /// The sequence number of the last record applied.
    seq: u64,
    /// Counts syncs: a read issued before the latest one is dropped unread.
    syncs: u64,
}

/// Whether a Redis client can be made from `config` (its password and CA files read, the
/// CA parsed): checked before a start or a reload switches to it, so a wrong path is a
/// refusal, not an engine that fails for ever.
pub fn check(config: &FleetConfig) -> Result<(), String> {
    client(config).map(drop).map_err(|e| e.to_string())
}

fn client(config: &FleetConfig) -> Result<Client, FleetError> {
    let mut info = config.redis.as_str().into_connection_info()?;
    if let Some(file) = &config.password_file {
        let pw = std::fs::read_to_string(file)
            .map_err(|e| FleetError::Other(format!("reading {}: {e}", file.display())))?;
        info.redis.password = Some(pw.trim_end_matches(['\n', '\r']).to_owned());
    }
    match &config.ca {
        Some(ca) => {
            let pem = std::fs::read(ca)
                .map_err(|e| FleetError::Other(format!("reading {}: {e}", ca.display())))?;
            Ok(Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )?)
        }
        None => Ok(Client::open(info)?),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fresh epoch name: time and process, unique enough for a fleet.
fn fresh_epoch() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{:x}", std::process::id())
}

impl<'a> Session<'a> {
    async fn open(
        config: &'a FleetConfig,
        writer: &'a Writer,
        shared: &'a Shared,
    ) -> Result<Self, FleetError> {
        let client = client(config)?;
        let timeouts = AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_secs(5))
            .set_response_timeout(Duration::from_secs(30));
        let con = client
            .get_multiplexed_async_connection_with_config(&timeouts)
            .await?;
        let reader = client
            .get_multiplexed_async_connection_with_config(
                &timeouts.set_response_timeout(Duration::from_millis(BLOCK_MS + 10_000)),
            )
            .await?;
        Ok(Self {
            config,
            writer,
            shared,
            keys: Keys::new(&config.name),
            origin: config.origin(),
            con,
            reader,
            epoch: String::new(),
            last: Id::default(),
            seq: 0,
            syncs: 0,
        })
    }

    async fn fleet(&self, cmd: FleetCommand) -> Result<FleetReply, FleetError> {
        Ok(self.writer.fleet(cmd).await?)
    }

    async fn serve(mut self, failures: &mut u32) -> Result<(), FleetError> {
        self.sync(false).await?;
        *failures = 0;
        self.publish().await?;
        self.catch_up().await?;
        let mut wake = Box::pin(wait_after(&self.keys, &self.reader, self.last));
        loop {
            let syncs = self.syncs;
            tokio::select! {
                woke = &mut wake => {
                    woke?;
                    self.catch_up().await?;
                    wake = Box::pin(wait_after(&self.keys, &self.reader, self.last));
                }
                _ = self.shared.queued.notified() => self.publish().await?,
                _ = self.shared.resync.notified() => self.sync(true).await?,
            }
            if self.syncs != syncs {
                wake = Box::pin(wait_after(&self.keys, &self.reader, self.last));
            }
        }
    }

    /// Reads and applies every record after this host's position; a trimmed gap, another
    /// epoch or a broken sequence sends it to the snapshot.
    async fn catch_up(&mut self) -> Result<(), FleetError> {
        loop {
            let Read {
                epoch,
                seq,
                records,
            } = self.keys.read(&mut self.con, self.last, BATCH).await?;
            self.shared.update(|s| s.last_contact = Some(unix_now()));
            if epoch != self.epoch {
                return self.sync(false).await;
            }
            if seq < self.seq {
                return self.rebuild("Redis lost records it had logged").await;
            }
            let n = records.len();
            if n == 0 {
                if seq > self.seq {
                    // Numbered records this host never read are gone from the log.
                    return self.missed().await;
                }
                return Ok(());
            }
            match self.apply(records).await? {
                Continuity::Whole => {}
                Continuity::Missing => return self.missed().await,
                Continuity::Repeated => {
                    return self.rebuild("Redis lost records it had logged").await;
                }
            }
            if n < BATCH {
                return Ok(());
            }
        }
    }

    /// Records were trimmed past this host: only the snapshot can tell what they did.
    async fn missed(&mut self) -> Result<(), FleetError> {
        tracing::info!(position = %self.last, "fleet: the log was trimmed past this host");
        self.sync(true).await
    }

    /// Starts a new epoch in place of this one: every host then rebuilds from its own rows.
    async fn rebuild(&mut self, why: &str) -> Result<(), FleetError> {
        tracing::warn!(
            "fleet: {why}; starting a new epoch, every host republishes its own entries"
        );
        let at = self.keys.position(&mut self.con).await?;
        self.keys
            .new_epoch(&mut self.con, &fresh_epoch(), Some(&at.epoch))
            .await?;
        self.sync(false).await
    }

    /// Brings this host to the fleet's state: resumes when it can, else loads the snapshot.
    async fn sync(&mut self, force: bool) -> Result<(), FleetError> {
        let mut at = self.keys.position(&mut self.con).await?;
        if at.epoch.is_empty() {
            at.epoch = self
                .keys
                .new_epoch(&mut self.con, &fresh_epoch(), None)
                .await?;
            tracing::info!(epoch = %at.epoch, "fleet: Redis held no fleet state; a new epoch starts");
            at = self.keys.position(&mut self.con).await?;
        }
        let FleetReply::Position {
            epoch: mine,
            last: mine_last,
            seq: mine_seq,
            overflowed,
        } = self.fleet(FleetCommand::Position).await?
        else {
            return Err(FleetError::Other("unexpected writer reply".into()));
        };
        let mine_last = Id::parse(&mine_last).unwrap_or_default();
        let same = mine.as_deref() == Some(at.epoch.as_str());
        let lost = same && (mine_last > at.last || mine_seq > at.seq);
        if lost || (same && overflowed) {
            // Redis lost records this host had seen, or this host lost changes it could not
            // queue: a new epoch, and every host rebuilds from its own rows.
            let why = if lost {
                "Redis lost records it had logged"
            } else {
                "this host's queue overflowed"
            };
            tracing::warn!(
                "fleet: {why}; starting a new epoch, every host republishes its own entries"
            );
            self.keys
                .new_epoch(&mut self.con, &fresh_epoch(), Some(&at.epoch))
                .await?;
            at = self.keys.position(&mut self.con).await?;
        }
        let rebuild = mine.as_deref() != Some(at.epoch.as_str()) || overflowed;
        // Resuming is safe: a record trimmed away shows as a break in the numbers.
        if !rebuild && !force {
            self.epoch = at.epoch;
            self.last = mine_last;
            self.seq = mine_seq;
            self.syncs += 1;
            self.mark_synced(None);
            return Ok(());
        }
        self.shared.update(|s| s.state = "resyncing".into());
        let (at, rows, removed) = self.keys.snapshot(&mut self.con).await?;
        // Another host may have started an epoch since the position was read.
        let rebuild = rebuild || mine.as_deref() != Some(at.epoch.as_str());
        let origin = self.origin.clone();
        // A million records take a while to check: off the async workers.
        let (keys, entries, skipped) = tokio::task::spawn_blocking(move || {
            let now = unix_now();
            let mut keys = Vec::with_capacity(rows.len());
            let mut entries = Vec::with_capacity(rows.len());
            let mut skipped = 0u64;
            for (key, raw) in rows {
                match record::decode(&raw) {
                    Ok(r) if r.entry.expires.is_none_or(|e| e > now) => entries.push(Received {
                        op: Op::Add,
                        own: r.origin == origin,
                        entry: r.entry,
                    }),
                    Ok(_) => {}
                    Err(e) => {
                        skipped += 1;
                        tracing::warn!("fleet: snapshot record skipped: {e}");
                    }
                }
                keys.push(key);
            }
            (keys, entries, skipped)
        })
        .await
        .map_err(|e| FleetError::Other(format!("checking the snapshot: {e}")))?;
        let n = entries.len();
        self.fleet(FleetCommand::Swap {
            keys,
            removed,
            entries,
            epoch: at.epoch.clone(),
            last: at.last.to_string(),
            seq: at.seq,
            rebuild,
        })
        .await?;
        tracing::info!(
            entries = n,
            skipped,
            rebuild,
            epoch = %at.epoch,
            position = %at.last,
            "fleet: resynced from the snapshot"
        );
        self.epoch = at.epoch;
        self.last = at.last;
        self.seq = at.seq;
        self.syncs += 1;
        self.shared.update(|s| {
            s.resyncs += 1;
            s.skipped += skipped;
        });
        self.mark_synced(None);
        if rebuild {
            self.shared.queued.notify_one();
        }
        Ok(())
    }

    fn mark_synced(&self, lag_ms: Option<u64>) {
        let (epoch, last) = (self.epoch.clone(), self.last.to_string());
        self.shared.update(|s| {
            s.state = "in sync".into();
            s.epoch = epoch;
            s.position = last;
            s.last_error = None;
            s.last_contact = Some(unix_now());
            if lag_ms.is_some() {
                s.lag_ms = lag_ms;
            }
        });
    }

    /// Applies records read from the log, in order, up to the first break in the sequence.
    async fn apply(&mut self, got: Vec<Logged>) -> Result<Continuity, FleetError> {
        let mut ops = Vec::with_capacity(got.len());
        let mut skipped = 0u64;
        let mut newest = self.last;
        let mut seq = self.seq;
        let mut continuity = Continuity::Whole;
        for l in &got {
            // Records the publish script did not write (no sequence number) are skipped;
            // its own must follow on from the last one applied.
            match l.seq {
                Some(s) if s == seq + 1 => seq = s,
                Some(s) if s <= seq => {
                    continuity = Continuity::Repeated;
                    break;
                }
                Some(_) => {
                    continuity = Continuity::Missing;
                    break;
                }
                None => {}
            }
            newest = newest.max(l.id);
            let op = match l.op.as_slice() {
                b"a" => Op::Add,
                b"r" => Op::Remove,
                b"w" => Op::Withdraw,
                _ => {
                    skipped += 1;
                    tracing::warn!(id = %l.id, "fleet: log record of unknown shape skipped");
                    continue;
                }
            };
            if l.seq.is_none() {
                skipped += 1;
                tracing::warn!(id = %l.id, "fleet: log record not written by the publish script skipped");
                continue;
            }
            match record::decode(&l.record) {
                Ok(r) => ops.push(Received {
                    op,
                    own: r.origin == self.origin,
                    entry: r.entry,
                }),
                Err(e) => {
                    skipped += 1;
                    tracing::warn!(id = %l.id, "fleet: log record skipped: {e}");
                }
            }
        }
        let ops_len = ops.len();
        let FleetReply::Applied { refused } = self
            .fleet(FleetCommand::Apply {
                ops,
                epoch: self.epoch.clone(),
                last: newest.to_string(),
                seq,
            })
            .await?
        else {
            return Err(FleetError::Other("unexpected writer reply".into()));
        };
        self.last = newest;
        self.seq = seq;
        let lag = now_ms().saturating_sub(newest.0);
        let n = ops_len as u64;
        self.shared.update(|s| {
            s.applied += n;
            s.skipped += skipped;
            s.refused += refused as u64;
        });
        self.mark_synced(Some(lag));
        Ok(continuity)
    }

    /// Publishes the queued local changes, oldest first.
    async fn publish(&mut self) -> Result<(), FleetError> {
        let max_age = crate::config::parse_duration(&self.config.max_log_age).unwrap_or(0);
        loop {
            let FleetReply::Pending(items) =
                self.fleet(FleetCommand::Pending { limit: BATCH }).await?
            else {
                return Err(FleetError::Other("unexpected writer reply".into()));
            };
            let Some(upto) = items.last().map(|o| o.id) else {
                self.shared.update(|s| s.queued = 0);
                return Ok(());
            };
            let args: Vec<(&str, &[u8], &str)> = items
                .iter()
                .map(|o| {
                    let op = match (o.remove, o.withdraw) {
                        (false, _) => Op::Add,
                        (true, false) => Op::Remove,
                        (true, true) => Op::Withdraw,
                    };
                    (op.as_str(), o.key.as_slice(), o.record.as_str())
                })
                .collect();
            let published = self
                .keys
                .publish(
                    &mut self.con,
                    &self.epoch,
                    self.config.max_log,
                    max_age,
                    &args,
                )
                .await?;
            if published.is_none() {
                // The epoch changed under us: catch up first, then publish into the new one.
                self.sync(false).await?;
                continue;
            }
            self.fleet(FleetCommand::Published { upto }).await?;
            let n = items.len() as u64;
            self.shared.update(|s| s.published += n);
        }
    }
}

/// Whether records read follow on from the last one applied.
enum Continuity {
    /// They do.
    Whole,
    /// Numbers were skipped: records are missing.
    Missing,
    /// A number came again: Redis lost records and is numbering anew.
    Repeated,
}

fn wait_after(
    keys: &Keys,
    reader: &MultiplexedConnection,
    after: Id,
) -> impl std::future::Future<Output = Result<(), redis::RedisError>> + use<> {
    let (keys, mut reader) = (keys.clone(), reader.clone());
    async move { keys.wait(&mut reader, after, BLOCK_MS).await }
}
