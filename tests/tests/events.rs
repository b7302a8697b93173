//! `portcullis events`: the live stream of sampled XDP drops (with the deny entry that
//! matched) and of the L7 checker's blocks and detections, as JSON and as text; Ctrl-C ends
//! it with status 0 and the agent carries on.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use portcullis_tests::agent::{Agent, AgentDirs, AgentOpts, ok, portcullis_bin};
use portcullis_tests::checker_setup::setup_apis;
use portcullis_tests::netns::{CLIENT_V4, NetnsPair, SERVER_V4};
use portcullis_tests::privileged;

/// A running `portcullis events` and its output, line by line.
struct Stream {
    child: Child,
    lines: Receiver<String>,
}

impl Stream {
    fn start(socket: &std::path::Path, json: bool) -> Self {
        let mut cmd = Command::new(portcullis_bin());
        cmd.arg("--socket").arg(socket).arg("events");
        if json {
            cmd.arg("--json");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("portcullis events");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        // The subscription exists once the agent answered; give it that moment.
        std::thread::sleep(Duration::from_millis(300));
        Self { child, lines }
    }

    /// Lines until `done` says enough, or 10 s.
    fn until(&self, mut done: impl FnMut(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while Instant::now() < deadline && !done(&got) {
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(100)) {
                got.push(l);
            }
        }
        got
    }

    /// Ctrl-C: the stream must end at once, with status 0.
    fn interrupt(mut self) {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().expect("wait") {
                assert_eq!(st.code(), Some(0), "Ctrl-C ends `events` cleanly");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("`portcullis events` did not end on Ctrl-C");
    }
}

fn json(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn drops_stream_with_interface_source_verdict_and_matched_entry() {
    let pair = privileged!(NetnsPair::new().expect("namespaces"));
    let dirs = AgentDirs::new();
    let opts = AgentOpts {
        config: "drop_sample_every = 1\nhit_counters = true\n".into(),
        ..AgentOpts::on_server(&pair)
    };
    let agent = Agent::start(&dirs, &opts).expect("agent");
    let [host, net_only, allowed] = CLIENT_V4;
    ok(&agent.cli(&["deny", "add", "ip", host]));
    ok(&agent.cli(&["deny", "add", "ip", "198.18.0.2/31"]));
    ok(&agent.cli(&["allow", "add", "ip", allowed]));
    let stream = Stream::start(&dirs.socket(), true);
    let text = Stream::start(&dirs.socket(), false);
    pair.assert_pings(host, SERVER_V4, 2, 0, "denied host");
    pair.assert_pings(net_only, SERVER_V4, 2, 0, "denied by the /31");
    let source_seen = |lines: &[String], ip: &str| lines.iter().any(|l| l.contains(ip));
    let lines = stream.until(|l| source_seen(l, host) && source_seen(l, net_only));
    let events = json(&lines);
    let drop_from = |ip: &str| {
        events
            .iter()
            .find(|e| e["type"] == "drop" && e["source"] == ip)
            .unwrap_or_else(|| panic!("no drop event from {ip}: {lines:#?}"))
            .clone()
    };
    let e = drop_from(host);
    assert_eq!(e["iface"], pair.server_if.as_str(), "{e}");
    assert_eq!(e["verdict"], "drop_denied", "{e}");
    assert_eq!(
        e["matched"], "198.18.0.2/32",
        "the most specific entry: {e}"
    );
    assert_eq!(e["sample_every"], 1, "{e}");
    assert_eq!(drop_from(net_only)["matched"], "198.18.0.2/31");
    let human = text.until(|l| source_seen(l, net_only));
    assert!(
        human.iter().any(|l| l.contains(&format!(
            " xdp  {} {net_only} dropped, deny 198.18.0.2/31",
            pair.server_if
        ))),
        "{human:#?}"
    );
    stream.interrupt();
    text.interrupt();
    // The kernel's hit counters, credited to the most specific entry of the deciding list:
    // exactly the packets each entry decided, most hit first, with the last hit.
    pair.assert_pings(allowed, SERVER_V4, 3, 3, "allowed");
    let hits_of = |list: &str| -> serde_json::Value {
        serde_json::from_str(&ok(&agent.cli(&[list, "list", "--hits", "--json"])))
            .expect("hits json")
    };
    let packets = |hits: &serde_json::Value, entry: &str| {
        hits.as_array()
            .expect("array")
            .iter()
            .find(|h| h["entry"] == entry)
            .and_then(|h| h["packets"].as_u64())
            .unwrap_or(0)
    };
    let settled = |list: &str, entry: &str, want: u64| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while packets(&hits_of(list), entry) < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    settled("deny", "198.18.0.2/31", 2);
    settled("deny", "198.18.0.2/32", 2);
    settled("allow", "198.18.0.4/32", 3);
    // Another counter read or two must not count anything twice.
    std::thread::sleep(Duration::from_millis(2200));
    let hits = hits_of("deny");
    assert_eq!(packets(&hits, "198.18.0.2/32"), 2, "{hits}");
    assert_eq!(packets(&hits, "198.18.0.2/31"), 2, "{hits}");
    let allow_hits = hits_of("allow");
    assert_eq!(packets(&allow_hits, "198.18.0.4/32"), 3, "{allow_hits}");
    assert!(
        allow_hits[0]["bytes"].as_u64().unwrap_or(0) >= 3 * 98,
        "three 98-byte echo requests at least: {allow_hits}"
    );
    let rows = hits.as_array().expect("array");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs() as i64;
    assert!(
        rows.iter()
            .all(|h| (now - h["last_hit"].as_i64().unwrap_or(0)).abs() < 60),
        "{hits}"
    );
    let table = ok(&agent.cli(&["deny", "list", "--hits"]));
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("198.18.0.2/")),
        "{table}"
    );
    // The agent carries on, and streams to the next one.
    let again = Stream::start(&dirs.socket(), true);
    pair.assert_pings(host, SERVER_V4, 1, 0, "still denied");
    assert!(!again.until(|l| source_seen(l, host)).is_empty());
    again.interrupt();
    assert!(agent.status().interfaces.len() == 1);
}

#[test]
fn l7_blocks_and_detections_stream_and_allowed_traffic_does_not() {
    privileged!();
    let s = setup_apis(&[(
        "shop",
        r#""decoy_config":{"decoy_enabled":true,"decoy_subpaths":["admin"]}"#,
    )]);
    ok(&s.agent.cli(&["deny", "add", "ip", "198.18.50.1"]));
    let stream = Stream::start(&s.dirs.socket(), true);
    let (ok_status, _) = s.curl("/shop/fine", &["-H", "X-Forwarded-For: 198.18.50.9"]);
    assert_eq!(ok_status, 200);
    let (blocked, _) = s.curl("/shop/a", &["-H", "X-Forwarded-For: 198.18.50.1"]);
    assert_eq!(blocked, 403);
    // A hostile path: control characters stay inside the JSON string.
    s.curl(
        "/shop/admin%1b%5b2J",
        &["-H", "X-Forwarded-For: 198.18.50.7"],
    );
    // A decoy answers like a real page; the event says what it was.
    s.curl("/shop/admin", &["-H", "X-Forwarded-For: 198.18.50.8"]);
    let lines = stream.until(|l| l.iter().any(|l| l.contains("198.18.50.8")));
    let events = json(&lines);
    assert!(
        !events.iter().any(|e| e["client"] == "198.18.50.9"),
        "allowed traffic is not an event: {lines:#?}"
    );
    let block = events
        .iter()
        .find(|e| e["type"] == "l7" && e["client"] == "198.18.50.1")
        .unwrap_or_else(|| panic!("no block event: {lines:#?}"));
    assert_eq!(block["status"], 403);
    assert_eq!(block["api"], "shop");
    assert!(
        block["outcomes"]
            .as_array()
            .is_some_and(|o| o.iter().any(|x| x == "blocked")),
        "{block}"
    );
    assert!(
        block["matched"]
            .as_str()
            .is_some_and(|m| m.contains("198.18.50.1")),
        "{block}"
    );
    let detection = events
        .iter()
        .find(|e| e["client"] == "198.18.50.8")
        .expect("decoy event");
    assert!(
        detection["outcomes"]
            .as_array()
            .is_some_and(|o| o.iter().any(|x| x == "decoy")),
        "{detection}"
    );
    stream.interrupt();
}

#[test]
fn sideband_refusals_stream_with_the_request_the_gateway_asked_about() {
    privileged!();
    let dirs = AgentDirs::new();
    let apis = dirs.root.join("apis");
    portcullis_tests::checker_setup::write_api(
        &apis,
        "shop",
        r#"{"url":"/shop","hostname":"*","oauth2_access_token":true}"#,
    );
    let certs = portcullis_tests::tls::self_signed(&dirs.root, "sideband.test", "a").expect("cert");
    let http = portcullis_tests::checker_setup::free_port();
    let config = format!(
        "[checker]\napi_dir = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n[sideband]\nhttp = \"127.0.0.1:{http}\"\ngateways = [\"127.0.0.1/32\"]\n",
        apis.display(),
        certs.cert.display(),
        certs.key.display()
    );
    let agent = Agent::with_config(&dirs, config).expect("agent");
    agent.add("deny", &[&["token", "stolen"]]);
    let stream = Stream::start(&dirs.socket(), true);
    let ask = |ip: &str, token: &str| {
        let body = format!(
            r#"{{"source_ip":"{ip}","source_port":8080,"method":"GET","url":"/shop/items","http_version":"1.1","headers":[{{"Host":"shop.example"}},{{"Authorization":"Bearer {token}"}}]}}"#
        );
        portcullis_tests::http::curl_status(
            &format!("http://127.0.0.1:{http}/ase/request"),
            &[
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &body,
            ],
        )
    };
    assert_eq!(ask("198.18.0.7", "good"), 200);
    assert_eq!(ask("198.18.0.8", "stolen"), 403);
    let lines = stream.until(|l| l.iter().any(|l| l.contains("198.18.0.8")));
    let events = json(&lines);
    assert!(
        !events.iter().any(|e| e["client"] == "198.18.0.7"),
        "{lines:#?}"
    );
    let e = events
        .iter()
        .find(|e| e["client"] == "198.18.0.8")
        .unwrap_or_else(|| panic!("no sideband event: {lines:#?}"));
    assert_eq!(
        e["method"], "GET",
        "the asked request, not the gateway's POST: {e}"
    );
    assert_eq!(e["path"], "/shop/items", "{e}");
    assert_eq!(e["status"], 403, "{e}");
    assert!(
        e["matched"]
            .as_str()
            .is_some_and(|m| m.starts_with("token")),
        "{e}"
    );
    stream.interrupt();
}
