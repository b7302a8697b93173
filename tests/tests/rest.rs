//! The management REST API as ASE's automation uses it, with curl over TLS: every list
//! verb, wrong keys, bad JSON, anti-lockout, and each change seen by `portcullis deny list`
//! and by XDP on a veth pair in a namespace.

use std::io::Write as _;
use std::process::{Command, Stdio};

use portcullis_tests::agent::{Agent, AgentDirs, AgentOpts, ok, portcullis_bin};
use portcullis_tests::checker_setup::{free_port, write_api};
use portcullis_tests::netns::{CLIENT_V4, NetnsPair, SERVER_V4};
use portcullis_tests::privileged;
use portcullis_tests::tls::self_signed;
use serde_json::Value;

const SECRET: &str = "rest secret 1";

/// curl over TLS to the REST API inside the server namespace: (status, JSON body).
struct Rest<'a> {
    pair: &'a NetnsPair,
    port: u16,
    ca: std::path::PathBuf,
}

impl Rest<'_> {
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        keys: (&str, &str),
    ) -> (u16, Value) {
        let url = format!("https://rest.test:{}{path}", self.port);
        let resolve = format!("rest.test:{}:127.0.0.1", self.port);
        let ca = self.ca.display().to_string();
        let access = format!("x-ase-access-key: {}", keys.0);
        let secret = format!("x-ase-secret-key: {}", keys.1);
        let mut args = vec![
            "netns",
            "exec",
            &self.pair.server,
            "curl",
            "-s",
            "--max-time",
            "5",
            "-w",
            "\n%{http_code}",
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            "-X",
            method,
            "-H",
            &access,
            "-H",
            &secret,
            "-H",
            "Content-Type: application/json",
        ];
        if let Some(b) = body {
            args.extend(["--data-binary", b]);
        }
        args.push(&url);
        let out = Command::new("ip").args(&args).output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        let json = serde_json::from_str(body).unwrap_or_else(|_| {
            Value::String(format!("{body}{}", String::from_utf8_lossy(&out.stderr)))
        });
        (code.trim().parse().unwrap_or(0), json)
    }

    fn ok(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.call(method, path, body, ("admin", SECRET))
    }
}

fn deny_values(agent: &Agent) -> Vec<String> {
    agent.entries("deny").into_iter().map(|e| e.value).collect()
}

