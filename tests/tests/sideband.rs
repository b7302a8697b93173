//! Gateways asking Portcullis: ASE's sideband resources with the bodies the WSO2 handler
//! builds, ASE-Token authentication, the gateway-native endpoints, and Debian's real NGINX
//! with `auth_request` in front of a backend, its client in a namespace whose packets XDP
//! drops once a decoy deny-lists it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_tests::agent::{Agent, AgentDirs, AgentOpts, ok};
use portcullis_tests::backend::Backend;
use portcullis_tests::checker_setup::{free_port, write_api};
use portcullis_tests::netns::{CLIENT_V4, NetnsPair, SERVER_V4, in_netns};
use portcullis_tests::privileged;
use portcullis_tests::tls::self_signed;

/// An API the gateways ask about: no servers, a decoy, tokens read from `Authorization`.
const SIDEBAND_API: &str = r#"{"url":"/shop","hostname":"*","oauth2_access_token":true,
    "api_pattern_enforcement":{"methods_allowed":["GET","POST"]},
    "decoy_config":{"decoy_enabled":true,"decoy_subpaths":["admin"]}}"#;

/// A request body as the WSO2 handler builds it (`createRequestJson`), from `ip`.
fn wso2_body(ip: &str, method: &str, url: &str, auth: Option<&str>) -> String {
    let auth = auth
        .map(|a| format!(r#",{{"Authorization":"{a}"}}"#))
        .unwrap_or_default();
    format!(
        r#"{{"source_ip":"{ip}","source_port":8080,"method":"{method}","url":"{url}","http_version":"1.1","headers":[{{"Host":"shop.example"}},{{"Accept":"*/*"}}{auth}],"user_info":[{{"username":"alice"}}]}}"#
    )
}

/// (status, body) of a POST of `body` to `url`, with more curl `args`.
fn post(url: &str, body: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
        ])
        .args([
            "-H",
            "Content-Type: application/json",
            "-H",
            "X-CorrelationID: c-1",
        ])
        .args(["--data-binary", body])
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// (status, body) of a GET to `url` with `headers`.
fn get(url: &str, headers: &[&str]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "5", "-w", "\n%{http_code}"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn ase_sideband_bodies_decide_as_inline_and_tokens_guard_the_door() {
    privileged!();
    let dirs = AgentDirs::new();
    let apis = dirs.root.join("apis");
    write_api(&apis, "shop", SIDEBAND_API);
    let certs = self_signed(&dirs.root, "sideband.test", "a").expect("cert");
    let (http, https) = (free_port(), free_port());
    let config = format!(
        "[checker]\napi_dir = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n[sideband]\nhttp = \"127.0.0.1:{http}\"\nhttps = \"127.0.0.1:{https}\"\ngateways = [\"127.0.0.1/32\"]\n",
        apis.display(),
        certs.cert.display(),
        certs.key.display()
    );
    let agent = Agent::with_config(&dirs, config).expect("agent");
    let request = format!("http://127.0.0.1:{http}/ase/request");
    let response = format!("http://127.0.0.1:{http}/ase/response");
    let honest = wso2_body(
        "198.18.0.7",
        "GET",
        "/shop/items?page=2",
        Some("Bearer good"),
    );

    // An honest request: go on. Its response metadata, as WSO2 wraps it: acknowledged.
    assert_eq!(post(&request, &honest, &[]).0, 200);
    let wrapped = r#"{"ASEPayload":{"response_code":"200","response_status":"OK","http_version":"1.1","headers":[{"Content-Type":"application/json"}]}}"#;
    assert_eq!(post(&response, wrapped, &[]).0, 200);
    assert_eq!(post(&response, r#"{"response_status":"OK"}"#, &[]).0, 400);

    // A denied token, a denied username (from user_info), a method outside the pattern.
    agent.add("deny", &[&["token", "stolen"]]);
    let stolen = wso2_body("198.18.0.8", "GET", "/shop/items", Some("Bearer stolen"));
    assert_eq!(
        post(&request, &stolen, &[]),
        (403, "Error: Unauthorized\n".into())
    );
    ok(&agent.cli(&["deny", "add", "username", "alice", "--api", "shop"]));
    assert_eq!(
        post(&request, &honest, &[]).0,
        403,
        "user_info's username is judged"
    );
    ok(&agent.cli(&["deny", "remove", "username", "alice"]));
    assert_eq!(post(&request, &honest, &[]).0, 200);

    // ASE's answers for what it does not know or cannot read.
    let unknown = wso2_body("198.18.0.7", "GET", "/nowhere", None);
    assert_eq!(
        post(&request, &unknown, &[]),
        (503, "Error: Unknown API\n".into())
    );
    for broken in [
        "{",
        "[]",
        r#"{"source_ip":"not-an-ip","method":"GET","url":"/shop"}"#,
        r#"{"source_ip":"198.18.0.7","method":"GET","url":"/shop","headers":[{"Host":"a\nb"}]}"#,
    ] {
        let (code, body) = post(&request, broken, &[]);
        assert_eq!(code, 400, "{broken}: {body}");
    }
    let huge = format!(
        r#"{{"source_ip":"198.18.0.7","method":"GET","url":"/shop","pad":"{}"}}"#,
        "x".repeat(200 << 10)
    );
    let file = dirs.root.join("huge.json");
    std::fs::write(&file, huge).expect("write");
    let at = format!("@{}", file.display());
    assert_eq!(post(&request, &at, &[]).0, 413);
    assert!(
        agent.entries("deny").iter().all(|e| e.source != "checker"),
        "nothing written by bad bodies"
    );

    // A decoy: 403 (nothing to forward to), and the client in the body is deny-listed, never
    // the gateway asking.
    let decoy = wso2_body("198.18.0.9", "GET", "/shop/admin", None);
    assert_eq!(post(&request, &decoy, &[]).0, 403);
    let gateway = wso2_body("127.0.0.1", "GET", "/shop/admin", None);
    assert_eq!(post(&request, &gateway, &[]).0, 403);
    let checker: Vec<String> = agent
        .entries_from("deny", "checker")
        .into_iter()
        .map(|e| e.value)
        .collect();
    assert_eq!(checker, vec!["198.18.0.9/32".to_owned()], "{checker:?}");
    let after = wso2_body("198.18.0.9", "GET", "/shop/items", None);
    assert_eq!(post(&request, &after, &[]).0, 403);

    // Ping's policies stop a request on 403 only: a method outside the pattern (401 inline)
    // is a 403 here, its own status beside it.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "--max-time",
            "5",
            "-X",
            "POST",
        ])
        .args([
            "--data-binary",
            &wso2_body("198.18.0.10", "DELETE", "/shop/items", None),
        ])
        .arg(&request)
        .output()
        .expect("curl");
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 403") && head.contains("x-portcullis-status: 401"),
        "{head}"
    );

    // Only the configured gateways may ask: another local address is dropped unanswered.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "3",
        ])
        .args([
            "--interface",
            "127.0.0.2",
            "-X",
            "POST",
            "--data-binary",
            &honest,
        ])
        .arg(&request)
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "000",
        "not a gateway: dropped at accept"
    );

    // The gateway-native endpoints decide alike.
    let nginx = format!("http://127.0.0.1:{http}/portcullis/auth");
    let asks = |ip: &str, uri: &str, more: &[&str]| {
        let mut h = vec![
            "X-Original-Method: GET".to_owned(),
            format!("X-Original-URI: {uri}"),
            "X-Original-Host: shop.example".to_owned(),
            "X-Original-Proto: https".to_owned(),
            format!("X-Real-IP: {ip}"),
        ];
        h.extend(more.iter().map(|m| (*m).to_owned()));
        let h: Vec<&str> = h.iter().map(String::as_str).collect();
        get(&nginx, &h).0
    };
    assert_eq!(asks("198.18.0.7", "/shop/items", &[]), 200);
    assert_eq!(
        asks(
            "198.18.0.7",
            "/shop/items",
            &["Authorization: Bearer stolen"]
        ),
        403
    );
    assert_eq!(
        asks("198.18.0.7", "/nowhere", &[]),
        403,
        "NGINX takes only 401 and 403 as refusals"
    );
    assert_eq!(get(&nginx, &["X-Original-Method: GET"]).0, 400);
    let traefik = format!("http://127.0.0.1:{http}/portcullis/forward-auth");
    let h = [
        "X-Forwarded-Method: GET",
        "X-Forwarded-Uri: /nowhere",
        "X-Forwarded-Host: shop.example",
        "X-Forwarded-Proto: https",
        "X-Forwarded-For: 198.18.0.7",
    ];
    assert_eq!(
        get(&traefik, &h).0,
        503,
        "Traefik passes the real refusal on"
    );
    // A client's own X-Original-* through Traefik does not move the question elsewhere.
    let decoy_via_traefik = [
        "X-Forwarded-Method: GET",
        "X-Forwarded-Uri: /shop/admin",
        "X-Forwarded-Host: shop.example",
        "X-Forwarded-Proto: https",
        "X-Forwarded-For: 198.18.0.11",
        "X-Original-URI: /shop/items",
        "X-Real-IP: 198.18.0.12",
    ];
    assert_eq!(get(&traefik, &decoy_via_traefik).0, 403);
    let envoy = format!("http://127.0.0.1:{http}/portcullis/envoy/shop/items");
    assert_eq!(
        get(
            &envoy,
            &["Host: shop.example", "x-envoy-external-address: 198.18.0.7"]
        )
        .0,
        200
    );
    assert_eq!(
        get(
            &envoy,
            &["Host: shop.example", "x-envoy-external-address: 198.18.0.9"]
        )
        .0,
        403
    );

    // Over TLS too.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            "--cacert",
        ])
        .arg(&certs.ca)
        .args(["--resolve", &format!("sideband.test:{https}:127.0.0.1")])
        .args(["-X", "POST", "--data-binary", &honest])
        .arg(format!("https://sideband.test:{https}/ase/request"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");

    // ASE-Token: on, nothing passes without a valid token; tokens are kept as digests.
    ok(&agent.cli(&[
        "-u",
        "admin",
        "-p",
        "admin",
        "enable_sideband_authentication",
    ]));
    assert_eq!(post(&request, &honest, &[]).0, 401);
    let created = ok(&agent.cli(&["create_sideband_token", "-u", "admin", "-p", "admin"]));
    let token = created
        .trim()
        .strip_prefix("Sideband token ")
        .and_then(|t| t.strip_suffix(" created."))
        .expect("ASE's line")
        .to_owned();
    assert_eq!(token.len(), 32);
    let with = format!("ASE-Token: {token}");
    assert_eq!(post(&request, &honest, &["-H", &with]).0, 200);
    assert_eq!(
        post(
            &request,
            &honest,
            &["-H", "ASE-Token: 0123456789abcdef0123456789abcdef"]
        )
        .0,
        401
    );
    assert_eq!(
        asks("198.18.0.7", "/shop/items", &[]),
        401,
        "the gateway endpoints need it too"
    );
    let listed = ok(&agent.cli(&["sideband", "list-tokens"]));
    assert!(
        listed.contains(&token[..4]) && !listed.contains(&token),
        "{listed}"
    );
    let file = std::fs::read_to_string(dirs.root.join("credentials.json")).unwrap_or_default();
    assert!(
        !file.is_empty() && !file.contains(&token),
        "stored as a digest"
    );
    ok(&agent.cli(&["delete_sideband_token", &token]));
    assert_eq!(post(&request, &honest, &["-H", &with]).0, 401);
    drop(agent);
}

/// NGINX in the server namespace, run in the foreground, stopped on drop.
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nginx(dir: &std::path::Path, netns: &str, listen: &str, sideband: u16, backend: u16) -> Nginx {
    let tmp = dir.join("nginx");
    std::fs::create_dir_all(&tmp).expect("nginx dir");
    let d = tmp.display();
    let conf = format!(
        r#"user root;
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    server {{
        listen {listen};
        location / {{
            auth_request /_portcullis;
            proxy_pass http://127.0.0.1:{backend};
        }}
        location = /_portcullis {{
            internal;
            proxy_pass http://127.0.0.1:{sideband}/portcullis/auth;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Host $host;
            proxy_set_header X-Original-Proto $scheme;
            proxy_set_header X-Real-IP $remote_addr;
        }}
    }}
}}
"#
    );
    let file = tmp.join("nginx.conf");
    std::fs::write(&file, conf).expect("nginx.conf");
    let child = Command::new("ip")
        .args(["netns", "exec", netns, "nginx", "-c"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx");
    Nginx(child)
}

#[test]
fn nginx_auth_request_keeps_denied_clients_out_down_to_xdp() {
    let pair = privileged!(NetnsPair::new().expect("namespaces"));
    let dirs = AgentDirs::new();
    let apis = dirs.root.join("apis");
    write_api(&apis, "shop", SIDEBAND_API);
    let sideband = free_port();
    let opts = AgentOpts {
        config: format!(
            "[checker]\napi_dir = \"{}\"\n[sideband]\nhttp = \"127.0.0.1:{sideband}\"\n",
            apis.display()
        ),
        ..AgentOpts::on_server(&pair)
    };
    let agent = Agent::start(&dirs, &opts).expect("agent");
    let backend = in_netns(&pair.server, || {
        Backend::start(TcpListener::bind("127.0.0.1:0").expect("backend"))
    })
    .expect("netns");
    let _nginx = nginx(
        &dirs.root,
        &pair.server,
        &format!("{SERVER_V4}:8080"),
        sideband,
        backend.addr.port(),
    );
    let curl = |src: &str, path: &str, headers: &[&str]| -> u16 {
        let url = format!("http://{SERVER_V4}:8080{path}");
        let mut args = vec![
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "3",
            "--interface",
            src,
        ];
        for h in headers {
            args.extend(["-H", h]);
        }
        args.push(&url);
        let out = pair.client_cmd(&args).expect("curl");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    };
    // NGINX up: the honest client reaches the backend through it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while curl(CLIENT_V4[0], "/shop/items", &[]) != 200 {
        assert!(Instant::now() < deadline, "NGINX never answered 200");
        std::thread::sleep(Duration::from_millis(200));
    }
    let seen = backend.seen.lock().expect("seen").len();
    assert!(seen >= 1, "the backend served the honest request");

    // A denied token: 403 from NGINX, and the backend never sees it.
    agent.add("deny", &[&["token", "stolen"]]);
    assert_eq!(
        curl(
            CLIENT_V4[0],
            "/shop/items",
            &["Authorization: Bearer stolen"]
        ),
        403
    );
    assert_eq!(
        backend.seen.lock().expect("seen").len(),
        seen,
        "a refused request never reaches the backend"
    );

    // A decoy: the client is deny-listed (not NGINX, whose address asks), and from then on
    // XDP drops its packets before NGINX sees them; its neighbour goes on.
    assert_eq!(curl(CLIENT_V4[1], "/shop/admin", &[]), 403);
    let denied: Vec<String> = agent
        .entries_from("deny", "checker")
        .into_iter()
        .map(|e| e.value)
        .collect();
    assert_eq!(denied, vec![format!("{}/32", CLIENT_V4[1])]);
    let dropped = agent.xdp_packets("drop_denied");
    assert_eq!(
        curl(CLIENT_V4[1], "/shop/items", &[]),
        0,
        "dropped in the kernel: no answer at all"
    );
    assert!(
        agent.xdp_packets("drop_denied") > dropped,
        "XDP counted the drops"
    );
    assert_eq!(curl(CLIENT_V4[0], "/shop/items", &[]), 200);
    drop(agent);
}
