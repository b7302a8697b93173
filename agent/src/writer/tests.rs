//! The writer's own tests: it survives a command that panics and answers a large import whole.

use super::*;
use crate::control::proto::AddRequest;
use crate::model::Kind;
use crate::model::List;

/// A state directory removed when the test ends.
struct Dir(std::path::PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn writer(name: &str) -> (Writer, std::thread::JoinHandle<()>, Dir) {
    let dir = Dir(std::env::temp_dir().join(format!("pc-writer-{name}-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("state dir");
    let store = crate::store::Store::open(&dir.0.join("lists.db")).expect("store");
    let config = crate::config::Config::default();
    let service = Service::new(config, store, None).expect("service");
    let (w, t) = Writer::spawn(service).expect("spawn");
    (w, t, dir)
}

fn add(value: &str) -> Request {
    Request::Add(AddRequest {
        list: Some(List::Deny),
        kind: Some(Kind::Token),
        value: value.into(),
        ..AddRequest::default()
    })
}

#[tokio::test]
async fn survives_a_command_that_panics() {
    let (w, thread, _dir) = writer("panic");
    let mut changes = w.subscribe();
    assert!(w.control(add("before")).await.ok);
    let err = w
        .panic()
        .await
        .expect_err("the panic is answered as an error");
    assert!(err.to_string().contains("inside the agent"), "{err}");
    // The writer goes on: writes and reads still work, and what was there is still there.
    assert!(w.control(add("after")).await.ok);
    let listed = w
        .control(Request::List {
            list: Some(List::Deny),
            kind: None,
            source: None,
        })
        .await;
    assert_eq!(
        listed.result.as_array().map(Vec::len),
        Some(2),
        "{listed:?}"
    );
    // Both adds were published.
    for _ in 0..2 {
        assert!(matches!(changes.recv().await, Ok(Change::Added(_))));
    }
    drop(w);
    thread
        .join()
        .expect("the writer thread ends when every handle is gone");
}

#[tokio::test]
async fn a_large_import_is_answered_whole() {
    let (w, _thread, _dir) = writer("import");
    let lines: Vec<(u64, String)> = (0..25_000u64)
        .map(|i| (i + 1, format!("token t{i}")))
        .chain([(25_001, "bogus line".into())])
        .collect();
    let r = w
        .control(Request::Import {
            list: List::Deny,
            lines,
            defaults: Default::default(),
            continues: false,
        })
        .await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.result["accepted"], 25_000);
    assert_eq!(r.result["new"], 25_000);
    assert_eq!(r.result["rejected"][0][0], 25_001);
}
