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
    for kind in [
        Kind::Ip,
        Kind::Token,
        Kind::ApiKey,
        Kind::Cookie,
        Kind::Username,
    ] {
        if let Ok(ident) = Identifier::parse(kind, Some("fuzz"), text)
            && kind == Kind::Ip
        {
            assert!(ident.cidr().is_some(), "{text:?}");
        }
    }
});
