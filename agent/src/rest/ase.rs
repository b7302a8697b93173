//! ASE's REST paths and bodies, read into control requests and answered in ASE's shapes.
//!
//! List bodies name identifiers by kind: `ips`, `cookies` (`[{"name", "value"}]`, or
//! `{"NAME": ["value", …]}` as ABS writes them), `oauth_tokens`, `api_keys`
//! (`[{"name", "value"}]`, or plain values for any name) and `usernames` (plain values or
//! `{"value"}`), with Portcullis's optional `ttl` (seconds), `reason`, `api` and `force`.
//! Every identifier is checked before anything is written; then they are applied in order,
//! and a refusal (anti-lockout, for one) stops there and says how many went before it.

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Answer, Rest, failure, is};
use crate::control::proto::{AddRequest, CredentialAction, Request};
use crate::model::{Identifier, Kind, List};

/// Where a request goes.
pub(super) async fn route(
    rest: &Rest,
    method: &Method,
    path: &str,
    query: &str,
    body: &[u8],
) -> Answer {
    let path = path.trim_end_matches('/');
    let list = match path {
        "/v4/ase/blacklist" => Some(List::Deny),
        "/v4/ase/whitelist" => Some(List::Allow),
        _ => None,
    };
    let r = match (path, list) {
        (_, Some(list)) => match *method {
            Method::POST => add(rest, list, body).await,
            Method::DELETE if body.iter().all(u8::is_ascii_whitespace) => {
                clear(rest, list, param(query, "tag")).await
            }
            Method::DELETE => delete(rest, list, body).await,
            Method::GET => view(rest, list, param(query, "tag")).await,
            _ => Err(not_allowed("GET, POST, DELETE")),
        },
        ("/v4/ase/api", None) if is(method, &[Method::GET]) => {
            api(rest, param(query, "api_id")).await
        }
        ("/v4/ase/firewall", None) if is(method, &[Method::GET]) => firewall(rest).await,
        ("/v4/ase/status", None) if is(method, &[Method::GET]) => {
            rest.control(Request::Status).await.map(|s| {
                (
                    StatusCode::OK,
                    json!({"status_code": "SUCCESS", "status": s}),
                )
            })
        }
        ("/v5/ase/sideband/token", None) => token(rest, method, body).await,
        ("/v5/ase/sideband/authentication", None) => {
            authentication(rest, method, param(query, "status")).await
        }
        ("/v4/ase/api" | "/v4/ase/firewall" | "/v4/ase/status", None) => Err(not_allowed("GET")),
        _ => Err(failure(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no such resource: {path}"),
        )),
    };
    r.unwrap_or_else(|a| a)
}

fn not_allowed(allowed: &str) -> Answer {
    failure(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        format!("allowed: {allowed}"),
    )
}

fn bad_json(e: impl std::fmt::Display) -> Answer {
    failure(StatusCode::BAD_REQUEST, "INVALID_JSON", e)
}

/// The value of query parameter `name` (ASE's are plain words: no decoding needed).
fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// One identifier of a list body: kind, name (cookies, API keys), value.
type Item = (Kind, Option<String>, String);

/// A list body.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Identities {
    #[serde(default)]
    ips: Vec<Plain>,
    #[serde(default)]
    cookies: Named,
    #[serde(default)]
    oauth_tokens: Vec<Plain>,
    #[serde(default)]
    api_keys: Vec<Keyed>,
    #[serde(default)]
    usernames: Vec<Plain>,
    /// Seconds until the entries expire.
    #[serde(default)]
    ttl: Option<u64>,
    #[serde(default)]
    reason: Option<String>,
    /// Scope the entries to one API.
    #[serde(default)]
    api: Option<String>,
    /// Allow a deny that would cut off everyone or this host.
    #[serde(default)]
    force: bool,
}

/// A value, plain or as `{"value": …}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Plain {
    Text(String),
    Object { value: String },
}

impl Plain {
    fn value(&self) -> &str {
        match self {
            Self::Text(v) | Self::Object { value: v } => v,
        }
    }
}

/// An API key: with its name, or a plain value for any name.
#[derive(Deserialize)]
#[serde(untagged)]
enum Keyed {
    Named { name: String, value: String },
    Any(Plain),
}

/// Cookies: `[{"name", "value"}]`, or `{"NAME": ["value", …]}`.
#[derive(Default, Deserialize)]
#[serde(untagged)]
enum Named {
    #[default]
    None,
    List(Vec<NameValue>),
    Map(std::collections::BTreeMap<String, Vec<String>>),
}

#[derive(Deserialize)]
struct NameValue {
    name: String,
    value: String,
}

