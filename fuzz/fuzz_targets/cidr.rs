//! IP and CIDR text: parsed or refused, never a panic; what parses prints back to itself,
//! holds its own network address, and means the same as the `ip` identifier of that text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::model::{Cidr, Identifier, Kind};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = text.parse::<Cidr>() {
        let printed = c.to_string();
        assert_eq!(
            printed.parse::<Cidr>().ok(),
            Some(c),
            "{text:?} -> {printed}"
        );
        assert!(c.contains(c.network()), "{text:?}");
        assert!(c.covers(&c), "{text:?}");
    }
    let ip = Identifier::parse(Kind::Ip, None, text).ok();
    assert_eq!(
        ip.and_then(|i| i.cidr()),
        text.parse::<Cidr>().ok(),
        "{text:?}: the ip identifier and the CIDR disagree"
    );
    for kind in [Kind::Token, Kind::ApiKey, Kind::Cookie, Kind::Username] {
        let _ = Identifier::parse(kind, Some("fuzz"), text);
    }
});
