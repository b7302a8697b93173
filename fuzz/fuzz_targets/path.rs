//! Request-target normalisation: never a panic; what it accepts is a fixed point (the
//! checker and a backend that normalises or decodes once more judge the same resource)
//! with no empty, `.` or `..` segment left; hosts come out lower case without a trailing dot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::checker::target::{normalize_host, normalize_path};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = normalize_path(raw) {
        for path in [&p.forward, &p.matched] {
            assert!(path.starts_with('/'), "{raw:?} -> {path:?}");
            let body = path.trim_start_matches('/').trim_end_matches('/');
            assert!(
                body.is_empty() || body.split('/').all(|s| !matches!(s, "" | "." | "..")),
                "{raw:?} -> {path:?}"
            );
        }
        let again = normalize_path(&p.forward)
            .unwrap_or_else(|e| panic!("{raw:?} -> {:?} is refused again: {e}", p.forward));
        assert_eq!(again.forward, p.forward, "{raw:?}");
        assert_eq!(again.matched, p.matched, "{raw:?}");
    }
    // Hosts are normalised once, on the request (API files name hosts in that form): lower
    // case, no trailing dot.
    let host = normalize_host(raw);
    assert!(!host.ends_with('.'), "{raw:?} -> {host:?}");
    assert_eq!(host.to_ascii_lowercase(), host, "{raw:?}");
});
