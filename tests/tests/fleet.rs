//! Fleet sync through a real `redis-server`: three agents with their own state, sockets and
//! pins (C attached to a veth pair in a namespace, B on an address `tc netem` can degrade or
//! cut), changes
//! spreading down to XDP, and the faults a fleet lives through — Redis killed with and
//! without its append-only file, an agent killed or frozen past the log's trim point, a
//! lossy slow link — after each of which every host's list digest is the same and nothing
//! deleted meanwhile comes back.

use std::time::{Duration, Instant};

use portcullis::control::answer::FleetState;
use portcullis_tests::agent::{Agent, AgentDirs, AgentOpts, answer, ok};
use portcullis_tests::checker_setup::free_port;
use portcullis_tests::netns::{CLIENT_V4, NetnsPair, SERVER_V4};
use portcullis_tests::privileged;
use portcullis_tests::redis::Redis;

/// The denied client (pings from it go through C's XDP).
const ATTACKER: &str = CLIENT_V4[1];

/// The Redis ACL README "A fleet of hosts" gives the fleet's user: what the agents need.
const ACL: &str = "on >fleet-pw-1 resetkeys ~portcullis:* resetchannels -@all +ping +hello +select +get +set +unlink +exists +incr +time +hget +hset +hdel +hgetall +hscan +hkeys +xadd +xtrim +xread +xrange +xinfo|stream +eval +evalsha +script|load +multi +exec";

struct Fleet {
    pair: NetnsPair,
    redis: Redis,
    name: String,
    /// Agents log in as the README's ACL user (A and C by URL, B by password file).
    acl: bool,
    dirs: Vec<AgentDirs>,
    agents: Vec<Agent>,
}

impl Fleet {
    /// Redis and the agents in the server namespace (C attached to the veth); B reaches
    /// Redis on 127.0.0.2, which `tc` filters can single out.
    fn new(aof: bool, acl: bool) -> Self {
        let pair = NetnsPair::new().expect("namespaces");
        let root = std::env::temp_dir().join(portcullis_tests::unique("pcredis"));
        let port = free_port();
        let redis = Redis::start(root, port, "127.0.0.1 127.0.0.2", Some(&pair.server), aof)
            .expect("redis");
        if acl {
            let mut args = vec!["ACL", "SETUSER", "portcullis"];
            args.extend(ACL.split(' '));
            let reply = redis.text(&args);
            assert!(reply.contains("OK"), "ACL SETUSER: {reply}");
        }
        let mut f = Self {
            pair,
            redis,
            acl,
            name: portcullis_tests::unique("fleet"),
            dirs: (0..3).map(|_| AgentDirs::new()).collect(),
            agents: Vec::new(),
        };
        for i in 0..3 {
            let a = f.start(i);
            f.agents.push(a);
        }
        f
    }

    fn opts(&self, i: usize) -> AgentOpts {
        let host = ["a", "b", "c"][i];
        let addr = if i == 1 { "127.0.0.2" } else { "127.0.0.1" };
        let port = self.redis.port;
        let mut config = match (self.acl, i) {
            (false, _) => format!("[fleet]\nredis = \"redis://{addr}:{port}\"\n"),
            (true, 1) => {
                let file = self.dirs[i].root.join("redis.pass");
                std::fs::write(&file, "fleet-pw-1\n").expect("password file");
                format!(
                    "[fleet]\nredis = \"redis://portcullis@{addr}:{port}\"\npassword_file = \"{}\"\n",
                    file.display()
                )
            }
            (true, _) => {
                format!("[fleet]\nredis = \"redis://portcullis:fleet-pw-1@{addr}:{port}\"\n")
            }
        };
        config.push_str(&format!(
            "name = \"{}\"\nhost = \"{host}\"\nmax_log = 1000\n",
            self.name
        ));
        if i == 1 {
            config.push_str("queue_limit = 1000\n");
        }
        match i {
            2 => AgentOpts {
                config,
                ..AgentOpts::on_server(&self.pair)
            },
            _ => AgentOpts {
                netns: Some(self.pair.server.clone()),
                config,
                ..AgentOpts::default()
            },
        }
    }

