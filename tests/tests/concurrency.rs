//! Every writer at once: CLI changes, checker detections and ABS syncs race for the lists;
//! afterwards the store and the kernel maps must agree exactly, and nothing any writer was
//! told had landed may be missing.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use portcullis_tests::agent::{Agent, AgentDirs, ok};
use portcullis_tests::checker_setup::shop_backend;
use portcullis_tests::fake_abs::{Answer, FakeAbs};
use portcullis_tests::kernel_check::assert_kernel_matches_lists;
use portcullis_tests::{http, privileged};

fn abs_list(from: u32, n: u32) -> String {
    let ips: Vec<String> = (from..from + n)
        .map(|i| format!("\"198.18.{}.{}\"", 100 + i / 256, i % 256))
        .collect();
    format!(r#"{{"attacklist":{{"ips":[{}]}}}}"#, ips.join(","))
}

fn rows(agent: &Agent, list: &str, source: &str) -> Vec<String> {
    let mut r: Vec<String> = agent
        .entries_from(list, source)
        .into_iter()
        .map(|e| e.value)
        .collect();
    r.sort();
    r
}

#[test]
fn cli_detections_and_abs_at_once_leave_store_and_kernel_equal() {
    privileged!();
    let abs = FakeAbs::start(TcpListener::bind("127.0.0.1:0").expect("bind"));
    abs.set(Answer::Json(abs_list(0, 300)));
    let dirs = AgentDirs::new();
    let (_backend, apis) = shop_backend(
        &dirs,
        r#""decoy_config":{"decoy_enabled":true,"decoy_subpaths":["admin"]}"#,
    );
    let http_addr: SocketAddr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let config = format!(
        "{}[checker]\nhttp = \"{http_addr}\"\napi_dir = \"{}\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        portcullis_tests::fake_abs::agent_config(&dirs, &abs.url(), ""),
        apis.display()
    );
    let agent = Agent::with_config(&dirs, config).expect("agent");

    let stop_at = Instant::now() + Duration::from_secs(6);
    std::thread::scope(|scope| {
        // ABS: the list shifts under the agent's feet every 400 ms.
        scope.spawn(|| {
            let mut shift = 0;
            while Instant::now() < stop_at {
                shift = (shift + 37) % 200;
                abs.set(Answer::Json(abs_list(shift, 300)));
                std::thread::sleep(Duration::from_millis(400));
            }
        });
        // Detections: decoy visits from 120 distinct clients.
        scope.spawn(|| {
            for i in 0..120u32 {
                let client = format!("198.18.110.{i}");
                let (code, _) =
                    http::get(http_addr, "/shop/admin", &[("X-Forwarded-For", &client)])
                        .expect("decoy request");
                assert_eq!(code, 200, "decoy answer for {client}");
            }
        });
        // The operator: adds, removes and allow entries, each answered before the next.
        scope.spawn(|| {
            for i in 0..80u32 {
                ok(&agent.cli(&["deny", "add", "ip", &format!("198.18.120.{i}")]));
                if i % 3 == 0 {
                    ok(&agent.cli(&["deny", "remove", "ip", &format!("198.18.120.{}", i / 2)]));
                }
                if i % 10 == 0 {
                    // Allow inside ranges ABS lists, and one /24 over them.
                    ok(&agent.cli(&["allow", "add", "ip", &format!("198.18.100.{i}")]));
                }
            }
            ok(&agent.cli(&["deny", "add", "ip", "198.18.121.0/24"]));
        });
    });
    // Let ABS settle on one list and the agent take it.
    let last = abs_list(50, 300);
    abs.set(Answer::Json(last.clone()));
    let deadline = Instant::now() + Duration::from_secs(15);
    let want_abs: Vec<String> = {
        let mut v: Vec<String> = (50..350u32)
            .map(|i| format!("198.18.{}.{}/32", 100 + i / 256, i % 256))
            .collect();
        v.sort();
        v
    };
    while rows(&agent, "deny", "abs") != want_abs {
        assert!(Instant::now() < deadline, "ABS list never settled");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Nothing any writer was told had landed is missing.
    let checker = rows(&agent, "deny", "checker");
    assert_eq!(
        checker.len(),
        120,
        "every decoy visitor deny-listed: {checker:?}"
    );
    let manual = rows(&agent, "deny", "manual");
    let mut want_manual: Vec<String> = (0..80u32)
        .filter(|i| !(0..80u32).any(|j| j % 3 == 0 && j / 2 == *i && j >= *i))
        .map(|i| format!("198.18.120.{i}/32"))
        .chain(std::iter::once("198.18.121.0/24".to_owned()))
        .collect();
    want_manual.sort();
    assert_eq!(manual, want_manual, "the operator's changes, in order");
    assert_eq!(rows(&agent, "allow", "manual").len(), 8);
    // And the kernel holds exactly what the store says.
    assert_kernel_matches_lists(&agent, &dirs);
}
