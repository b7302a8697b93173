//! The ABS feed against a real HTTP server playing ABS: snapshots mirrored as diffs, removals
//! that keep other sources' entries, every failure mode keeping the last good list, the push
//! path, detections reported back, and end to end from ABS listing an IP to its packets
//! dropped by XDP and from ABS listing a token to 403 at the checker.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use portcullis::control::answer::{AbsState, EntryView};
use portcullis_tests::agent::{Agent, AgentDirs, AgentOpts, answer, err, ok};
use portcullis_tests::checker_setup::{shop_backend, write_api};
use portcullis_tests::fake_abs::{Answer, FakeAbs};
use portcullis_tests::kernel_check::assert_kernel_matches_lists;
use portcullis_tests::netns::{CLIENT_V4, NetnsPair, SERVER_V4, in_netns};
use portcullis_tests::privileged;

fn abs_rows(agent: &Agent) -> Vec<String> {
    let entries: Vec<EntryView> =
        answer(&agent.cli(&["deny", "list", "--source", "abs", "--json"]));
    entries
        .iter()
        .map(|e| format!("{} {}", e.kind.as_str(), e.value))
        .collect()
}

/// The ABS feed's state in `status`.
fn abs_state(agent: &Agent) -> AbsState {
    agent.status().abs.expect("status shows the ABS feed")
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn abs_config(dirs: &AgentDirs, url: &str) -> String {
    portcullis_tests::fake_abs::agent_config(
        dirs,
        url,
        "timeout = \"2s\"\nmax_body_bytes = 1000000\n",
    )
}

#[test]
fn mirror_failures_push_and_reporting() {
    privileged!();
    let abs = FakeAbs::start(TcpListener::bind("127.0.0.1:0").expect("bind"));
    let dirs = AgentDirs::new();
    let (_backend, apis) = shop_backend(
        &dirs,
        r#""oauth2_access_token":true,"decoy_config":{"decoy_enabled":true,"decoy_subpaths":["admin"]}"#,
    );
    let http = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let config = format!(
        "{}[checker]\nhttp = \"127.0.0.1:{http}\"\napi_dir = \"{}\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        abs_config(&dirs, &abs.url()),
        apis.display()
    );
    let agent = Agent::with_config(&dirs, config).expect("agent");
    let curl = |token: &str, path: &str, xff: &str| {
        let (auth, from) = (
            format!("Authorization: Bearer {token}"),
            format!("X-Forwarded-For: {xff}"),
        );
        let url = format!("http://127.0.0.1:{http}{path}");
        portcullis_tests::http::curl_status(&url, &["-H", &auth, "-H", &from])
    };
    let expect_answer = |token: &str, from: &str, want: u16, why: &str| {
        let got = curl(token, "/shop/x", from);
        assert_eq!(got, want, "token {token} from {from}: {why}");
    };

    abs.set(Answer::Json(
        r#"{"attacklist":{"ips":["198.18.70.1","198.18.71.0/24",{"value":"198.18.72.1","ttl":3600},"0.0.0.0/0","not-an-ip"],
            "oauth_tokens":["stolen-token"],"cookies":{"JSESSIONID":["sess-1"]},"usernames":["mallory"],"devices":["x"]}}"#
            .into(),
    ));
    wait_for("the first ABS snapshot", || abs_rows(&agent).len() == 6);
    let polls = abs.requests("GET /v4/abs/attacklist?earlier_date=");
    assert!(!polls.is_empty());
    assert!(polls[0].line.contains("&status=active"), "{:?}", polls[0]);
    assert!(
        polls[0].headers.contains(&"x-abs-ak: ak-1".to_string())
            && polls[0]
                .headers
                .contains(&"x-abs-sk: s3cret-sk".to_string()),
        "{:?}",
        polls[0]
    );
    assert!(
        !agent.log_text().contains("s3cret-sk"),
        "the secret key is never logged"
    );
    expect_answer(
        "stolen-token",
        "198.18.9.9",
        403,
        "ABS-listed token refused at the checker",
    );
    expect_answer(
        "fine-token",
        "198.18.70.1",
        403,
        "ABS-listed IP refused at L7 too",
    );
    expect_answer("fine-token", "198.18.9.9", 200, "neither listed");
    let status = agent.status();
    let feed = status.abs.as_ref().expect("status shows the ABS feed");
    assert_eq!(feed.listed, 8, "{status:?}");
    assert!(
        feed.skipped >= 2,
        "0.0.0.0/0 and not-an-ip skipped: {status:?}"
    );
    assert!(feed.unknown_types >= 1, "{status:?}");
    assert_eq!(status.kernel_ip_entries, 3);
    assert_kernel_matches_lists(&agent, &dirs);

    // An operator also denies one of ABS's IPs; then ABS stops listing it and the token.
    ok(&agent.cli(&[
        "deny",
        "add",
        "ip",
        "198.18.70.1",
        "--reason",
        "seen it too",
    ]));
    abs.set(Answer::Json(r#"{"attacklist":{"ips":["198.18.71.0/24",{"value":"198.18.72.1","ttl":3600}],"cookies":{"JSESSIONID":["sess-1"]},"usernames":["mallory"]}}"#.into()));
    wait_for("the removal", || abs_rows(&agent).len() == 4);
    expect_answer("stolen-token", "198.18.9.9", 200, "token no longer listed");
    expect_answer(
        "fine-token",
        "198.18.70.1",
        403,
        "the operator's entry stays",
    );
    let manual: Vec<EntryView> =
        answer(&agent.cli(&["deny", "list", "--source", "manual", "--json"]));
    assert_eq!(manual.len(), 1);

    // Every failure keeps the last good list.
    let before = abs_rows(&agent);
    let failures = |agent: &Agent| abs_state(agent).failures;
    // Each failure mode is recognised as itself (status names it), not just "some error".
    for (bad, want) in [
        (Answer::Status(503), "answered HTTP 503"),
        (
            Answer::Garbage("{\"attacklist\": {\"ips\": [\"198.18.".into()),
            "EOF while parsing",
        ),
        (
            Answer::Garbage("<html>maintenance</html>".into()),
            "expected value at line 1 column 1",
        ),
        (
            Answer::Json("{\"something\":\"else\"}".into()),
            "attacklist",
        ),
        (
            Answer::Slow(Duration::from_secs(4), "{\"attacklist\":{}}".into()),
            "did not answer within",
        ),
        (Answer::Huge(2_000_000), "larger than 1000000 bytes"),
    ] {
        let f0 = failures(&agent);
        abs.set(bad.clone());
        wait_for(&format!("a failed poll on {bad:?}"), || {
            failures(&agent) > f0
        });
        assert_eq!(abs_rows(&agent), before, "{bad:?} changed the list");
        let err = abs_state(&agent).last_error.unwrap_or_default();
        assert!(
            err.contains(want),
            "{bad:?}: recorded {err:?}, expected {want:?}"
        );
    }
    expect_answer(
        "fine-token",
        "198.18.71.5",
        403,
        "still enforced after the failures",
    );

    // Push path: immediate, same semantics.
    let line = portcullis_tests::agent::control_line(
        &dirs.socket(),
        r#"{"op":"abs-push","add":[{"kind":"ip","name":null,"value":"198.18.73.1","ttl":null}],"remove":[{"kind":"username","name":null,"value":"mallory","ttl":null}]}"#,
    );
    assert!(
        line.contains("\"ok\":true")
            && line.contains("\"added\":1")
            && line.contains("\"removed\":1"),
        "{line}"
    );
    let rows = abs_rows(&agent);
    assert!(
        rows.contains(&"ip 198.18.73.1/32".to_string())
            && !rows.iter().any(|r| r.contains("mallory")),
        "{rows:?}"
    );

    // A detection is reported to ABS.
    abs.set(Answer::Json(
        r#"{"attacklist":{"ips":["198.18.71.0/24"]}}"#.into(),
    ));
    assert_eq!(
        curl("fine-token", "/shop/admin", "198.18.74.1"),
        200,
        "decoy answer"
    );
    wait_for("the detection report", || {
        abs.requests("POST /v4/abs/detections")
            .iter()
            .any(|r| r.body.contains("198.18.74.1"))
    });
    let report = &abs.requests("POST /v4/abs/detections")[0];
    assert!(
        report.body.contains("decoy") && report.headers.contains(&"x-abs-ak: ak-1".to_string()),
        "{report:?}"
    );
}

/// The minutes since 1970 of an ABS date (`YYYY-MM-DDTHH:MM`), through `date`.
fn abs_minutes(date: &str) -> i64 {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &date.replace('T', " "), "+%s"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<i64>()
        .unwrap_or_else(|_| panic!("{date:?} is not a date"))
        / 60
}

/// What ABS's answer cannot prove is gone is not lifted: an answer with items Portcullis
/// cannot read removes nothing; one that would remove more than half the list at once is
/// applied when the next poll asks for the same. The query carries ABS's date window, the
/// list reads without its envelope, and nothing is reported to ABS unless asked.
#[test]
fn what_an_answer_cannot_prove_gone_stays_listed() {
    privileged!();
    let abs = FakeAbs::start(TcpListener::bind("127.0.0.1:0").expect("bind"));
    let dirs = AgentDirs::new();
    let config = abs_config(&dirs, &abs.url()).replace("report = true\n", "");
    let agent = Agent::with_config(&dirs, config).expect("agent");
    let four =
        r#"{"ips":["198.18.74.1","198.18.74.2","198.18.74.3","198.18.74.4"],"message":"ok"}"#;
    abs.set(Answer::Json(four.into()));
    wait_for("the bare list", || abs_rows(&agent).len() == 4);

    // One item of a shape it cannot read: the others may be what it lacks. Nothing goes.
    abs.set(Answer::Json(
        r#"{"attacklist":{"ips":["198.18.74.1",{"address":"198.18.74.2"}]}}"#.into(),
    ));
    wait_for("the unreadable answer", || {
        let s = abs_state(&agent);
        s.unreadable == 1 && s.removals_held == 3 && !s.shrink_held
    });
    assert_eq!(
        abs_rows(&agent).len(),
        4,
        "an unreadable answer removed rows"
    );
    // The same under an identifier type it does not know.
    abs.set(Answer::Json(
        r#"{"attacklist":{"ips":["198.18.74.1"],"ipv6_ranges":["2001:db8::/48"]}}"#.into(),
    ));
    wait_for("the unknown type", || abs_state(&agent).unknown_types >= 1);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        abs_rows(&agent).len(),
        4,
        "an unknown type's answer removed rows"
    );

    // Readable, but three of four gone: held one poll, then confirmed and applied.
    abs.set(Answer::Json(
        r#"{"attacklist":{"ips":["198.18.74.1"]}}"#.into(),
    ));
    wait_for("the held shrink", || abs_state(&agent).shrink_held);
    assert_eq!(
        abs_rows(&agent).len(),
        4,
        "a halving answer applied at once"
    );
    wait_for("the confirmed shrink", || abs_rows(&agent).len() == 1);
    assert!(!abs_state(&agent).shrink_held);

    // The window: a year back, to a minute ahead, in ABS's format.
    let poll = &abs.requests("GET /v4/abs/attacklist?")[0].line;
    let field = |name: &str| {
        poll.split(['?', '&', ' '])
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {poll}"))
            .to_owned()
    };
    let (earlier, later) = (
        abs_minutes(&field("earlier_date")),
        abs_minutes(&field("later_date")),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
        / 60;
    assert!((later - now - 1).abs() <= 2, "{poll}");
    assert_eq!(later - earlier, 365 * 24 * 60 + 1, "{poll}");
    assert!(
        abs.requests("POST").is_empty(),
        "reported without report = true"
    );
}

#[test]
fn abs_listing_an_ip_gets_it_dropped_by_xdp() {
    let pair = privileged!(NetnsPair::new().expect("namespaces"));
    let abs = in_netns(&pair.server, || {
        FakeAbs::start(TcpListener::bind("127.0.0.1:0").expect("bind"))
    })
    .expect("netns");
    let dirs = AgentDirs::new();
    let config = abs_config(&dirs, &abs.url());
    let opts = AgentOpts {
        config,
        ..AgentOpts::on_server(&pair)
    };
    let agent = Agent::start(&dirs, &opts).expect("agent");
    let [attacker, other, _] = CLIENT_V4;
    assert_eq!(pair.ping(attacker, SERVER_V4, 2).expect("ping"), 2);
    let t = Instant::now();
    abs.set(Answer::Json(format!(
        r#"{{"attacklist":{{"ips":["{attacker}"]}}}}"#
    )));
    wait_for("ABS's IP to be enforced", || {
        pair.ping(attacker, SERVER_V4, 1)
            .map(|n| n == 0)
            .unwrap_or(false)
    });
    eprintln!("ABS change to enforcement: {:?} (poll 1 s)", t.elapsed());
    // One lost ping proves little: every one of the next three is dropped, by XDP.
    let dropped = || agent.xdp_packets("drop_denied");
    let before = dropped();
    assert_eq!(pair.ping(attacker, SERVER_V4, 3).expect("ping"), 0);
    assert_eq!(dropped() - before, 3, "dropped in XDP");
    assert_eq!(pair.ping(other, SERVER_V4, 2).expect("ping"), 2);
    abs.set(Answer::Json(r#"{"attacklist":{"ips":[]}}"#.into()));
    wait_for("ABS's removal to be enforced", || {
        pair.ping(attacker, SERVER_V4, 1)
            .map(|n| n == 1)
            .unwrap_or(false)
    });
    assert_eq!(pair.ping(attacker, SERVER_V4, 3).expect("ping"), 3);
}

/// ABS over HTTPS verified with its CA file; an identifier ABS keeps listing is never
/// un-enforced while the rest of the list changes under it, in the store or in the kernel;
/// and detection reports wait in a bounded queue while ABS refuses them.
#[test]
fn https_with_a_ca_nothing_blinks_and_reports_are_bounded() {
    privileged!();
    let dirs = AgentDirs::new();
    let certs = portcullis_tests::tls::self_signed(&dirs.root, "127.0.0.1", "abs").expect("certs");
    let abs = FakeAbs::start_tls(
        TcpListener::bind("127.0.0.1:0").expect("bind"),
        &certs.cert,
        &certs.key,
    );
    assert!(abs.url().starts_with("https://"));
    let stay = "198.18.80.1";
    // Odd shifts list `stay` through its covering /24 instead of itself: the /32 row goes
    // and the /24 comes in one diff, which must write the new one before removing the old.
    let list = |shift: u32| {
        let others: Vec<String> = (0..50)
            .map(|i| format!("\"198.18.81.{}\"", (i + shift) % 250))
            .collect();
        let own = if shift % 2 == 1 {
            "198.18.80.0/24"
        } else {
            stay
        };
        Answer::Json(format!(
            r#"{{"attacklist":{{"ips":["{own}",{}]}}}}"#,
            others.join(",")
        ))
    };
    abs.set(list(0));
    let (_backend, apis) = shop_backend(
        &dirs,
        r#""decoy_config":{"decoy_enabled":true,"decoy_subpaths":["admin"]}"#,
    );
    let http: std::net::SocketAddr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let config = format!(
        "{}ca_file = \"{}\"\nreport_queue = 5\n[checker]\nhttp = \"{http}\"\napi_dir = \"{}\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        abs_config(&dirs, &abs.url()),
        certs.ca.display(),
        apis.display()
    );
    let agent = Agent::with_config(&dirs, config).expect("agent");
    wait_for("the first snapshot over HTTPS", || {
        abs_rows(&agent).len() == 51
    });

    // The list shifts every 300 ms for 4 s; `stay` must hold in the kernel all along.
    let ip: std::net::IpAddr = stay.parse().expect("ip");
    let polls0 = abs.requests("GET /v4/abs/attacklist").len();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (samples, gaps) = std::thread::scope(|scope| {
        // Probes run the XDP program itself on the agent's pinned maps (BPF_PROG_TEST_RUN),
        // so each sample sees what a packet arriving at that instant would.
        let sampler = scope.spawn(|| {
            let mut probe = portcullis::kernel::Filter::load(&portcullis::kernel::LoadOptions {
                pin_dir: Some(dirs.pins.0.clone()),
                ..portcullis::kernel::LoadOptions::default()
            })
            .expect("load a probe program on the pinned maps");
            let std::net::IpAddr::V4(v4) = ip else {
                unreachable!("an IPv4 address")
            };
            let frame = portcullis_tests::frames::ipv4(v4, &[], 0);
            let (mut samples, mut gaps) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let action = probe
                    .test_run(portcullis::kernel::PROGRAM, &frame)
                    .expect("test run");
                samples += 1;
                if action != 1 {
                    gaps += 1; // not XDP_DROP
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            (samples, gaps)
        });
        for shift in 1..=13 {
            abs.set(list(shift * 7));
            std::thread::sleep(Duration::from_millis(300));
            let rows = abs_rows(&agent);
            assert!(
                rows.contains(&format!("ip {stay}/32"))
                    || rows.contains(&"ip 198.18.80.0/24".to_string()),
                "{stay} left the store during the diff: {rows:?}"
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sampler.join().expect("sampler")
    });
    assert!(
        abs.requests("GET /v4/abs/attacklist").len() >= polls0 + 3,
        "the agent polled through the changes"
    );
    assert!(samples > 1000, "only {samples} kernel samples");
    assert_eq!(
        gaps, 0,
        "{stay} un-enforced in {gaps} of {samples} kernel samples"
    );

    // Reports: ABS refuses them; 12 detections queue in a queue of 5, the oldest dropped.
    abs.set_report_status(503);
    for i in 0..12 {
        let (code, _) = portcullis_tests::http::get(
            http,
            "/shop/admin",
            &[("X-Forwarded-For", &format!("198.18.82.{i}"))],
        )
        .expect("decoy");
        assert_eq!(code, 200);
    }
    let feed = abs_state(&agent);
    assert_eq!(
        (feed.report_dropped, feed.report_queued),
        (7, 5),
        "{feed:?}"
    );
    let refused = abs.requests("POST /v4/abs/detections").len();
    abs.set_report_status(200);
    wait_for("the queued reports", || {
        abs_state(&agent).report_queued == 0
    });
    let sent: Vec<String> = abs.requests("POST /v4/abs/detections")[refused..]
        .iter()
        .map(|r| r.body.clone())
        .collect();
    let reported: Vec<u32> = (0..12)
        .filter(|i| sent.iter().any(|b| b.contains(&format!("198.18.82.{i}/"))))
        .collect();
    assert_eq!(
        reported,
        (7..12).collect::<Vec<_>>(),
        "the newest five, once ABS took them"
    );
}

/// ABS (an automatic source) can never deny-list what this host depends on: its resolvers,
/// its default gateway, the API servers behind the checker. The operator can.
#[test]
fn abs_cannot_cut_the_host_off_its_infrastructure() {
    privileged!();
    let mut protected: Vec<String> = portcullis::infrastructure::addresses()
        .expect("readable")
        .iter()
        .map(|a| a.to_string())
        .collect();
    protected.push("198.18.99.1".into()); // the API server below
    let abs = FakeAbs::start(TcpListener::bind("127.0.0.1:0").expect("bind"));
    let dirs = AgentDirs::new();
    let apis = dirs.root.join("apis");
    write_api(
        &apis,
        "shop",
        r#"{"url":"/shop","servers":[{"host":"198.18.99.1","port":8080}]}"#,
    );
    let http = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let config = format!(
        "{}[checker]\nhttp = \"{http}\"\napi_dir = \"{}\"\n",
        abs_config(&dirs, &abs.url()),
        apis.display()
    );
    let agent = Agent::with_config(&dirs, config).expect("agent");
    let listed: Vec<String> = protected
        .iter()
        .chain(std::iter::once(&"198.18.99.2".to_string()))
        .map(|a| format!("\"{a}\""))
        .collect();
    abs.set(Answer::Json(format!(
        r#"{{"attacklist":{{"ips":[{}]}}}}"#,
        listed.join(",")
    )));
    wait_for("the ABS sync", || !abs_rows(&agent).is_empty());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        abs_rows(&agent),
        ["ip 198.18.99.2/32"],
        "protected {protected:?} were deny-listed"
    );
    let feed = abs_state(&agent);
    assert!(feed.skipped >= protected.len() as u64, "{feed:?}");
    // The operator still can.
    ok(&agent.cli(&["deny", "add", "ip", "198.18.99.1"]));
}

/// What the safety rules protect follows the host while the agent runs: an address added
/// later is this host's own (the operator needs `--force`), a default gateway set later is
/// infrastructure (ABS can never deny it), and ABS's entry for it from before is lifted.
#[test]
fn protection_follows_the_host_as_it_changes() {
    let pair = privileged!(NetnsPair::new().expect("namespaces"));
    let abs = in_netns(&pair.server, || {
        FakeAbs::start(TcpListener::bind("127.0.0.1:0").expect("bind"))
    })
    .expect("netns");
    let dirs = AgentDirs::new();
    // (Test agents prune, and so read the host again, every second.)
    let opts = AgentOpts {
        config: abs_config(&dirs, &abs.url()),
        ..AgentOpts::on_server(&pair)
    };
    let agent = Agent::start(&dirs, &opts).expect("agent");
    let [gateway, attacker, _] = CLIENT_V4;
    let added = "198.18.88.1";
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(["-n", &pair.server])
            .args(args)
            .output()
            .expect("ip");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    // ABS denies the gateway-to-be, then fails: its last list stays enforced.
    abs.set(Answer::Json(format!(
        r#"{{"attacklist":{{"ips":["{gateway}"]}}}}"#
    )));
    wait_for("the ABS sync", || !abs_rows(&agent).is_empty());
    abs.set(Answer::Status(503));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(abs_rows(&agent), [format!("ip {gateway}/32")]);
    ip(&["addr", "add", &format!("{added}/32"), "dev", "lo"]);
    ip(&["route", "add", "default", "via", gateway]);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        abs_rows(&agent).is_empty(),
        "ABS's entry for the new gateway was not lifted: {:?}",
        abs_rows(&agent)
    );
    assert_kernel_matches_lists(&agent, &dirs);
    let e = err(&agent.cli(&["deny", "add", "ip", added]));
    assert!(e.contains("own address"), "{e}");
    abs.set(Answer::Json(format!(
        r#"{{"attacklist":{{"ips":["{added}","{gateway}","{attacker}"]}}}}"#
    )));
    wait_for("the ABS sync", || !abs_rows(&agent).is_empty());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        abs_rows(&agent),
        [format!("ip {attacker}/32")],
        "ABS deny-listed what the host got after the agent started"
    );
}

/// Several ABS nodes, as ASE's comma-separated `abs_endpoint`: a poll goes to the node that
/// answered last and fails over to the next; with `restricted_keys` the keys go in the
/// restricted user's headers, and with `insecure_skip_verify` ABS's self-signed certificate
/// is taken without its CA.
#[test]
fn polls_fail_over_between_abs_nodes() {
    privileged!();
    let bind = || TcpListener::bind("127.0.0.1:0").expect("bind");
    let (a, b) = (FakeAbs::start(bind()), FakeAbs::start(bind()));
    a.set(Answer::Status(503));
    b.set(Answer::Json(
        r#"{"attacklist":{"ips":["198.18.83.1"]}}"#.into(),
    ));
    let dirs = AgentDirs::new();
    let config = abs_config(&dirs, &format!("{}, {}", a.url(), b.url()));
    let agent = Agent::with_config(&dirs, config).expect("agent");
    wait_for("the list from the second node", || {
        abs_rows(&agent) == ["ip 198.18.83.1/32"]
    });
    assert_eq!(abs_state(&agent).url, b.url());
    assert!(
        !a.requests("GET /v4/abs/attacklist").is_empty(),
        "tried first"
    );
    // Polls stay with the node that answers.
    let tried = a.requests("GET /v4/abs/attacklist").len();
    let polled = b.requests("GET /v4/abs/attacklist").len();
    wait_for("two more polls", || {
        b.requests("GET /v4/abs/attacklist").len() >= polled + 2
    });
    assert_eq!(a.requests("GET /v4/abs/attacklist").len(), tried);
    // The second node fails; the first is back, with one more item.
    a.set(Answer::Json(
        r#"{"attacklist":{"ips":["198.18.83.1","198.18.83.2"]}}"#.into(),
    ));
    b.set(Answer::Garbage("{\"attacklist\":{\"ips\":[".into()));
    wait_for("the list from the first node", || {
        abs_rows(&agent).len() == 2
    });
    assert_eq!(abs_state(&agent).url, a.url());
    // ASE's switch: ABS blocking off takes its rows away and polls add nothing back; on
    // again, the next poll restores them.
    let off = ok(&agent.cli(&["-u", "admin", "-p", "admin", "disable_abs_attack"]));
    assert_eq!(off, "abs: off (2 deny entries removed)\n");
    let polled = a.requests("GET /v4/abs/attacklist").len();
    wait_for("two polls while off", || {
        a.requests("GET /v4/abs/attacklist").len() >= polled + 2
    });
    assert!(abs_rows(&agent).is_empty());
    assert!(!agent.status().abs_blocking);
    ok(&agent.cli(&["switch", "abs", "on"]));
    wait_for("the list back", || abs_rows(&agent).len() == 2);
    drop(agent);

    // ABS's self-signed certificate without its CA, and the restricted user's headers.
    let dirs = AgentDirs::new();
    let certs = portcullis_tests::tls::self_signed(&dirs.root, "127.0.0.1", "abs").expect("certs");
    let abs = FakeAbs::start_tls(bind(), &certs.cert, &certs.key);
    abs.set(Answer::Json(
        r#"{"attacklist":{"ips":["198.18.83.3"]}}"#.into(),
    ));
    let config = format!(
        "{}restricted_keys = true\ninsecure_skip_verify = true\n",
        abs_config(&dirs, &abs.url())
    );
    let agent = Agent::with_config(&dirs, config).expect("agent");
    wait_for("the list over unverified TLS", || {
        abs_rows(&agent) == ["ip 198.18.83.3/32"]
    });
    let seen = abs.requests("GET /v4/abs/attacklist");
    let headers = seen[0].headers.join("\n").to_ascii_lowercase();
    assert!(
        headers.contains("x-abs-ak-ru: ak-1") && headers.contains("x-abs-sk-ru: s3cret-sk"),
        "{headers}"
    );
    assert!(!headers.contains("x-abs-ak:"), "{headers}");
    let log = agent.log_text();
    assert!(
        log.contains("abs.insecure_skip_verify is on") && log.contains("abs.restricted_keys is on"),
        "both warned about: {log}"
    );
}
