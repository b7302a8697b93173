//! Helpers for Portcullis's privileged tests, demo and benchmarks: privilege checks, crafted
//! frames, throwaway network namespaces with veth pairs, running agents, TLS and ABS fixtures.
//! The brute-force reference model lives in `portcullis::kernel::reference`.

pub mod agent;
pub mod backend;
pub mod checker_setup;
pub mod fake_abs;
pub mod frames;
pub mod http;
pub mod kernel_check;
pub mod load;
pub mod netns;
pub mod readme;
pub mod redis;
pub mod report;
pub mod tls;
pub mod wire;

/// Environment variable that turns a skipped privileged test into a failure (set by CI): any
/// value but empty or `0` counts.
pub const REQUIRE_PRIVILEGED: &str = "PORTCULLIS_REQUIRE_PRIVILEGED";

/// Environment variable naming a file to which each skipped test appends its name, so that
/// `cargo xtask test` can list the skips in its summary (libtest prints "ok" for them).
pub const SKIP_LOG: &str = "PORTCULLIS_SKIP_LOG";

/// Whether skipping a privileged test is forbidden in this run.
pub fn skips_forbidden() -> bool {
    std::env::var(REQUIRE_PRIVILEGED).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Records that `test` did not run, and why: on stderr, in the [`SKIP_LOG`] file, and as a
/// failure when [`REQUIRE_PRIVILEGED`] forbids skips.
pub fn skip(test: &str, why: &str) {
    assert!(
        !skips_forbidden(),
        "{test}: {why}, and {REQUIRE_PRIVILEGED} forbids skipping it"
    );
    eprintln!("SKIPPED {test}: {why} (set {REQUIRE_PRIVILEGED}=1 to make this a failure)");
    if let Some(path) = std::env::var_os(SKIP_LOG) {
        use std::io::Write as _;
        let line = format!("{test}: {why}\n");
        let logged = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        // A skip that cannot be recorded would vanish from the summary: fail instead.
        if let Err(e) = logged {
            panic!(
                "{test}: skipped, and the skip could not be recorded in {}: {e}",
                path.to_string_lossy()
            );
        }
    }
}

/// Whether this process may load BPF programs and create namespaces. When it may not, the
/// test is recorded as skipped (see [`skip`]) and the caller returns early.
#[must_use]
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        skip(test, "needs root");
    }
    root
}

/// The name of the function it is used in (the test's name, for [`privileged`]). Use it
/// directly in the test's body: inside a closure or an async block it names that instead.
#[macro_export]
macro_rules! test_name {
    () => {{
        fn f() {}
        let path = std::any::type_name_of_val(&f);
        let path = path.strip_suffix("::f").unwrap_or(path);
        path.rsplit("::").next().unwrap_or(path)
    }};
}

/// Starts a privileged test: returns from it, recorded as skipped, when this process may not
/// run it ([`privileged`]). With an expression (`privileged!(NetnsPair::new()…)`), checks
/// first and then evaluates it: what needs the privilege comes after the check.
#[macro_export]
macro_rules! privileged {
    () => {
        if !$crate::privileged($crate::test_name!()) {
            return;
        }
    };
    ($setup:expr) => {{
        $crate::privileged!();
        $setup
    }};
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
