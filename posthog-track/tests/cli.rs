//! The `posthog-track` command as an operator meets it. (Being an integration test of this
//! package also makes `cargo test --workspace` build the binary, which the fault matrix in
//! `tests/faults.rs` runs as separate relay processes.)

use std::process::Command;

fn command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_posthog-track"));
    command
        .env_remove("POSTHOG_API_KEY")
        .env_remove("POSTHOG_DISABLED")
        .env("RUST_LOG", "off");
    command
}

fn scratch_database(name: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("posthog-track-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite:{}?mode=rwc", dir.join("app.db").display());
    (dir, url)
}

#[test]
fn a_relay_without_a_key_refuses_and_exits_non_zero() {
    let (dir, url) = scratch_database("keyless");
    let output = command()
        .args(["relay", "--database-url", &url])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("no POSTHOG_API_KEY"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_missing_outbox_says_how_to_create_it() {
    let (dir, url) = scratch_database("missing");
    let output = command()
        .args(["outbox", "status", "--database-url", &url])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("tracker.migrate(&pool)"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}