#[test]
fn rest_list_verbs_reach_the_writer_and_xdp_with_every_rule() {
    let pair = privileged!(NetnsPair::new().expect("namespaces"));
    let dirs = AgentDirs::new();
    let apis = dirs.root.join("apis");
    write_api(&apis, "shop", r#"{"url":"/shop","hostname":"*"}"#);
    let certs = self_signed(&dirs.root, "rest.test", "a").expect("cert");
    let port = free_port();
    let opts = AgentOpts {
        config: format!(
            "[checker]\nhttp = \"127.0.0.1:{}\"\napi_dir = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n[rest]\nhttps = \"127.0.0.1:{port}\"\n",
            free_port(),
            apis.display(),
            certs.cert.display(),
            certs.key.display()
        ),
        ..AgentOpts::on_server(&pair)
    };
    let agent = Agent::start(&dirs, &opts).expect("agent");
    let rest = Rest {
        pair: &pair,
        port,
        ca: certs.ca.clone(),
    };

    // No secret key yet: nobody gets in, not even with ASE's default admin/admin.
    let (code, body) = rest.call("GET", "/v4/ase/blacklist", None, ("admin", "admin"));
    assert_eq!(code, 401, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("rest password"),
        "{body}"
    );
    let mut set = Command::new(portcullis_bin())
        .arg("--socket")
        .arg(dirs.socket())
        .args(["rest", "password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cli");
    set.stdin
        .take()
        .expect("stdin")
        .write_all(format!("{SECRET}\n").as_bytes())
        .expect("write");
    assert!(set.wait().expect("wait").success());
    let file = std::fs::read_to_string(dirs.root.join("credentials.json")).unwrap_or_default();
    assert!(
        !file.is_empty() && !file.contains(SECRET),
        "kept as a digest"
    );

    // Wrong keys: 401, nothing read or changed.
    assert_eq!(
        rest.call("GET", "/v4/ase/blacklist", None, ("admin", "wrong"))
            .0,
        401
    );
    assert_eq!(
        rest.call("GET", "/v4/ase/blacklist", None, ("root", SECRET))
            .0,
        401
    );
    let body = r#"{"ips":["198.18.0.3"]}"#;
    assert_eq!(
        rest.call("POST", "/v4/ase/blacklist", Some(body), ("admin", "nope"))
            .0,
        401
    );
    assert!(deny_values(&agent).is_empty());

    // Add every kind at once: on the deny list (secrets as fingerprints), the IP in XDP.
    pair.assert_pings(CLIENT_V4[1], SERVER_V4, 2, 2, "before the deny");
    let all = r#"{"ips":["198.18.0.3"],"cookies":[{"name":"JSESSIONID","value":"c-1"}],
        "oauth_tokens":["stolen-token"],"api_keys":[{"name":"X-API-KEY","value":"k-1"}],
        "usernames":["mallory"],"reason":"ticket 42"}"#;
    let (code, answer) = rest.ok("POST", "/v4/ase/blacklist", Some(all));
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["status_code"], "SUCCESS");
    let listed = ok(&agent.cli(&["deny", "list"]));
    assert!(
        listed.contains("198.18.0.3") && listed.contains("mallory"),
        "{listed}"
    );
    assert!(
        !listed.contains("stolen-token") && !listed.contains("k-1"),
        "secrets are digests: {listed}"
    );
    let entries = agent.entries("deny");
    assert_eq!(entries.len(), 5);
    assert!(
        entries
            .iter()
            .all(|e| e.source == "rest" && e.reason == "ticket 42")
    );
    pair.assert_pings(
        CLIENT_V4[1],
        SERVER_V4,
        2,
        0,
        "denied over REST: dropped by XDP",
    );
    pair.assert_pings(CLIENT_V4[0], SERVER_V4, 2, 2, "its neighbour is not");

    // View, ASE's shape.
    let (code, view) = rest.ok("GET", "/v4/ase/blacklist", None);
    assert_eq!(code, 200);
    assert_eq!(view["ips"], serde_json::json!(["198.18.0.3/32"]));
    assert_eq!(view["usernames"], serde_json::json!(["mallory"]));
    assert_eq!(view["cookies"][0]["name"], "JSESSIONID");
    assert!(!view.to_string().contains("stolen-token"));
    assert_eq!(
        rest.ok("GET", "/v4/ase/blacklist?tag=abs", None).1["entries"],
        serde_json::json!([])
    );

    // Bad JSON, unknown fields, bad identifiers, too large: 4xx, nothing changed.
    let before = deny_values(&agent);
    for (bad, want) in [
        ("{", 400),
        (r#"{"ip":["198.18.0.5"]}"#, 400),
        (r#"{"ips":["198.18.0.5","198.18.0.300"]}"#, 400),
        (r#"{"ips":[]}"#, 400),
        (r#"{"ips":[5]}"#, 400),
    ] {
        let (code, answer) = rest.ok("POST", "/v4/ase/blacklist", Some(bad));
        assert_eq!(code, want, "{bad}: {answer}");
    }
    let huge = format!(r#"{{"ips":["{}"]}}"#, "1".repeat(2 << 20));
    let huge_file = dirs.root.join("huge.json");
    std::fs::write(&huge_file, huge).expect("write");
    let at = format!("@{}", huge_file.display());
    assert_eq!(rest.ok("POST", "/v4/ase/blacklist", Some(&at)).0, 413);
    assert_eq!(deny_values(&agent), before, "nothing changed");

    // Anti-lockout: everyone, or this host's own address, is refused (nothing written).
    for whole in [
        r#"{"ips":["0.0.0.0/0"]}"#,
        &format!(r#"{{"ips":["{SERVER_V4}"]}}"#),
    ] {
        let (code, answer) = rest.ok("POST", "/v4/ase/blacklist", Some(whole));
        assert_eq!(code, 400, "{answer}");
        assert_eq!(answer["status_code"], "REFUSED", "{answer}");
    }
    assert_eq!(deny_values(&agent), before);
    pair.assert_pings(CLIENT_V4[0], SERVER_V4, 2, 2, "not locked out");

    // The allow list wins over the deny list, in XDP too.
    assert_eq!(
        rest.ok(
            "POST",
            "/v4/ase/whitelist",
            Some(r#"{"ips":["198.18.0.4"]}"#)
        )
        .0,
        200
    );
    assert_eq!(
        rest.ok(
            "POST",
            "/v4/ase/blacklist",
            Some(r#"{"ips":["198.18.0.4"]}"#)
        )
        .0,
        200
    );
    pair.assert_pings(CLIENT_V4[2], SERVER_V4, 2, 2, "allowed beats denied");
    assert_eq!(
        rest.ok("GET", "/v4/ase/whitelist", None).1["ips"],
        serde_json::json!(["198.18.0.4/32"])
    );

    // Delete: lifted in XDP.
    let (code, answer) = rest.ok(
        "DELETE",
        "/v4/ase/blacklist",
        Some(r#"{"ips":["198.18.0.3"]}"#),
    );
    assert_eq!(code, 200, "{answer}");
    pair.assert_pings(CLIENT_V4[1], SERVER_V4, 2, 2, "deleted over REST");

    // Clear: only with a tag saying what.
    assert_eq!(rest.ok("DELETE", "/v4/ase/blacklist", None).0, 400);
    assert_eq!(rest.ok("DELETE", "/v4/ase/whitelist?tag=all", None).0, 200);
    let (code, answer) = rest.ok("DELETE", "/v4/ase/blacklist?tag=manual", None);
    assert_eq!(code, 200, "{answer}");
    assert!(deny_values(&agent).is_empty(), "{:?}", deny_values(&agent));
    assert!(ok(&agent.cli(&["allow", "list", "--json"])).trim() == "[]");

    // APIs, firewall, sideband tokens.
    let (code, list) = rest.ok("GET", "/v4/ase/api", None);
    assert_eq!(code, 200);
    assert_eq!(list["apis"][0]["name"], "shop", "{list}");
    assert_eq!(rest.ok("GET", "/v4/ase/api?api_id=shop", None).0, 200);
    assert_eq!(rest.ok("GET", "/v4/ase/api?api_id=nope", None).0, 404);
    assert_eq!(
        rest.ok("GET", "/v4/ase/firewall", None).1["firewall"],
        "enabled"
    );
    let (code, created) = rest.ok("POST", "/v5/ase/sideband/token", None);
    assert_eq!(code, 200);
    let token = created["token"].as_str().expect("token").to_owned();
    assert_eq!(token.len(), 32);
    let (_, tokens) = rest.ok("GET", "/v5/ase/sideband/token", None);
    assert!(!tokens.to_string().contains(&token), "listed by hint only");
    let (_, auth) = rest.ok(
        "POST",
        "/v5/ase/sideband/authentication?status=enable",
        None,
    );
    assert_eq!(auth["status"], "enabled");
    let del = format!(r#"{{"token":"{token}"}}"#);
    assert_eq!(
        rest.ok("DELETE", "/v5/ase/sideband/token", Some(&del)).0,
        200
    );
    assert_eq!(
        rest.ok("DELETE", "/v5/ase/sideband/token", Some(&del)).0,
        404
    );

    // Guessing the secret: after ten failures in a minute (counting the ones above), even
    // the right key waits.
    let mut failures = 0;
    let last = loop {
        let code = rest
            .call("GET", "/v4/ase/firewall", None, ("admin", "guess"))
            .0;
        if code != 401 || failures > 10 {
            break code;
        }
        failures += 1;
    };
    assert_eq!(last, 429, "after {failures} more failures");
    assert_eq!(rest.ok("GET", "/v4/ase/firewall", None).0, 429);
    drop(agent);
}
