//! Tests of API-file loading, checking and routing.

use super::*;

fn api(name: &str, json: &str) -> Result<Api, ApiError> {
    parse(name, Path::new(name), json)
}

#[test]
fn loads_ase_definitions_and_reports_unknown_fields() {
    let a = api("shop", r#"{"api_metadata":{"protocol":"https","url":"/shop","hostname":"*","cookie":"JSESSIONID",
        "oauth2_access_token":true,"apikey_header":"X-API-Key","enable_blocking":true,"cookie_idle_timeout":"200m",
        "api_pattern_enforcement":{"methods_allowed":["GET","POST"],"error_code":401,"error_message_body":"nope"},
        "flow_control":{"client_spike_threshold":"10/second"},
        "servers":[{"host":"127.0.0.1","port":8080}]}}"#).expect("valid");
    assert_eq!(a.ignored_fields, vec!["cookie_idle_timeout".to_string()]);
    assert_eq!(a.spike, Some((10, 1)));
    let e = api(
        "bad",
        r#"{"api_metadata":{"url":"shop","servers":[{"host":"h","port":1}]}}"#,
    )
    .expect_err("bad url");
    assert!(e.message.contains("`url`"), "{e}");
    let e = api(
        "bad",
        r#"{"api_metadata":{"url":"/x","servers":[{"host":"h","port":"eighty"}]}}"#,
    )
    .expect_err("bad port");
    assert!(e.message.contains("api_metadata"), "{e}");
    assert!(
        api("bad", "{not json")
            .expect_err("json")
            .message
            .contains("invalid JSON")
    );
    // No servers: an API the gateways ask about (sideband), as in ASE's sideband mode.
    let sideband = api("sideband", r#"{"api_metadata":{"url":"/x","servers":[]}}"#)
        .expect("an API without servers loads");
    assert!(sideband.meta.servers.is_empty());
}

#[test]
fn longest_prefix_on_segment_boundaries() {
    let mut apis = BTreeMap::new();
    for (n, url, host) in [
        ("root", "/", "*"),
        ("shop", "/shop", "*"),
        ("cart", "/shop/cart", "*"),
        ("other", "/shop", "api.example"),
    ] {
        let json = format!(
            r#"{{"api_metadata":{{"url":"{url}","hostname":"{host}","servers":[{{"host":"h","port":1}}]}}}}"#
        );
        apis.insert(n.to_string(), api(n, &json).expect("valid"));
    }
    let r = |h: &str, p: &str| route(&apis, h, p).map(|a| a.name.clone());
    assert_eq!(r("x", "/shop/cart/1"), Some("cart".into()));
    assert_eq!(r("x", "/shopping"), Some("root".into()));
    // Hosts arrive normalised (target::normalize_host): no port.
    assert_eq!(r("x", "/shop"), Some("shop".into()));
    assert_eq!(r("api.example", "/shop/x"), Some("other".into()));
    assert_eq!(r("2001:db8::1", "/shop/x"), Some("shop".into()));
    assert_eq!(r("x", "/elsewhere"), Some("root".into()));
    apis.remove("root");
    assert!(route(&apis, "x", "/elsewhere").is_none());
}

/// A definition as Ping's examples and tools write it: numbers as strings, `""` for
/// unset, durations with ASE's units, full-path decoys, fields Portcullis does not use
/// at several depths.
const PING_STYLE: &str = r#"{"api_metadata": {
    "protocol": "https", "url": "/shop", "hostname": "*", "cookie": "JSESSIONID",
    "cookie_idle_timeout": "20m", "logout_api_enabled": false, "cookie_persistence_enabled": false,
    "oauth2_access_token": true, "is_token_mandatory": "true", "apikey_qs": "", "apikey_header": "",
    "enable_blocking": true,
    "api_mapping": {"internal_url": ""},
    "api_pattern_enforcement": {"protocol_allowed": "", "http_redirect": {"response_code": "", "response_def": "", "https_url": ""},
        "methods_allowed": [], "content_type_allowed": "", "error_code": "401", "error_def": "Unauthorized", "error_message_body": ""},
    "flow_control": {"client_spike_threshold": "0/second", "server_connection_queueing": false},
    "api_memory_size": "128mb",
    "health_check": true, "health_check_interval": "8", "health_retry_count": "2", "health_url": "/health",
    "server_ssl": false,
    "servers": [{"host": "127.0.0.1", "port": "8080", "server_spike_threshold": "0/second", "server_connection_quota": 0}],
    "decoy_config": {"decoy_enabled": true, "response_code": "", "response_def": "", "response_message": "",
        "decoy_subpaths": ["/shop/admin", "/shop/root/", "debug"]}
}}"#;

