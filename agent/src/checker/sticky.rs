//! ASE's `cookie_persistence_enabled`: a client's later requests go to the server that
//! answered its first. The checker remembers the server in a cookie of its own,
//! `portcullis_server=<api tag>.<server index>`, scoped to the API's `url`: no state per
//! client, and the choice survives a restart. The tag (from the API's name) keeps the
//! cookies of two APIs on one host apart. A client can only name one of the API's own
//! servers, and only a healthy one under its limits is used, so choosing its server gives
//! it nothing it could not get from round robin.

use http::{HeaderMap, HeaderValue, header};
use sha2::{Digest as _, Sha256};

use super::api::Api;
use super::extract;

/// The cookie's name.
const COOKIE: &str = "portcullis_server";

/// Eight hex digits naming `api` in the cookie.
fn tag(api: &Api) -> String {
    let d = Sha256::digest(api.name.as_bytes());
    d[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The server the request's cookie names for `api`, if any.
pub fn chosen(api: &Api, headers: &HeaderMap) -> Option<usize> {
    let tag = tag(api);
    extract::cookies(headers, COOKIE).iter().find_map(|v| {
        let (t, i) = v.split_once('.')?;
        (t == tag).then(|| i.parse().ok())?
    })
}

/// Adds the `Set-Cookie` that sends the client's next requests to server `index`.
pub fn remember(api: &Api, index: usize, tls: bool, headers: &mut HeaderMap) {
    let secure = if tls { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={}.{index}; Path={}; HttpOnly; SameSite=Lax{secure}",
        tag(api),
        api.meta.url
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        headers.append(header::SET_COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_names_a_server_of_its_own_api_only() {
        let load = |name: &str| {
            crate::checker::api::parse(
                name,
                std::path::Path::new("x.json"),
                r#"{"api_metadata":{"url":"/shop","cookie_persistence_enabled":"true","servers":[{"host":"a","port":1},{"host":"b","port":2}]}}"#,
            )
            .expect("api")
        };
        let (shop, other) = (load("shop"), load("other"));
        let mut h = HeaderMap::new();
        remember(&shop, 1, true, &mut h);
        let set = h[header::SET_COOKIE].to_str().expect("ascii").to_owned();
        assert!(
            set.ends_with("; Path=/shop; HttpOnly; SameSite=Lax; Secure"),
            "{set}"
        );
        let sent = set.split(';').next().expect("pair").to_owned();
        let mut req = HeaderMap::new();
        req.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {sent}")).expect("header"),
        );
        assert_eq!(chosen(&shop, &req), Some(1));
        assert_eq!(chosen(&other, &req), None, "another API's cookie");
        req.insert(
            header::COOKIE,
            HeaderValue::from_static("portcullis_server=zz"),
        );
        assert_eq!(chosen(&shop, &req), None);
    }
}
