//! A control-socket request line: parsed or refused, never a panic; what parses survives a
//! round trip through its own encoding (the CLI and the agent read the same bytes alike).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::control::proto::Request;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<Request>(data) {
        let again = serde_json::to_vec(&req).expect("a parsed request encodes");
        let back: Request = serde_json::from_slice(&again).expect("and parses again");
        assert_eq!(
            serde_json::to_vec(&back).expect("encodes"),
            again,
            "round trip changed the request"
        );
    }
});
