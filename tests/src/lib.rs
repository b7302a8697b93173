//! Helpers for Portcullis's privileged tests, demo and benchmarks: privilege checks, crafted
//! frames, throwaway network namespaces with veth pairs, and a brute-force reference model.

pub mod agent;
pub mod backend;
pub mod fake_abs;
pub mod frames;
pub mod netns;
pub mod reference;
pub mod tls;

/// Environment variable that turns a skipped privileged test into a failure (set by CI).
pub const REQUIRE_PRIVILEGED: &str = "PORTCULLIS_REQUIRE_PRIVILEGED";

/// Whether this process may load BPF programs and create namespaces. When it may not, a test
/// calling this returns early — unless [`REQUIRE_PRIVILEGED`] is set, in which case the skip
/// is a failure.
#[must_use]
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    let required = std::env::var(REQUIRE_PRIVILEGED).is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{test}: needs root, and {REQUIRE_PRIVILEGED}=1 forbids skipping it"
    );
    eprintln!("SKIPPED {test}: needs root (set {REQUIRE_PRIVILEGED}=1 to make this a failure)");
    false
}

/// A per-process unique name with `prefix`, short enough for interface names (15 bytes).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}{n}", std::process::id() % 10_000)
}

/// A pin directory under bpffs that is removed (with everything pinned in it) on drop.
pub struct PinDir(pub std::path::PathBuf);

impl PinDir {
    /// A fresh, unique directory path under `/sys/fs/bpf` (not yet created).
    pub fn new() -> Self {
        Self(std::path::PathBuf::from(format!(
            "/sys/fs/bpf/{}",
            unique("pctest")
        )))
    }
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        // bpffs supports unlink and rmdir, not recursive removal in one call.
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}
