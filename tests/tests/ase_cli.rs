//! An ASE operator's script, unchanged: `cli.sh -u admin -p admin VERB ...` lines run as
//! `portcullis -u admin -p admin VERB ...`, every output line compared with the text ASE's
//! documentation shows for it (`../shared/design/ASE.md`, "The CLI"). Views show secrets as
//! digest fingerprints (`sha256:…`), the one documented difference.

use portcullis_tests::agent::{Agent, AgentDirs};
use portcullis_tests::privileged;

#[test]
fn an_ase_script_reads_what_ase_prints() {
    privileged!();
    let dirs = AgentDirs::new();
    let agent = Agent::with_config(&dirs, String::new()).expect("agent");
    // (the script's line, what ASE prints; a line ending in "sha256:" is a fingerprint's start)
    let script: &[(&str, &[&str])] = &[
        (
            "status",
            &[
                "API Security Enforcer",
                "status                  : started",
                "mode                    : inline",
                "firewall                : enabled",
                "abs                     : disabled",
                "abs attack              : enabled",
                "ase detected attack     : enabled",
            ],
        ),
        (
            "add_blacklist ip 203.0.113.1",
            &["ip 203.0.113.1 added to blacklist"],
        ),
        (
            "add_blacklist cookie JSESSIONID ad233edqsd1d",
            &["cookie JSESSIONID ad233edqsd1d added to blacklist"],
        ),
        (
            "add_blacklist token ad233edqsd1d23redwefew",
            &["token ad233edqsd1d23redwefew added to blacklist"],
        ),
        (
            "add_blacklist api_key AccessKey b31dfa46",
            &["api_key AccessKey b31dfa46 added to blacklist"],
        ),
        (
            "add_blacklist username user1",
            &["username user1 added to blacklist"],
        ),
        (
            "add_blacklist ip 203.0.113.0/24",
            &["ip 203.0.113.0/24 added to blacklist"],
        ),
        (
            "add_whitelist ip 198.51.100.2",
            &["ip 198.51.100.2 added to whitelist"],
        ),
        (
            "view_blacklist",
            &[
                "Manual Blacklist",
                "1) type : api_key, name : accesskey, value : sha256:",
                "2) type : cookie, name : JSESSIONID, value : sha256:",
                "3) type : ip, value : 203.0.113.0/24",
                "4) type : ip, value : 203.0.113.1",
                "5) type : token, value : sha256:",
                "6) type : username, value : user1",
            ],
        ),
        (
            "view_blacklist ip",
            &[
                "Manual Blacklist",
                "1) type : ip, value : 203.0.113.0/24",
                "2) type : ip, value : 203.0.113.1",
            ],
        ),
        ("view_blacklist decoy", &[]),
        (
            "delete_blacklist ip 203.0.113.1",
            &["ip 203.0.113.1 deleted from blacklist"],
        ),
        (
            "delete_blacklist username user1",
            &["username user1 deleted from blacklist"],
        ),
        (
            "delete_blacklist token ad233edqsd1d23redwefew",
            &["token ad233edqsd1d23redwefew deleted from blacklist"],
        ),
        (
            "view_whitelist",
            &["Manual Whitelist", "1) type : ip, value : 198.51.100.2"],
        ),
        ("clear_blacklist", &["blacklist cleared"]),
        ("clear_whitelist", &["whitelist cleared"]),
        ("view_blacklist all", &[]),
    ];
    for (line, want) in script {
        let mut args = vec!["-u", "admin", "-p", "admin"];
        args.extend(line.split(' '));
        let out = agent.cli(&args);
        let got = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<&str> = got.lines().collect();
        assert_eq!(got.len(), want.len(), "{line}: printed {got:#?}");
        for (g, w) in got.iter().zip(want.iter()) {
            let matches = match w.strip_suffix("sha256:") {
                Some(start) => g.starts_with(w) && g.len() > start.len() + 8,
                None => g == w,
            };
            assert!(matches, "{line}: printed {g:?}, ASE prints {w:?}");
        }
    }
    let unknown = agent.cli(&["-u", "admin", "-p", "admin", "view_blacklist", "bogus"]);
    assert!(
        !unknown.status.success(),
        "an unknown view word is an error"
    );
}