impl Identities {
    /// Every identifier as (kind, name, value), in body order.
    fn items(&self) -> Vec<Item> {
        let mut out = Vec::new();
        out.extend(
            self.ips
                .iter()
                .map(|v| (Kind::Ip, None, v.value().to_owned())),
        );
        match &self.cookies {
            Named::None => {}
            Named::List(l) => out.extend(
                l.iter()
                    .map(|c| (Kind::Cookie, Some(c.name.clone()), c.value.clone())),
            ),
            Named::Map(m) => out.extend(m.iter().flat_map(|(name, values)| {
                values
                    .iter()
                    .map(|v| (Kind::Cookie, Some(name.clone()), v.clone()))
            })),
        }
        out.extend(
            self.oauth_tokens
                .iter()
                .map(|v| (Kind::Token, None, v.value().to_owned())),
        );
        out.extend(self.api_keys.iter().map(|k| match k {
            Keyed::Named { name, value } => (Kind::ApiKey, Some(name.clone()), value.clone()),
            Keyed::Any(v) => (Kind::ApiKey, None, v.value().to_owned()),
        }));
        out.extend(
            self.usernames
                .iter()
                .map(|v| (Kind::Username, None, v.value().to_owned())),
        );
        out
    }
}

/// Reads a list body and checks every identifier in it; nothing is written yet.
fn identities(body: &[u8]) -> Result<(Identities, Vec<Item>), Answer> {
    let ids: Identities = serde_json::from_slice(body).map_err(bad_json)?;
    let items = ids.items();
    if items.is_empty() {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            "INVALID_JSON",
            "no identifiers: give ips, cookies, oauth_tokens, api_keys or usernames",
        ));
    }
    for (n, (kind, name, value)) in items.iter().enumerate() {
        if let Err(e) = Identifier::parse(*kind, name.as_deref(), value) {
            return Err(failure(
                StatusCode::BAD_REQUEST,
                "INVALID_IDENTIFIER",
                format!("identifier {} ({kind:?}): {e}; nothing was changed", n + 1),
            ));
        }
    }
    Ok((ids, items))
}

async fn add(rest: &Rest, list: List, body: &[u8]) -> Result<Answer, Answer> {
    let (ids, items) = identities(body)?;
    if ids.force && !rest.cfg.allow_force {
        return Err(failure(
            StatusCode::FORBIDDEN,
            "FORCE_REFUSED",
            "\"force\" over REST needs rest.allow_force = true; nothing was changed",
        ));
    }
    let mut added = Vec::new();
    for (kind, name, value) in items {
        let req = Request::Add(AddRequest {
            list: Some(list),
            kind: Some(kind),
            name,
            value,
            ttl_secs: ids.ttl,
            reason: Some(ids.reason.clone().unwrap_or_else(|| "REST API".into())),
            api: ids.api.clone(),
            source: Some("rest".into()),
            force: ids.force,
        });
        match rest.control(req).await {
            Ok(v) => added.push(v.get("entry").cloned().unwrap_or(Value::Null)),
            Err((status, mut v)) => {
                v["applied"] = json!(added.len());
                return Err((status, v));
            }
        }
    }
    Ok((
        StatusCode::OK,
        json!({"status_code": "SUCCESS", "message": format!("{} added to the {list} list", added.len()), "entries": added}),
    ))
}

async fn delete(rest: &Rest, list: List, body: &[u8]) -> Result<Answer, Answer> {
    let (_, items) = identities(body)?;
    let mut removed = 0usize;
    for (kind, name, value) in items {
        let req = Request::Remove {
            list,
            kind,
            name,
            value,
            source: None,
        };
        match rest.control(req).await {
            Ok(_) => removed += 1,
            Err((status, mut v)) => {
                v["applied"] = json!(removed);
                return Err((status, v));
            }
        }
    }
    Ok((
        StatusCode::OK,
        json!({"status_code": "SUCCESS", "message": format!("{removed} deleted from the {list} list")}),
    ))
}

/// The sources ASE's tags name: `manual` (the CLI's and this API's), `abs`, `realtime`
/// (the checker's detections); `all` or none: every source.
fn sources(tag: Option<&str>) -> Result<Vec<Option<String>>, Answer> {
    Ok(match tag.unwrap_or("all") {
        "all" => vec![None],
        "manual" => vec![Some("manual".into()), Some("rest".into())],
        "abs" => vec![Some("abs".into())],
        "realtime" => vec![Some("checker".into())],
        other => {
            return Err(failure(
                StatusCode::BAD_REQUEST,
                "INVALID_TAG",
                format!("tag {other:?}: expected all, manual, abs or realtime"),
            ));
        }
    })
}

async fn clear(rest: &Rest, list: List, tag: Option<&str>) -> Result<Answer, Answer> {
    // A bare DELETE is a script's mistake more often than a wish to empty the list.
    let Some(tag) = tag else {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "a DELETE without identifiers clears: say which with ?tag=all, manual, abs or realtime",
        ));
    };
    let mut removed = 0u64;
    for source in sources(Some(tag))? {
        let all = source.is_none();
        let v = rest
            .control(Request::Clear {
                list,
                kind: None,
                source,
                all,
            })
            .await?;
        removed += v.as_u64().unwrap_or(0);
    }
    Ok((
        StatusCode::OK,
        json!({"status_code": "SUCCESS", "message": format!("{removed} cleared from the {list} list"), "removed": removed}),
    ))
}

