//! API files as Ping writes them, and ASE's semantics around them, through a running checker
//! with curl: loose types, full-path decoys, fields reported by path, `enable_blocking:
//! false` covering detections, Unknown Hostname apart from Unknown API, definitions ASE
//! would refuse, detections that last until removed.

use std::process::Command;

use portcullis_tests::agent::ok;
use portcullis_tests::checker_setup::{setup_with, write_api};
use portcullis_tests::privileged;

/// An API as Ping's examples and tools write it: numbers as strings, `""` for unset, ASE
/// duration units, full-path and relative decoys, fields Portcullis does not use.
fn ping_style(url: &str, blocking: bool, backend: u16) -> String {
    format!(
        r#"{{"protocol": "https", "url": "{url}", "hostname": "api.test", "cookie": "", "cookie_idle_timeout": "20m",
        "oauth2_access_token": false, "is_token_mandatory": false, "apikey_qs": "", "apikey_header": "",
        "enable_blocking": {blocking}, "api_mapping": {{"internal_url": ""}},
        "api_pattern_enforcement": {{"protocol_allowed": "", "http_redirect": {{"response_code": "", "response_def": "", "https_url": ""}},
            "methods_allowed": ["GET"], "content_type_allowed": "", "error_code": "405", "error_def": "Method Not Allowed",
            "error_message_body": "Error: method\n"}},
        "flow_control": {{"client_spike_threshold": "0/second"}},
        "health_check": false, "health_check_interval": "8", "health_retry_count": "", "health_url": "/",
        "servers": [{{"host": "127.0.0.1", "port": "{backend}", "server_spike_threshold": "0/second"}}],
        "decoy_config": {{"decoy_enabled": true, "response_code": "", "response_def": "", "response_message": "decoy\n",
            "decoy_subpaths": ["{url}/admin", "debug"]}}}}"#
    )
}

#[test]
fn ping_style_api_files_behave_as_they_do_in_ase() {
    privileged!();
    // Until removed, as in ASE (the default is 1h: see README).
    let s = setup_with("detection_ttl = \"never\"\n", |apis, backend| {
        write_api(apis, "shop", &ping_style("/shop", true, backend));
        write_api(apis, "watch", &ping_style("/watch", false, backend));
        // Plain HTTP to an HTTPS-only API: redirected, as ASE's http_redirect says.
        write_api(
            apis,
            "secure",
            &format!(
                r#"{{"url":"/secure","hostname":"api.test","api_pattern_enforcement":{{"protocol_allowed":"https",
                "http_redirect":{{"response_code":"302","response_def":"Found","https_url":"https://api.test:8443/"}}}},
                "servers":[{{"host":"127.0.0.1","port":{backend}}}]}}"#
            ),
        );
        // ASE refuses a mandatory token without a token to read: so does Portcullis.
        write_api(
            apis,
            "refused",
            &format!(
                r#"{{"url":"/refused","hostname":"api.test","is_token_mandatory":true,"servers":[{{"host":"127.0.0.1","port":{backend}}}]}}"#
            ),
        );
    });
    let from = |ip: &str| format!("X-Forwarded-For: {ip}");
    let listed = || ok(&s.agent.cli(&["deny", "list", "--source", "checker"]));

    // Loaded with their values: the string port and codes, the decoys in full.
    assert_eq!(s.curl("/shop/items", &[]).0, 200);
    let out = s.agent.cli(&["api", "list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused.json") && stderr.contains("needs `oauth2_access_token: true`"),
        "{stderr}"
    );
    // ASE's `list_api` and `api_info NAME` are `api list` and `api show NAME`.
    let listed_apis = ok(&s.agent.cli(&["-u", "admin", "-p", "admin", "list_api"]));
    assert!(
        listed_apis.contains("shop") && listed_apis.contains("watch"),
        "{listed_apis}"
    );
    let shown = ok(&s
        .agent
        .cli(&["-u", "admin", "-p", "admin", "api_info", "shop"]));
    for part in [
        "\"/shop/admin\"",
        "\"/shop/debug\"",
        "servers[0].server_spike_threshold",
        "api_mapping",
        "cookie_idle_timeout",
    ] {
        assert!(shown.contains(part), "api show lacks {part}: {shown}");
    }

    // A method outside the pattern: the file's string error_code, the client denied.
    assert_eq!(
        s.curl("/shop/items", &["-X", "DELETE", "-H", &from("198.18.81.1")]),
        (405, "Error: method\n".into())
    );
    // ASE's full-path decoy, and the relative one, fire; the response_code "" is 200.
    assert_eq!(
        s.curl("/shop/admin", &["-H", &from("198.18.81.2")]),
        (200, "decoy\n".into())
    );
    assert_eq!(
        s.curl("/shop/debug/x", &["-H", &from("198.18.81.3")]).0,
        200
    );
    assert_eq!(s.curl("/shop/items", &["-H", &from("198.18.81.2")]).0, 403);
    let denied = listed();
    for ip in ["198.18.81.1/32", "198.18.81.2/32", "198.18.81.3/32"] {
        assert!(denied.contains(ip), "{ip} not denied: {denied}");
    }
    // Detections last until removed, as in ASE (detection_ttl = "never" by default).
    assert!(
        denied
            .lines()
            .filter(|l| l.contains("198.18.81."))
            .all(|l| l.contains("never")),
        "{denied}"
    );

    // enable_blocking false: detections are counted, nothing is written or refused, and a
    // decoy still answers as a decoy.
    let before = s.agent.stats().l7;
    assert_eq!(
        s.curl(
            "/watch/items",
            &["-X", "DELETE", "-H", &from("198.18.81.4")]
        )
        .0,
        200
    );
    assert_eq!(
        s.curl("/watch/admin", &["-H", &from("198.18.81.5")]),
        (200, "decoy\n".into())
    );
    assert_eq!(s.curl("/watch/items", &["-H", &from("198.18.81.5")]).0, 200);
    let after = s.agent.stats().l7;
    let grew = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    assert_eq!(
        (grew("would_block"), grew("invalid_method"), grew("decoy")),
        (2, 1, 1),
        "{after:?}"
    );
    let denied = listed();
    assert!(
        !denied.contains("198.18.81.4") && !denied.contains("198.18.81.5"),
        "a watching API deny-listed a client: {denied}"
    );

    // A host no API serves, then a path no API of the host owns (plain HTTP: no SNI).
    let plain = |host: &str, path: &str| {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", "-w", "\n%{http_code}", "-H"])
            .arg(format!("Host: {host}"))
            .arg(format!("http://127.0.0.1:{}{path}", s.http_port))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
            "-w",
            "%{http_code} %{redirect_url}",
        ])
        .args(["-H", "Host: api.test", "-H", "X-Forwarded-For: 198.18.81.6"])
        .arg(format!("http://127.0.0.1:{}/secure/x?a=1", s.http_port))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "302 https://api.test:8443/secure/x?a=1"
    );
    assert!(
        !listed().contains("198.18.81.6"),
        "a redirected client was deny-listed"
    );
    assert_eq!(
        plain("other.test", "/shop/items"),
        "Error: Unknown Hostname\n\n503"
    );
    assert_eq!(plain("api.test", "/nothing"), "Error: Unknown API\n\n503");
    let l7 = s.agent.stats().l7;
    assert_eq!(
        (
            l7.get("unknown_hostname"),
            l7.get("unknown_api"),
            l7.get("redirected")
        ),
        (Some(&1), Some(&1), Some(&1)),
        "{l7:?}"
    );
}