#[test]
fn a_ping_style_file_loads_with_its_values() {
    let a = api("shop", PING_STYLE).expect("a Ping-style file loads");
    let p = a.meta.api_pattern_enforcement.as_ref().expect("pattern");
    assert_eq!(p.error_code, Some(401));
    let d = a.meta.decoy_config.as_ref().expect("decoy");
    assert_eq!(d.response_code, None);
    assert!(a.meta.is_token_mandatory);
    assert_eq!(a.meta.servers[0].port, 8080);
    assert_eq!(a.meta.health_check_interval, Some(8));
    assert_eq!(a.meta.health_retry_count, Some(2));
    assert_eq!(a.decoy_paths, ["/shop/admin", "/shop/root/", "/shop/debug"]);
    assert!(decoy_hit(&a, "/shop/admin").is_some());
    assert!(decoy_hit(&a, "/shop/admin/x").is_some());
    assert!(decoy_hit(&a, "/shop/root").is_some());
    assert!(decoy_hit(&a, "/shop/debug").is_some());
    assert!(decoy_hit(&a, "/shop/shop/admin").is_none());
    assert!(decoy_hit(&a, "/shop/items").is_none());
    assert_eq!(
        a.ignored_fields,
        [
            "api_memory_size",
            "cookie_idle_timeout",
            "logout_api_enabled"
        ]
    );
    assert_eq!(a.balance.servers[0].quota, 0);
    assert_eq!(a.balance.servers[0].spike, None);
}

#[test]
fn mapped_apis_forward_under_the_internal_path() {
    let mapped = |url: &str, internal: &str| {
        api(
            "m",
            &format!(
                r#"{{"api_metadata":{{"url":"{url}","api_mapping":{{"internal_url":"{internal}"}},"servers":[{{"host":"a","port":1,"server_spike_threshold":"5/minute","server_connection_quota":"2"}}]}}}}"#
            ),
        )
        .expect("api")
    };
    let a = mapped("/shop", "/v1/store");
    let p = |a: &Api, forward: &str, matched: &str| internal_path(a, forward, matched);
    assert_eq!(p(&a, "/shop", "/shop"), "/v1/store");
    assert_eq!(p(&a, "/shop/items/", "/shop/items/"), "/v1/store/items/");
    assert_eq!(
        p(&a, "/shop/a;jsessionid=1", "/shop/a"),
        "/v1/store/a;jsessionid=1"
    );
    // The prefix hidden behind a parameter: the tail as routing judged it.
    assert_eq!(p(&a, "/shop;x/admin", "/shop/admin"), "/v1/store/admin");
    assert_eq!(
        p(&mapped("/shop", "/"), "/shop/items", "/shop/items"),
        "/items"
    );
    assert_eq!(p(&mapped("/shop", "/"), "/shop", "/shop"), "/");
    assert_eq!(p(&mapped("/", "/v1/"), "/items", "/items"), "/v1/items");
    assert_eq!(p(&mapped("/shop", ""), "/shop/x", "/shop/x"), "/shop/x");
    assert_eq!(a.balance.servers[0].quota, 2);
    assert_eq!(a.balance.servers[0].spike, Some((5, 60)));
}

