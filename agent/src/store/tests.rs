//! Tests of the store: rows written and read back, keys, restore and migration edges.

use super::*;

fn entry(
    list: List,
    kind: Kind,
    name: Option<&str>,
    value: &str,
    source: &str,
    expires: Option<i64>,
) -> Entry {
    Entry {
        source: Source::parse(source),
        created: 1,
        expires,
        ..Entry::sample(list, kind, name, value)
    }
}

#[test]
fn every_column_is_stored_as_given_when_rows_share_some() {
    let dir = std::env::temp_dir().join(format!("pc-store-cols-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let path = dir.join("state.db");
    let _ = std::fs::remove_file(&path);
    let mut s = Store::open(&path).expect("open");
    // Neighbours in key order share some columns and differ in others, so a column
    // left bound from the row before would show.
    let mut rows = Vec::new();
    for i in 0..64 {
        let (list, kind, name) = match i % 4 {
            0 => (List::Deny, Kind::Ip, None),
            1 => (List::Deny, Kind::Cookie, Some("sid")),
            2 => (List::Allow, Kind::ApiKey, Some("x-key")),
            _ => (List::Deny, Kind::Username, None),
        };
        let value = match kind {
            Kind::Ip => format!("198.18.0.{i}"),
            _ => format!("value-{i}"),
        };
        let mut e = entry(
            list,
            kind,
            name,
            &value,
            ["manual", "abs", "checker"][i % 3],
            (i % 5 == 0).then_some(1000 + i as i64),
        );
        e.reason = ["", "why", "because"][i % 3 / 2 + i % 2].to_owned();
        e.api = if i % 7 == 0 {
            "shop".into()
        } else {
            String::new()
        };
        e.created = (i / 2) as i64;
        rows.push(e);
    }
    assert_eq!(s.upsert(&rows).expect("upsert"), rows.len());
    let shown = |v: &[Entry]| {
        let mut v: Vec<String> = v.iter().map(|e| format!("{e:?}")).collect();
        v.sort();
        v
    };
    let stored = s.list(&Filter::default()).expect("list");
    assert_eq!(shown(&stored), shown(&rows));
    // A restore writes rows one by one through the same binding.
    let copy = s.backup_into(&dir, "copy").expect("backup");
    let other_path = dir.join("other.db");
    let _ = std::fs::remove_file(&other_path);
    let mut other = Store::open(&other_path).expect("open other");
    other
        .restore_from(&Copy::open(&copy).expect("copy"))
        .expect("restore");
    let restored = other.list(&Filter::default()).expect("list");
    assert_eq!(shown(&restored), shown(&rows));
}

#[test]
fn survives_reopen_and_keeps_sources_apart() {
    let dir = std::env::temp_dir().join(format!("pc-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let path = dir.join("state.db");
    let _ = std::fs::remove_file(&path);
    {
        let mut s = Store::open(&path).expect("open");
        let added = s
            .upsert(&[
                entry(List::Deny, Kind::Ip, None, "203.0.113.7", "manual", None),
                entry(List::Deny, Kind::Ip, None, "203.0.113.7", "abs", None),
                entry(
                    List::Deny,
                    Kind::Token,
                    None,
                    "s3cr3t-T0ken",
                    "manual",
                    Some(10),
                ),
                entry(
                    List::Allow,
                    Kind::Username,
                    None,
                    "your name",
                    "manual",
                    None,
                ),
            ])
            .expect("upsert");
        assert_eq!(added, 4);
        assert_eq!(
            s.upsert(&[entry(
                List::Deny,
                Kind::Ip,
                None,
                "203.0.113.7",
                "abs",
                None
            )])
            .expect("again"),
            0
        );
    }
    // Nothing in the file is a clear-text secret.
    let bytes = std::fs::read(&path).expect("read");
    assert!(!bytes.windows(12).any(|w| w == b"s3cr3t-T0ken"));
    let mut s = Store::open(&path).expect("reopen");
    assert_eq!(s.list(&Filter::default()).expect("list").len(), 4);
    let ip = Identifier::parse(Kind::Ip, None, "203.0.113.7").expect("ip");
    let gone = s.remove(List::Deny, &ip, Some("abs")).expect("remove");
    assert_eq!(gone.len(), 1);
    assert_eq!(
        s.rows_of(List::Deny, &ip).expect("rows").len(),
        1,
        "manual row stays"
    );
    let pruned = s.prune_expired(10).expect("prune");
    assert_eq!(pruned.len(), 1);
    assert_eq!(pruned[0].ident.kind, Kind::Token);
    let cleared = s
        .clear(&Filter {
            list: Some(List::Allow),
            ..Filter::default()
        })
        .expect("clear");
    assert_eq!(cleared.len(), 1);
    assert_eq!(
        s.counts().expect("counts"),
        vec![(List::Deny, Kind::Ip, "manual".to_string(), 1)]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
