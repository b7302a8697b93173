//! `allow|deny import` lines (text or NDJSON): each parsed or refused with a reason, never a
//! panic; a batch keeps every line it does not skip as blank or a comment.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::control::proto::ImportDefaults;
use portcullis::model::List;
use portcullis::service::{PreparedImport, parse_import_line};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines: Vec<(u64, String)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i as u64 + 1, l.to_owned()))
        .collect();
    let kept = lines
        .iter()
        .filter(|(_, l)| !matches!(parse_import_line(l), Ok(None)))
        .count();
    let batch = PreparedImport::new(List::Deny, lines, ImportDefaults::default())
        .expect("a small batch with plain defaults is taken");
    assert_eq!(batch.len(), kept);
});