#[test]
fn unclear_definitions_are_refused_naming_the_field() {
    let with = |field: &str, value: &str| {
        let mut v: serde_json::Value = serde_json::from_str(PING_STYLE).expect("json");
        let mut at = &mut v["api_metadata"];
        let path: Vec<&str> = field.split('.').collect();
        for k in &path[..path.len() - 1] {
            at = &mut at[*k];
        }
        at[path[path.len() - 1]] = serde_json::from_str(value).expect("value");
        api("shop", &v.to_string())
    };
    for (field, value, says) in [
        (
            "api_pattern_enforcement.error_code",
            r#""40l""#,
            "not a whole number",
        ),
        (
            "api_pattern_enforcement.error_code",
            "700",
            "not an HTTP status",
        ),
        (
            "decoy_config.response_code",
            r#""abc""#,
            "not a whole number",
        ),
        ("health_check_interval", r#""5x""#, "unknown unit"),
        ("enable_blocking", r#""maybe""#, "not true or false"),
        // A full path outside the API: ASE's reading never fires, the old one guessed.
        (
            "decoy_config.decoy_subpaths",
            r#"["/admin"]"#,
            "write \"/shop/admin\", or \"admin\"",
        ),
        (
            "decoy_config.decoy_subpaths",
            r#"["/shopping"]"#,
            "not under the API's url",
        ),
        ("decoy_config.decoy_subpaths", r#"[""]"#, "an empty path"),
        (
            "decoy_config.decoy_subpaths",
            r#"["a%2fb"]"#,
            "decoy_subpaths",
        ),
        (
            "oauth2_access_token",
            "false",
            "needs `oauth2_access_token: true`",
        ),
        (
            "api_mapping.internal_url",
            r#""v2""#,
            "must be a plain path",
        ),
        (
            "api_mapping.internal_url",
            r#""/v2/../admin""#,
            "must be a plain path",
        ),
        (
            "api_mapping.internal_url",
            r#""/v2?x=1""#,
            "must be a plain path",
        ),
        (
            "flow_control.bytes_in_threshold",
            r#""10/fortnight""#,
            "bytes_in_threshold \"10/fortnight\": unknown unit",
        ),
        // Definitions that would make every path of the API a decoy, or hide what they say.
        (
            "decoy_config.decoy_subpaths",
            r#"[".."]"#,
            "write the path plainly",
        ),
        (
            "decoy_config.decoy_subpaths",
            r#"["./"]"#,
            "write the path plainly",
        ),
        (
            "decoy_config.decoy_subpaths",
            r#"["/shop/x/.."]"#,
            "write the path plainly",
        ),
        (
            "decoy_config.decoy_subpaths",
            r#"["/shop"]"#,
            "is the whole API",
        ),
        (
            "decoy_config.decoy_subpaths",
            r#"["/shop/"]"#,
            "is the whole API",
        ),
        ("decoy_config.decoy_subpaths", "[]", "yet it has servers"),
        (
            "api_pattern_enforcement.http_redirect.https_url",
            r#""http://x""#,
            "not an https:// URL",
        ),
        (
            "api_pattern_enforcement.http_redirect.response_code",
            r#""200""#,
            "300 to 399",
        ),
    ] {
        let e = with(field, value).expect_err(field);
        assert!(e.message.contains(says), "{field} = {value}: {e}");
    }
    let mut v: serde_json::Value = serde_json::from_str(PING_STYLE).expect("json");
    v["api_metadata"]["servers"][0]["port"] = serde_json::json!("0");
    let e = api("shop", &v.to_string()).expect_err("port 0");
    assert!(e.message.contains("not a port"), "{e}");
    v["api_metadata"]["servers"][0]["port"] = serde_json::json!(1);
    v["api_metadata"]["servers"][0]["server_spike_threshold"] = serde_json::json!("5/fortnight");
    let e = api("shop", &v.to_string()).expect_err("unit");
    assert!(
        e.message
            .contains("field `servers[0].server_spike_threshold \"5/fortnight\": unknown unit"),
        "{e}"
    );
}