    fn start(&self, i: usize) -> Agent {
        Agent::start(&self.dirs[i], &self.opts(i)).expect("agent")
    }

    fn state(&self, i: usize) -> FleetState {
        answer(&self.agents[i].cli(&["fleet", "status", "--json"]))
    }

    fn denies(&self, i: usize) -> Vec<String> {
        self.agents[i]
            .entries("deny")
            .into_iter()
            .map(|e| e.value)
            .collect()
    }

    /// Waits until every agent is in sync with the same digest; returns it.
    fn converged(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let states: Vec<FleetState> = (0..self.agents.len()).map(|i| self.state(i)).collect();
            let same = states
                .iter()
                .all(|s| s.state == "in sync" && s.queued == 0 && s.digest == states[0].digest);
            if same {
                return states[0].digest.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{what}: agents did not converge: {states:#?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        self.agents
            .iter()
            .map(|a| a.log_text())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }

    /// Waits until `cond` holds for agent `i`; returns how long it took.
    fn until(&self, i: usize, what: &str, cond: impl Fn(&Self) -> bool) -> Duration {
        let started = Instant::now();
        while !cond(self) {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "agent {i}: {what} did not happen: {:?}\n{}",
                self.state(i),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        started.elapsed()
    }
}

fn has(list: &[String], v: &str) -> bool {
    list.iter()
        .any(|x| x == v || x.strip_suffix("/32") == Some(v))
}

#[test]
fn a_deny_on_one_host_is_dropped_by_xdp_on_another_and_lifted_everywhere() {
    privileged!();
    let f = Fleet::new(false, true);
    let (a, b, c) = (0, 1, 2);
    f.pair
        .assert_pings(ATTACKER, SERVER_V4, 2, 2, "before any deny");

    // A deny on A reaches C's XDP within a second.
    f.agents[a].add("deny", &[&["ip", ATTACKER]]);
    let took = f.until(c, "the deny reaching C", |f| has(&f.denies(c), ATTACKER));
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let dropped = f.agents[c].xdp_packets("drop_denied");
    f.pair
        .assert_pings(ATTACKER, SERVER_V4, 3, 0, "denied on A, dropped on C");
    assert!(f.agents[c].xdp_packets("drop_denied") >= dropped + 3);
    f.pair
        .assert_pings(CLIENT_V4[2], SERVER_V4, 2, 2, "its neighbour");
    let on_c = f.agents[c].entries("deny");
    let row = on_c
        .iter()
        .find(|e| has(std::slice::from_ref(&e.value), ATTACKER))
        .expect("row");
    assert_eq!(row.source, "fleet");
    assert!(row.reason.starts_with("a/manual"), "{row:?}");
    f.converged("after the deny");
    assert!(
        f.agents[a].entries_from("deny", "fleet").is_empty(),
        "the origin does not hold its own entry twice"
    );

    // Removed on B: lifted on A and C too.
    ok(&f.agents[b].cli(&["deny", "remove", "ip", ATTACKER]));
    f.until(a, "the removal reaching A", |f| {
        !has(&f.denies(a), ATTACKER)
    });
    f.until(c, "the removal reaching C", |f| {
        !has(&f.denies(c), ATTACKER)
    });
    f.pair
        .assert_pings(ATTACKER, SERVER_V4, 2, 2, "lifted everywhere");
    f.converged("after the removal");

    // Secrets travel as digests only; every host blocks the token.
    ok(&f.agents[a].cli(&["deny", "add", "token", "stolen-token-1"]));
    f.until(b, "the token reaching B", |f| {
        f.agents[b]
            .entries("deny")
            .iter()
            .any(|e| e.kind.as_str() == "token")
    });
    let dump = f.redis.text(&["--scan", "--pattern", "*"]);
    assert!(dump.contains(&f.name), "{dump}");
    for key in dump.lines() {
        let key = key.trim().trim_matches('"');
        let kind = f.redis.text(&["TYPE", key]);
        let content = match kind.trim() {
            "hash" => f.redis.text(&["HGETALL", key]),
            "stream" => f.redis.text(&["XRANGE", key, "-", "+"]),
            _ => f.redis.text(&["GET", key]),
        };
        assert!(!content.contains("stolen-token-1"), "{key}: {content}");
    }

    // TTLs expire everywhere, each host on its own.
    ok(&f.agents[a].cli(&["deny", "add", "ip", CLIENT_V4[2], "--ttl", "2s"]));
    f.until(c, "the TTL entry reaching C", |f| {
        has(&f.denies(c), CLIENT_V4[2])
    });
    f.until(c, "expiry on C", |f| !has(&f.denies(c), CLIENT_V4[2]));
    f.until(b, "expiry on B", |f| !has(&f.denies(b), CLIENT_V4[2]));

    // A local expiry is nobody else's business: A's 2 s entry, listed for good by B after
    // it, stays on every host once A's own row expires.
    ok(&f.agents[a].cli(&["deny", "add", "ip", "198.18.7.1", "--ttl", "2s"]));
    f.until(b, "A's entry reaching B", |f| {
        has(&f.denies(b), "198.18.7.1")
    });
    ok(&f.agents[b].cli(&["deny", "add", "ip", "198.18.7.1"]));
    f.until(a, "A's own row expiring", |f| {
        f.agents[a]
            .entries_from("deny", "manual")
            .iter()
            .all(|e| !e.value.starts_with("198.18.7.1"))
    });
    std::thread::sleep(Duration::from_millis(500));
    for i in [a, b, c] {
        assert!(has(&f.denies(i), "198.18.7.1"), "host {i} lost B's entry");
    }
    // A feed letting go withdraws only its own record: C's entry for the same address stays.
    let feed = f.dirs[a].root.join("feed.txt");
    std::fs::write(&feed, "198.18.7.2\n").expect("feed");
    let feed = feed.display().to_string();
    ok(&f.agents[a].cli(&["deny", "import", &feed, "--source", "abs"]));
    f.until(c, "A's feed entry reaching C", |f| {
        has(&f.denies(c), "198.18.7.2")
    });
    ok(&f.agents[c].cli(&["deny", "add", "ip", "198.18.7.2"]));
    f.converged("C's own entry published");
    ok(&f.agents[a].cli(&["deny", "remove", "ip", "198.18.7.2", "--source", "abs"]));
    f.converged("after the feed let go");
    for i in [a, b, c] {
        assert!(has(&f.denies(i), "198.18.7.2"), "host {i} lost C's entry");
    }

    // Allow beats deny fleet-wide: allowed on B, denied on A, passed by C's XDP.
    ok(&f.agents[b].cli(&["allow", "add", "ip", ATTACKER]));
    ok(&f.agents[a].cli(&["deny", "add", "ip", ATTACKER]));
    f.until(c, "both reaching C", |f| {
        has(&f.denies(c), ATTACKER)
            && f.agents[c]
                .entries("allow")
                .iter()
                .any(|e| has(std::slice::from_ref(&e.value), ATTACKER))
    });
    f.pair
        .assert_pings(ATTACKER, SERVER_V4, 2, 2, "allowed on B beats denied on A");
    let digest = f.converged("allow and deny");

    // Garbage in the log: skipped and counted, and the consumer goes on.
    let log = format!("portcullis:{{{}}}:log", f.name);
    for fields in [
        vec!["o", "a", "r", "not json"],
        vec![
            "o",
            "a",
            "r",
            r#"["deny","ip","","198.18.0.300","","manual","x","",0,null]"#,
        ],
        vec![
            "o",
            "a",
            "r",
            r#"["deny","token","","clear-text-secret","","manual","x","",0,null]"#,
        ],
        vec![
            "o",
            "a",
            "r",
            r#"["deny","ip","","0.0.0.0/0","","manual","x","",0,null]"#,
        ],
        vec!["what", "ever"],
    ] {
        // Numbered as the publish script numbers records, so each reaches the record
        // checks; one more carries no number at all.
        let seq_key = format!("portcullis:{{{}}}:seq", f.name);
        let seq = f.redis.text(&["INCR", &seq_key]);
        let seq = seq.trim().trim_start_matches("(integer) ").to_owned();
        let mut args = vec!["XADD", log.as_str(), "*"];
        args.extend(fields);
        args.extend(["s", seq.as_str()]);
        f.redis.text(&args);
    }
    f.redis.text(&["XADD", &log, "*", "o", "a", "r", "[]"]);
    ok(&f.agents[a].cli(&["deny", "add", "ip", "198.18.0.99"]));
    for i in [b, c] {
        f.until(i, "a good record after garbage", |f| {
            has(&f.denies(i), "198.18.0.99")
        });
        let s = f.state(i);
        assert!(s.skipped >= 5, "{s:?}");
        assert!(
            s.refused >= 1,
            "0.0.0.0/0 refused by the safety rules: {s:?}"
        );
        assert!(!has(&f.denies(i), "0.0.0.0/0"));
    }
    assert_ne!(f.converged("after garbage"), digest);
    let status = f.agents[c].status();
    let fleet = status.fleet.expect("fleet in status");
    assert_eq!(fleet.state, "in sync");
    assert!(!fleet.redis.contains("fleet-pw-1"), "{fleet:?}");

    // A wrong password: the agent starts, says why it is not in the fleet, and never
    // shows the password.
    let dirs = AgentDirs::new();
    let wrong = Agent::start(
        &dirs,
        &AgentOpts {
            netns: Some(f.pair.server.clone()),
            config: format!(
                "[fleet]\nredis = \"redis://portcullis:wrong-pw@127.0.0.1:{}\"\nname = \"{}\"\n",
                f.redis.port, f.name
            ),
            ..AgentOpts::default()
        },
    )
    .expect("starts without Redis");
    let deadline = Instant::now() + Duration::from_secs(10);
    let state = loop {
        let s: FleetState = answer(&wrong.cli(&["fleet", "status", "--json"]));
        if s.last_error.is_some() || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(state.state, "unreachable", "{state:?}");
    let why = state.last_error.unwrap_or_default();
    assert!(why.to_lowercase().contains("authentication"), "{why}");
    assert!(!format!("{:?}", wrong.status()).contains("wrong-pw"));
}

/// Sends `sig` to agent `i` (SIGSTOP and SIGCONT freeze and thaw it).
fn signal(f: &Fleet, i: usize, sig: i32) {
    let pid = f.agents[i].pid().expect("running") as i32;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

/// `tc` on the server namespace's loopback.
fn tc(f: &Fleet, args: &str) {
    let mut full = vec!["netns", "exec", f.pair.server.as_str(), "tc"];
    full.extend(args.split(' '));
    let out = std::process::Command::new("ip")
        .args(&full)
        .output()
        .expect("tc");
    assert!(out.status.success(), "tc {args}: {out:?}");
}

/// Puts traffic to and from 127.0.0.2 (B's way to Redis) through an htb class of `rate`
/// with a `queue`-packet FIFO.
fn shape(f: &Fleet, rate: &str, queue: u32) {
    tc(f, "qdisc add dev lo root handle 1: htb default 10 r2q 1");
    tc(f, "class add dev lo parent 1: classid 1:10 htb rate 10gbit");
    tc(
        f,
        &format!("class add dev lo parent 1: classid 1:30 htb rate {rate} ceil {rate}"),
    );
    tc(
        f,
        &format!("qdisc add dev lo parent 1:30 handle 30: pfifo limit {queue}"),
    );
    for dir in ["dst", "src"] {
        tc(
            f,
            &format!(
                "filter add dev lo parent 1: protocol ip prio 1 u32 match ip {dir} 127.0.0.2/32 flowid 1:30"
            ),
        );
    }
}

fn log_info(f: &Fleet, field: &str) -> String {
    let info = f
        .redis
        .text(&["XINFO", "STREAM", &format!("portcullis:{{{}}}:log", f.name)]);
    let mut lines = info.lines();
    while let Some(l) = lines.next() {
        if l.contains(&format!("\"{field}\"")) {
            return lines
                .next()
                .unwrap_or("")
                .split_once(')')
                .map_or("", |(_, v)| v)
                .trim()
                .trim_matches('"')
                .to_owned();
        }
    }
    panic!("{field} missing from {info}")
}

fn id(s: &str) -> (u64, u64) {
    let (a, b) = s.split_once('-').unwrap_or((s, "0"));
    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
}

#[test]
fn every_host_comes_back_to_the_fleets_list_after_each_fault() {
    privileged!();
    let mut f = Fleet::new(true, false);
    let (a, b, c) = (0, 1, 2);
    f.agents[a].add("deny", &[&["ip", "198.18.1.1"], &["ip", "198.18.1.2"]]);
    f.converged("seeded");

    // An agent killed with SIGKILL while changes flow, some of them its own.
    for i in 0..5 {
        ok(&f.agents[b].cli(&["deny", "add", "ip", &format!("198.18.5.{i}")]));
    }
    f.agents[b].kill9();
    for i in 0..20 {
        ok(&f.agents[a].cli(&["deny", "add", "ip", &format!("198.18.2.{i}")]));
    }
    ok(&f.agents[a].cli(&["deny", "remove", "ip", "198.18.1.1"]));
    f.agents[b] = f.start(b);
    f.converged("after B was killed");
    for i in [a, b, c] {
        let d = f.denies(i);
        assert!(!has(&d, "198.18.1.1"), "deleted while B was down");
        assert!(has(&d, "198.18.2.19") && has(&d, "198.18.5.4"), "{d:?}");
    }

    // Redis killed with its append-only file: same epoch, changes made meanwhile queue and
    // go out when it is back.
    let epoch = f.state(a).epoch;
    f.redis.kill9();
    ok(&f.agents[a].cli(&["deny", "add", "ip", "198.18.3.1"]));
    ok(&f.agents[c].cli(&["deny", "remove", "ip", "198.18.1.2"]));
    f.until(a, "A noticing Redis is gone", |f| {
        f.state(a).state == "unreachable"
    });
    assert!(f.state(a).queued >= 1, "queued while Redis is away");
    f.pair
        .assert_pings(ATTACKER, SERVER_V4, 1, 1, "enforcement goes on untouched");
    f.redis.restart().expect("redis back");
    f.converged("after Redis was killed with AOF");
    assert_eq!(f.state(a).epoch, epoch, "nothing lost: same epoch");
    for i in [a, b, c] {
        let d = f.denies(i);
        assert!(has(&d, "198.18.3.1") && !has(&d, "198.18.1.2"), "{d:?}");
    }

    // B's queue overflowing while Redis is away: back, it starts a new epoch and every host
    // rebuilds from its own rows; nothing B listed meanwhile is lost.
    f.redis.kill9();
    let list = f.dirs[b].root.join("overflow.txt");
    let lines: String = (0..1500)
        .map(|i| format!("198.18.{}.{}\n", 60 + i / 250, i % 250))
        .collect();
    std::fs::write(&list, lines).expect("write");
    ok(&f.agents[b].cli(&["deny", "import", &list.display().to_string()]));
    f.until(b, "B's queue overflowing", |f| f.state(b).overflowed);
    f.redis.restart().expect("redis back");
    f.converged("after B's queue overflowed");
    assert_ne!(f.state(a).epoch, epoch, "the overflow started a new epoch");
    for i in [a, b, c] {
        let d = f.denies(i);
        assert!(
            has(&d, "198.18.65.249") && has(&d, "198.18.3.1"),
            "host {i}"
        );
    }
    let epoch = f.state(a).epoch;

    // Redis killed without it and restarted empty: a new epoch, every host rebuilds from
    // every host's own entries; one deleted during the outage stays deleted.
    f.redis.kill9();
    f.redis.aof = false;
    ok(&f.agents[a].cli(&["deny", "remove", "ip", "198.18.3.1"]));
    f.redis.restart().expect("redis back, empty");
    let digest = f.converged("after Redis came back empty");
    assert_ne!(f.state(a).epoch, epoch, "a new epoch");
    for i in [a, b, c] {
        let d = f.denies(i);
        assert!(!has(&d, "198.18.3.1"), "deleted during the outage: {d:?}");
        assert!(has(&d, "198.18.2.19") && has(&d, "198.18.5.4"), "{d:?}");
    }

    // C frozen while the log is trimmed past it: on waking it resyncs exactly.
    let resyncs = f.state(c).resyncs;
    let at = f.state(c).position;
    signal(&f, c, libc::SIGSTOP);
    let list = f.dirs[a].root.join("many.txt");
    let lines: String = (0..3000)
        .map(|i| format!("198.18.{}.{}\n", 100 + i / 250, i % 250))
        .collect();
    std::fs::write(&list, lines).expect("write");
    ok(&f.agents[a].cli(&["deny", "import", &list.display().to_string()]));
    ok(&f.agents[b].cli(&["deny", "remove", "ip", "198.18.2.0"]));
    f.until(a, "the import published", |f| f.state(a).queued == 0);
    assert!(
        id(&log_info(&f, "recorded-first-entry-id")) > id(&at),
        "the log was trimmed past C ({at}): {}",
        f.redis
            .text(&["XINFO", "STREAM", &format!("portcullis:{{{}}}:log", f.name)])
    );
    signal(&f, c, libc::SIGCONT);
    let after = f.converged("after C slept past the trim point");
    assert_ne!(after, digest);
    assert!(f.state(c).resyncs > resyncs, "C resynced");
    assert!(!has(&f.denies(c), "198.18.2.0"));
    assert!(has(&f.denies(c), "198.18.111.249"));

    // B cut off, then on a slow lossy link: it enforces what it has, catches up after.
    // (This kernel has no netem: an htb class with a zero-length queue cuts
    // the link; one with little rate and a short queue delays and tail-drops.)
    shape(&f, "8bit", 0);
    ok(&f.agents[a].cli(&["deny", "add", "ip", "198.18.4.1"]));
    ok(&f.agents[b].cli(&["deny", "add", "ip", "198.18.4.2"]));
    ok(&f.agents[a].cli(&["deny", "remove", "ip", "198.18.2.1"]));
    f.until(c, "A's change reaching C", |f| {
        has(&f.denies(c), "198.18.4.1")
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(!has(&f.denies(b), "198.18.4.1"), "B is cut off");
    assert!(!has(&f.denies(c), "198.18.4.2"), "B is cut off");
    tc(&f, "qdisc del dev lo root");
    shape(&f, "200kbit", 4);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(has(&f.denies(c), "198.18.4.2") && has(&f.denies(b), "198.18.4.1")) {
        assert!(
            Instant::now() < deadline,
            "B never caught up: {:?}",
            f.state(b)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    tc(&f, "qdisc del dev lo root");
    f.converged("after the partition");
    for i in [a, b, c] {
        assert!(!has(&f.denies(i), "198.18.2.1"));
    }
}
