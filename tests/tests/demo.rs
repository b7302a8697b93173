//! The main job, as README's first command runs it: the demo must end with every step having
//! done what it printed (it exits non-zero otherwise).

use portcullis_tests::privileged;

#[test]
fn demo_passes_every_step() {
    privileged!();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_demo"))
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("demo passed"), "{stdout}");
    assert!(!stdout.contains("UNEXPECTED"), "{stdout}");
}