async fn view(rest: &Rest, list: List, tag: Option<&str>) -> Result<Answer, Answer> {
    let mut entries = Vec::new();
    for source in sources(tag)? {
        let v = rest
            .control(Request::List {
                list: Some(list),
                kind: None,
                source,
            })
            .await?;
        if let Value::Array(a) = v {
            entries.extend(a);
        }
    }
    let mut out = json!({"status_code": "SUCCESS", "ips": [], "cookies": [], "oauth_tokens": [], "api_keys": [], "usernames": []});
    for e in &entries {
        let value = e.get("value").cloned().unwrap_or(Value::Null);
        let name = e.get("name").cloned().unwrap_or(Value::Null);
        let (field, item) = match e.get("kind").and_then(Value::as_str) {
            Some("ip") => ("ips", value),
            Some("cookie") => ("cookies", json!({"name": name, "value": value})),
            Some("token") => ("oauth_tokens", value),
            Some("api-key") => ("api_keys", json!({"name": name, "value": value})),
            Some("username") => ("usernames", value),
            _ => continue,
        };
        if let Some(Value::Array(a)) = out.get_mut(field) {
            a.push(item);
        }
    }
    out["entries"] = Value::Array(entries);
    Ok((StatusCode::OK, out))
}

async fn api(rest: &Rest, name: Option<&str>) -> Result<Answer, Answer> {
    match name {
        Some(name) => {
            let v = rest
                .control(Request::ApiShow {
                    name: name.to_owned(),
                })
                .await
                .map_err(|(_, v)| (StatusCode::NOT_FOUND, v))?;
            Ok((StatusCode::OK, v))
        }
        None => {
            let v = rest.control(Request::ApiList).await?;
            Ok((
                StatusCode::OK,
                json!({"status_code": "SUCCESS", "apis": v.get("apis"), "errors": v.get("errors")}),
            ))
        }
    }
}

async fn firewall(rest: &Rest) -> Result<Answer, Answer> {
    let s = rest.control(Request::Status).await?;
    let enforcing = s.get("mode").and_then(Value::as_str) == Some("enforce");
    Ok((
        StatusCode::OK,
        json!({"status_code": "SUCCESS", "firewall": if enforcing { "enabled" } else { "disabled" }, "mode": s.get("mode")}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    token: String,
}

async fn credentials(rest: &Rest, action: CredentialAction) -> Result<Value, Answer> {
    rest.control(Request::Credentials { action }).await
}

async fn token(rest: &Rest, method: &Method, body: &[u8]) -> Result<Answer, Answer> {
    let token = || -> Result<String, Answer> {
        serde_json::from_slice::<TokenBody>(body)
            .map(|b| b.token)
            .map_err(bad_json)
    };
    match *method {
        Method::POST => {
            let v = credentials(rest, CredentialAction::CreateToken).await?;
            Ok((
                StatusCode::OK,
                json!({"status": "token_created", "token": v.get("created")}),
            ))
        }
        Method::PUT => {
            credentials(rest, CredentialAction::ImportToken { token: token()? }).await?;
            Ok((
                StatusCode::OK,
                json!({"status": "success", "status_message": "Sideband token imported."}),
            ))
        }
        Method::DELETE => {
            let v = credentials(rest, CredentialAction::DeleteToken { token: token()? }).await?;
            if v.get("deleted").and_then(Value::as_bool) != Some(true) {
                return Err(failure(
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    "no such sideband token",
                ));
            }
            Ok((
                StatusCode::OK,
                json!({"status": "success", "status_message": "Sideband token deleted."}),
            ))
        }
        Method::GET => {
            let v = credentials(rest, CredentialAction::Show).await?;
            Ok((
                StatusCode::OK,
                json!({"status": "success", "tokens": v.get("tokens")}),
            ))
        }
        _ => Err(not_allowed("GET, POST, PUT, DELETE")),
    }
}

async fn authentication(
    rest: &Rest,
    method: &Method,
    status: Option<&str>,
) -> Result<Answer, Answer> {
    let v = match (method, status) {
        // Ping's own example asks for the status with a POST and no `status`.
        (&Method::GET, _) | (&Method::POST, None) => {
            credentials(rest, CredentialAction::Show).await?
        }
        (&Method::POST, Some(s @ ("enable" | "disable"))) => {
            let on = s == "enable";
            credentials(rest, CredentialAction::Authentication { on }).await?
        }
        (&Method::POST, Some(_)) => {
            return Err(failure(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                "?status=enable or ?status=disable",
            ));
        }
        _ => return Err(not_allowed("GET, POST")),
    };
    let on = v.get("authentication").and_then(Value::as_bool) == Some(true);
    let word = if on { "enabled" } else { "disabled" };
    Ok((
        StatusCode::OK,
        json!({"status": word, "status_message": format!("Sideband authentication is {word}")}),
    ))
}
